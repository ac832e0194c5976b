"""DeepPrune on a text-free probe pool (recorded answer probes) against cons@N, on replay.

Usage::

    python benchmarks/probe_pool.py ../shared/data/probes/qwen3_8b_aime24_probe128.jsonl \\
        --n 64 --config cons --config probe --config random

Each configuration runs every problem of the pool once on ``ReplayBackend`` (trace i of a run
replays recorded trace i) and prints accuracy, total decoded tokens and latency (decode steps to
the answer, ``RunTotals.latency_tokens``), each also as a ratio to cons@N. Configurations:
``cons`` (self-consistency), ``probe`` (the probe judge, default settings), ``probe:<spec options>``
(e.g. ``probe:at_tokens=2000``; PruningConfig fields too), ``random[:<PruningConfig fields>]``
(``RandomJudge`` on a 500-token prefix), ``sc-settle``
(self-consistency with the settled-vote stop), ``esc[:window=<w>]`` (ESC).

``--thin K`` keeps every K-th recorded probe (and multiplies ``probe_every_tokens`` by K): the
same traces as a coarser recording would have them, to see what the probe grid does.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from dataclasses import dataclass

from deepprune_lc.backends.pool import TracePool, load_trace_pool
from deepprune_lc.backends.replay import ReplayBackend
from deepprune_lc.core.answers import AnswerRules
from deepprune_lc.core.config import (
    EarlyStoppingConfig,
    ProbeClustering,
    PruningConfig,
    TokensPrefix,
    VoteSettling,
)
from deepprune_lc.core.result import DeepPruneResult
from deepprune_lc.judges import ProbeJudge, RandomJudge
from deepprune_lc.runtime.runner import DeepPrune, EarlyStoppingSelfConsistency, SelfConsistency

__all__ = ["Row", "main", "run_config", "thin_probes"]


@dataclass
class Row:
    config: str
    correct: int
    problems: int
    tokens: int
    latency: int
    seconds: float


def _runner(config: str, backend: ReplayBackend, n: int, seed: int) -> DeepPrune | SelfConsistency:
    if config == "cons":
        return SelfConsistency(backend, n, seed=seed)
    if config == "sc-settle":
        return SelfConsistency(backend, n, seed=seed, settle=VoteSettling())
    if config.startswith("esc"):
        # esc[:window=<w>]: early-stopping self-consistency, windows of w traces (default 4)
        _, _, options = config.partition(":")
        esc: dict[str, object] = {"n_traces": n, "seed": seed}
        for item in filter(None, options.split("&")):
            key, _, value = item.partition("=")
            esc[key] = value
        return EarlyStoppingSelfConsistency(backend, EarlyStoppingConfig.model_validate(esc))
    if config.startswith("random"):
        # random[:<PruningConfig fields>], e.g. random:split_resume=doubling
        _, _, options = config.partition(":")
        fields: dict[str, object] = {"n_traces": n, "seed": seed, "prefix": TokensPrefix(k=500)}
        for item in filter(None, options.split("&")):
            key, _, value = item.partition("=")
            fields[key] = value
        return DeepPrune(backend, RandomJudge(seed), PruningConfig.model_validate(fields))
    if config.startswith("probe"):
        # probe:<ProbeClustering or PruningConfig fields>, e.g. probe:at_tokens=1000&finalists=10
        _, _, options = config.partition(":")
        fields = {}
        pruning_fields: dict[str, object] = {"n_traces": n, "seed": seed}
        for item in filter(None, options.split("&")):
            key, _, value = item.partition("=")
            target = fields if key in ProbeClustering.model_fields else pruning_fields
            target[key] = None if value == "none" else value
        settings = ProbeClustering.model_validate(fields)
        pruning = PruningConfig.model_validate(pruning_fields)
        return DeepPrune(backend, ProbeJudge(settings), pruning)
    raise SystemExit(f"unknown config {config!r}")


def thin_probes(pool: TracePool, every: int) -> TracePool:
    """``pool`` with every ``every``-th recorded probe kept: probed each ``every`` x
    ``probe_every_tokens`` tokens (problems without probes are kept as they are)."""
    if every < 1:
        raise SystemExit(f"--thin must be at least 1, got {every}")
    problems = []
    for problem in pool.problems:
        if problem.probe_every_tokens is None:
            problems.append(problem)
            continue
        traces = [
            t.model_copy(update={"probes": t.probes[every - 1 :: every]})
            if t.probes is not None
            else t
            for t in problem.traces
        ]
        problems.append(
            problem.model_copy(
                update={"traces": traces, "probe_every_tokens": problem.probe_every_tokens * every}
            )
        )
    return TracePool(problems=problems, source=pool.source)


async def run_config(pool: TracePool, config: str, n: int, seed: int = 0) -> Row:
    """One pass of ``config`` over every problem of ``pool``."""
    backend = ReplayBackend(pool, reuse="error")
    rules = AnswerRules.math()
    runner = _runner(config, backend, n, seed)
    correct = tokens = latency = 0
    started = time.perf_counter()
    for problem in pool.problems:
        result: DeepPruneResult = await runner.run(problem.problem)
        truth = problem.answer
        if (
            truth is not None
            and result.answer is not None
            and rules.equivalent(result.answer, truth)
        ):
            correct += 1
        tokens += result.totals.decoded_tokens
        latency += result.totals.latency_tokens or 0
    return Row(config, correct, len(pool), tokens, latency, time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pool")
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--config", action="append", default=[])
    parser.add_argument("--thin", type=int, default=1, help="keep every K-th recorded probe")
    args = parser.parse_args()
    pool = load_trace_pool(args.pool)
    if args.thin != 1:
        pool = thin_probes(pool, args.thin)
    configs = args.config or ["cons", "probe", "random"]
    if "cons" not in configs:
        configs = ["cons", *configs]
    base: Row | None = None
    print(
        f"{'config':42} {'acc':>6} {'tokens':>11} {'x cons':>7} {'latency':>9} {'x cons':>7} {'s':>6}"
    )
    for config in configs:
        row = asyncio.run(run_config(pool, config, args.n, args.seed))
        base = base or row
        print(
            f"{config:42} {row.correct / row.problems:6.1%} {row.tokens:11d} "
            f"{row.tokens / base.tokens:7.3f} {row.latency / row.problems:9.0f} "
            f"{row.latency / base.latency:7.3f} {row.seconds:6.1f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
