"""Load and memory: many questions at once each get their own answer; memory stays flat over runs.

The figures (MB per 100 runs) are in docs/reliability.md and docs/benchmarks.md; rerun with
``pytest -q tests/reliability/test_load_memory.py -s`` to print them.
"""

from __future__ import annotations

import asyncio
import gc
import os
from typing import Any

from reliability_faults import QUESTION, leftover_tasks, synthetic_backend

from deepprune_lc import (
    DeepPrune,
    LexicalJudge,
    PruningConfig,
    ReplayBackend,
    SelfConsistency,
    TokensPrefix,
    TracePool,
)
from deepprune_lc.backends.pool import PoolProblem, PoolTrace
from deepprune_lc.runtime import driver

CONFIG = PruningConfig(n_traces=8, prefix=TokensPrefix(k=16), finalists=2)
OPENINGS = (
    "First, we write down what we know. So the total is the sum. Then we check it. ",
    "Let me think about this step by step. Wait, we need the count first. Therefore ",
)


def _pool(n_questions: int) -> TracePool:
    """Question i's eight traces answer i (six of them) or i + 1000 (two)."""
    problems = []
    for i in range(n_questions):
        traces = []
        for t in range(8):
            answer = i + 1000 if t in (3, 6) else i
            text = OPENINGS[t % 2] * 3 + f"So the final answer is \\boxed{{{answer}}}."
            traces.append(PoolTrace(text=text, reference_answer=str(answer)))
        problem = f"Load question number {i}: what is the value of item {i}?"
        problems.append(PoolProblem(id=f"q{i}", problem=problem, answer=str(i), traces=traces))
    return TracePool(problems=problems, source="<load>")


async def test_fifty_concurrent_questions_each_get_their_own_answer() -> None:
    pool = _pool(50)
    backend = ReplayBackend(pool, yield_every=1)
    deepprune = DeepPrune(backend, LexicalJudge(), CONFIG, answers="exact")
    cons = SelfConsistency(backend, 8, answers="exact")
    questions = [p.problem for p in pool]
    results = await asyncio.wait_for(
        asyncio.gather(*(deepprune.run(q) for q in questions), *(cons.run(q) for q in questions)),
        timeout=300,
    )
    answers = [r.answer for r in results]
    assert answers == [p.answer for p in pool] * 2
    for result in results:
        assert result.error is None and result.fallback is None
        assert len(result.traces) == 8
    assert backend.live_requests() == set()
    assert await leftover_tasks() == set()


def _rss_mb() -> float:
    try:
        import psutil
    except ImportError:  # pragma: no cover - psutil is in the dev dependencies
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    return float(psutil.Process().memory_info().rss) / 2**20


def _alive(kind: type) -> int:
    return sum(1 for obj in gc.get_objects() if type(obj) is kind)


async def test_memory_stays_flat_over_500_sequential_runs() -> None:
    backend = synthetic_backend()
    runner = DeepPrune(backend, LexicalJudge(), CONFIG, answers="exact")
    samples: list[float] = []
    kept: list[Any] = []
    for i in range(500):
        result = await runner.run(QUESTION)
        assert result.answer == "7"
        if i % 50 == 0:
            kept.append(result)  # results the caller keeps hold one text each, not the run
        if i % 100 == 99:
            gc.collect()
            samples.append(_rss_mb())
    per_100 = (samples[-1] - samples[0]) / (len(samples) - 1)
    print(f"\nRSS after every 100 runs (MB): {[round(s, 1) for s in samples]}; {per_100:+.2f}/100")
    # The first 100 runs warm caches (the tokenised traces, imports); after them memory is flat.
    assert samples[-1] - samples[0] < 8.0, samples
    assert backend.live_requests() == set()
    # Trace texts are released with the run: no driver and no per-trace record survive it.
    gc.collect()
    assert _alive(driver.Driver) == 0
    assert _alive(driver._TraceRun) == 0
    assert all(r.text is not None and len(r.traces) == 8 for r in kept)
