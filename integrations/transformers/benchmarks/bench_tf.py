"""Benchmark: what pruning saves on a real transformers engine, measured side by side in one run.

Setting (the issue's): N = 32 traces, 256 new tokens each (EOS ignored, so no trace stops early), a
32-token prefix (``TokensPrefix(k=32)``), a judge that puts every trace in one cluster (probability
1.0 for every pair) and K2 = 8 finalists, so 24 traces stop at their prefix. Compared with the same
32 traces run to the end without pruning (``SelfConsistency``, same backend, same sampling), it
reports decoded tokens, wall time, and how many tokens a trace decoded after its abort call: as the
driver saw them (``tokens_after_abort``, delivered after the call) and as the engine computed them
(``computed_after_abort``: a forward pass that was already running when the call came).

Run from the repository root:

    .venv/bin/python integrations/transformers/benchmarks/bench_tf.py            # tiny + SmolLM2
    .venv/bin/python integrations/transformers/benchmarks/bench_tf.py --models tiny --repeats 3

``--output FILE`` writes the markdown table (its section of docs/benchmarks.md was produced that way).
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from deepprune_transformers import TransformersBackend, smollm2_gguf
from deepprune_transformers.testing import build_tiny_qwen2

from deepprune_lc import (
    DeepPrune,
    DeepPruneResult,
    PruningConfig,
    SamplingConfig,
    SelfConsistency,
    TokensPrefix,
)
from deepprune_lc.judges import ConstantJudge

N_TRACES = 32
MAX_TOKENS = 256
PREFIX_TOKENS = 32
FINALISTS = 8
PROMPT = [
    {
        "role": "user",
        "content": "A baker sells 12 muffins an hour for 7 hours, then 5 more. How many muffins "
        "did she sell? Think step by step.",
    }
]


@dataclass
class Measured:
    model: str
    decoded_full: int
    decoded_pruned: int
    wall_full: float
    wall_pruned: float
    stopped: int
    stopped_tokens: float
    abort_calls: int
    after_abort_driver: float
    after_abort_engine: float
    steps_full: int
    steps_pruned: int
    answer_matches: bool


async def _one_pair(backend: TransformersBackend, sampling: SamplingConfig, seed: int) -> Measured:
    baseline = SelfConsistency(backend, N_TRACES, sampling=sampling, seed=seed)
    config = PruningConfig(
        n_traces=N_TRACES,
        prefix=TokensPrefix(k=PREFIX_TOKENS),
        finalists=FINALISTS,
        seed=seed,
    )
    one_cluster = ConstantJudge(1.0)  # every trace joins cluster 0
    deepprune = DeepPrune(backend, one_cluster, config, sampling=sampling)

    backend.reset_stats()
    t0 = time.perf_counter()
    full = await baseline.run(PROMPT)
    wall_full = time.perf_counter() - t0
    steps_full = backend.stats.decode_steps
    await backend.wait_idle()

    backend.reset_stats()
    t0 = time.perf_counter()
    pruned = await deepprune.run(PROMPT)
    wall_pruned = time.perf_counter() - t0
    await backend.wait_idle()
    assert not backend.live_requests(), backend.live_requests()
    return _measure(backend, full, pruned, wall_full, wall_pruned, steps_full)


def _measure(
    backend: TransformersBackend,
    full: DeepPruneResult,
    pruned: DeepPruneResult,
    wall_full: float,
    wall_pruned: float,
    steps_full: int,
) -> Measured:
    stopped = [t for t in pruned.traces if t.status in ("pruned", "aborted")]
    # Every stopped trace had one abort call, and so did every finalist resumed from a park.
    abort_calls = len(stopped) + sum(1 for t in pruned.traces if t.resumed)
    return Measured(
        model=backend.model_name,
        decoded_full=full.totals.decoded_tokens,
        decoded_pruned=pruned.totals.decoded_tokens,
        wall_full=wall_full,
        wall_pruned=wall_pruned,
        stopped=len(stopped),
        stopped_tokens=statistics.fmean(t.tokens_decoded for t in stopped) if stopped else 0.0,
        abort_calls=abort_calls,
        after_abort_driver=(
            statistics.fmean(t.tokens_after_abort for t in stopped) if stopped else 0.0
        ),
        after_abort_engine=backend.computed_after_abort / abort_calls if abort_calls else 0.0,
        steps_full=steps_full,
        steps_pruned=backend.stats.decode_steps,
        answer_matches=full.answer == pruned.answer,
    )


async def bench_model(
    backend: TransformersBackend, repeats: int, temperature: float
) -> list[Measured]:
    sampling = SamplingConfig(temperature=temperature, top_p=1.0, max_tokens=MAX_TOKENS)
    # Warm-up: load the model and touch every code path once, outside the measurement.
    await SelfConsistency(backend, 2, sampling=sampling.model_copy(update={"max_tokens": 8})).run(
        PROMPT
    )
    return [await _one_pair(backend, sampling, seed) for seed in range(repeats)]


def _table(rows: list[Measured]) -> str:
    head = (
        "| model | seed | decoded tokens: no pruning / DeepPrune (ratio) "
        "| wall time: no pruning / DeepPrune (ratio) | traces stopped (mean tokens each) "
        "| tokens after abort: delivered per stopped trace / computed per abort call "
        "| decode steps: no pruning / DeepPrune |\n"
        "|---|---:|---|---|---|---|---|"
    )
    lines = [head]
    for i, m in enumerate(rows):
        lines.append(
            f"| {m.model} | {i} "
            f"| {m.decoded_full} / {m.decoded_pruned} (**{m.decoded_pruned / m.decoded_full:.3f}**) "
            f"| {m.wall_full:.2f} s / {m.wall_pruned:.2f} s (**{m.wall_pruned / m.wall_full:.3f}**) "
            f"| {m.stopped} ({m.stopped_tokens:.1f}) "
            f"| {m.after_abort_driver:.2f} / {m.after_abort_engine:.2f} ({m.abort_calls} calls) "
            f"| {m.steps_full} / {m.steps_pruned} |"
        )
    return "\n".join(lines)


async def main(models: list[str], repeats: int, temperature: float) -> str:
    tables: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in models:
            if name == "tiny":
                backend = TransformersBackend(
                    build_tiny_qwen2(Path(tmp) / "tiny"), ignore_eos=True, model_name="tiny-qwen2"
                )
            elif name == "smollm2":
                backend = TransformersBackend(
                    smollm2_gguf(), ignore_eos=True, model_name="SmolLM2-135M-Instruct"
                )
            else:
                backend = TransformersBackend(name, ignore_eos=True)
            rows = await bench_model(backend, repeats, temperature)
            tables.append(_table(rows))
            print(tables[-1], flush=True)
            backend.close()
    return "\n\n".join(tables)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["tiny", "smollm2"])
    parser.add_argument("--repeats", type=int, default=1, help="runs (seeds) per model")
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    started = time.perf_counter()
    table = asyncio.run(main(args.models, args.repeats, args.temperature))
    took = time.perf_counter() - started
    print(f"total {took:.0f} s on {platform.processor() or platform.machine()}")
    if args.output is not None:
        args.output.write_text(table + "\n")
