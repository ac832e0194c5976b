"""Benchmarks behind ``deepprune bench``: every ratio is measured side by side in one process.

``deepprune bench replay`` (the side-by-side bootstrap) lives in ``bench_methods`` (the methods),
``bench_bootstrap`` (the resamples), ``bench_report`` (table and JSON) and ``bench_plot``.

``replay_sweep`` (``deepprune bench sweep``): accuracy and decoded tokens of DeepPrune (a small sweep of tau, K2 and the prefix
policy), self-consistency and ESC on a recorded trace pool, replayed in lockstep (every trace yields
to the event loop after each token, as a batching engine decodes one token per trace per step).

``driver_overhead``: how fast the driver processes deltas, against a loop that merely drains the same
replay streams with no DeepPrune at all.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass

from deepprune_lc.backends.pool import TracePool
from deepprune_lc.backends.replay import ReplayBackend
from deepprune_lc.cli.bench_methods import AnswerLookupJudge
from deepprune_lc.core.answers import math_equivalent
from deepprune_lc.core.config import (
    EarlyStoppingConfig,
    PruningConfig,
    ReasoningWordsPrefix,
    SamplingConfig,
    TokensPrefix,
    VoteSettling,
)
from deepprune_lc.core.ports import Judge, TraceRequest
from deepprune_lc.judges.fixed import ConstantJudge, RandomJudge
from deepprune_lc.judges.lexical import LexicalJudge
from deepprune_lc.runtime.runner import DeepPrune, EarlyStoppingSelfConsistency, SelfConsistency

# --------------------------------------------------------------------------------------------------
# Accuracy / tokens sweep on a replayed pool


__all__ = [
    "AnswerLookupJudge",
    "SweepRow",
    "driver_overhead",
    "replay_sweep",
]


@dataclass
class SweepRow:
    method: str
    settings: str
    correct: int
    problems: int
    decoded_tokens: int
    judge_pairs: int = 0
    fallbacks: int = 0

    @property
    def accuracy(self) -> float:
        return self.correct / self.problems


async def _evaluate(
    runner: DeepPrune | SelfConsistency, pool: TracePool
) -> tuple[int, int, int, int]:
    correct = tokens = pairs = fallbacks = 0
    for problem in pool.problems:
        result = await runner.run(problem.problem)
        tokens += result.totals.decoded_tokens
        pairs += result.totals.judge_pairs
        fallbacks += result.fallback is not None
        if result.answer is not None and problem.answer is not None:
            correct += math_equivalent(problem.answer, result.answer)
    return correct, tokens, pairs, fallbacks


async def replay_sweep(
    pool: TracePool,
    *,
    thresholds: Sequence[float] = (0.25, 0.5, 0.75),
    finalists: Sequence[int] = (2, 4, 8),
) -> str:
    """Run every method over ``pool`` and return a markdown table."""
    n = min(len(p.traces) for p in pool.problems)
    backend = ReplayBackend(pool, yield_every=1, reuse="error")
    sampling = SamplingConfig(max_tokens=1_000_000)
    judge = LexicalJudge()
    rows: list[SweepRow] = []

    async def add(method: str, settings: str, runner: DeepPrune | SelfConsistency) -> None:
        correct, tokens, pairs, fallbacks = await _evaluate(runner, pool)
        rows.append(SweepRow(method, settings, correct, len(pool), tokens, pairs, fallbacks))

    await add(f"self-consistency (cons@{n})", "", SelfConsistency(backend, n, sampling=sampling))
    for window in (2, 4):
        await add(
            "ESC",
            f"window {window}",
            EarlyStoppingSelfConsistency(
                backend, EarlyStoppingConfig(n_traces=n, window=window), sampling=sampling
            ),
        )
    prefixes = {
        "25 reasoning words": ReasoningWordsPrefix(),
        "10 reasoning words": ReasoningWordsPrefix(k=10),
        "64 tokens": TokensPrefix(k=64),
    }
    for prefix_name, prefix in prefixes.items():
        for tau in thresholds:
            for k2 in finalists:
                config = PruningConfig(
                    n_traces=n, prefix=prefix, threshold=tau, finalists=k2, finalisation="paper"
                )
                await add(
                    "DeepPrune",
                    f"{prefix_name}, tau {tau}, K2 {k2}",
                    DeepPrune(backend, judge, config, sampling=sampling),
                )
    # Ours, side by side with the rows above: the settled-vote stop on plain self-consistency, and
    # robust finalisation with the lexical judge and with judges that know nothing (random) or
    # everything (an oracle reading the recorded final answers) or always say the opposite.
    settle = VoteSettling()
    await add(
        f"self-consistency (cons@{n}) + settled stop",
        f"min margin {settle.min_margin}",
        SelfConsistency(backend, n, sampling=sampling, settle=settle),
    )
    judges: dict[str, Judge] = {
        "lexical": judge,
        "random judge": RandomJudge(seed=0),
        "oracle judge": AnswerLookupJudge(pool),
        "always-wrong judge": AnswerLookupJudge(pool, invert=True),
    }
    for judge_name, some_judge in judges.items():
        for prefix_name, prefix in prefixes.items():
            if judge_name != "lexical" and prefix_name != "64 tokens":
                continue
            for k2 in (2, 4):
                for finalisation in ("paper", "robust"):
                    if judge_name == "lexical" and finalisation == "paper":
                        continue  # in the grid above
                    config = PruningConfig(
                        n_traces=n,
                        prefix=prefix,
                        threshold=0.5,
                        finalists=k2,
                        finalisation=finalisation,
                    )
                    await add(
                        f"DeepPrune, {finalisation} finalisation",
                        f"{judge_name}, {prefix_name}, tau 0.5, K2 {k2}",
                        DeepPrune(backend, some_judge, config, sampling=sampling),
                    )
    baseline = rows[0].decoded_tokens
    lines = [
        f"Pool: {pool.source} ({len(pool)} problems, N = {n}); tokens counted with "
        f"{backend.tokenizer.name}; judge: LexicalJudge (defaults).",
        "",
        "| method | settings | accuracy | decoded tokens | reduction vs cons@N | judge pairs | fallbacks |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        reduction = 1 - row.decoded_tokens / baseline
        lines.append(
            f"| {row.method} | {row.settings} | {row.accuracy:.1%} ({row.correct}/{row.problems}) "
            f"| {row.decoded_tokens:,} | {reduction:.1%} | {row.judge_pairs:,} | {row.fallbacks} |"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# Driver overhead


async def _drain(backend: ReplayBackend, n_traces: int, prompt: str) -> int:
    """The floor: consume every stream concurrently, doing nothing with the deltas."""
    sampling = SamplingConfig(max_tokens=1_000_000)

    async def one(i: int) -> int:
        count = 0
        request = TraceRequest(f"drain-{i}", i, prompt, sampling, seed=i)
        async for delta in backend.stream(request):
            count += len(delta.token_ids)
        return count

    return sum(await asyncio.gather(*(one(i) for i in range(n_traces))))


async def driver_overhead(n_traces: int = 512, tokens: int = 2000, repeats: int = 3) -> str:
    """Median wall time and deltas/s of each mode over ``repeats`` interleaved rounds."""
    prompt = "synthetic"
    backend = ReplayBackend.synthetic(n_traces, tokens, prompt=prompt, yield_every=16)
    sampling = SamplingConfig(max_tokens=1_000_000)
    # Answers at once and merges nothing: the judge costs nothing, so the driver's own cost shows.
    never_similar = ConstantJudge(0.0)
    modes = {
        "drain (no DeepPrune)": None,
        "self-consistency through the driver": SelfConsistency(
            backend, n_traces, sampling=sampling
        ),
        "DeepPrune, no pruning (K = N, judge says 'different')": DeepPrune(
            backend,
            never_similar,
            PruningConfig(n_traces=n_traces, max_clusters=n_traces, policy="diverse"),
            sampling=sampling,
        ),
        "DeepPrune, defaults (K = 32), judge says 'different'": DeepPrune(
            backend, never_similar, PruningConfig(n_traces=n_traces), sampling=sampling
        ),
    }
    times: dict[str, list[float]] = {name: [] for name in modes}
    deltas: dict[str, int] = {}
    for _ in range(repeats):
        for name, runner in modes.items():
            started = time.perf_counter()
            if runner is None:
                deltas[name] = await _drain(backend, n_traces, prompt)
            else:
                result = await runner.run(prompt)
                deltas[name] = result.totals.decoded_tokens
            times[name].append(time.perf_counter() - started)
    floor = statistics.median(times["drain (no DeepPrune)"])
    lines = [
        f"N = {n_traces} traces x ~{tokens} tokens, replay at full speed (yield every 16 tokens), "
        f"median of {repeats} interleaved rounds.",
        "",
        "| mode | deltas processed | wall time (s) | deltas/s | wall time vs drain |",
        "|---|---|---|---|---|",
    ]
    for name in modes:
        wall = statistics.median(times[name])
        lines.append(
            f"| {name} | {deltas[name]:,} | {wall:.2f} | {deltas[name] / wall:,.0f} | {wall / floor:.2f} |"
        )
    return "\n".join(lines)
