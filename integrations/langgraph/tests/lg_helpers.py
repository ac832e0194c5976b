"""Helpers for the LangGraph integration tests: real graphs, replayed traces, no mocks.

Besides the embedded demo pool (most traces agree, so the vote is well supported) the tests build a
pool whose traces *disagree*: one question read four ways (is the path inside or outside the
garden? ...), two traces per reading. Traces of one reading share their opening sentence, so the
lexical judge clusters them together and never with another reading.
"""

from __future__ import annotations

import asyncio
from typing import Any

from deepprune_lc import DeepPruneReasoner, PruningConfig, ReplayBackend, TokensPrefix, TracePool

GARDEN = (
    "A garden is 12 meters long and 8 meters wide, and a path 1 meter wide runs along its edge. "
    "What is the area of the path, in square meters?"
)
_OPENINGS = {
    "44": "The path goes around the outside of the garden, so the garden with the path is a "
    "bigger rectangle of 14 by 10 meters.",
    "36": "The path runs inside the garden along its edge, so the part of the garden left without "
    "the path is 10 by 6 meters.",
    "40": "Count the path as four strips along the four sides: two long strips and two short "
    "strips, each 1 meter wide.",
    "48": "Think of the path as the perimeter of the garden times the width of the path, since the "
    "path is 1 meter wide everywhere.",
}
_ENDINGS = {
    "44": (
        "The big rectangle has area 14 * 10 = 140 and the garden has 12 * 8 = 96, so the path is "
        "140 - 96 = 44. Therefore the answer is \\boxed{44}.",
        "Its area is 140 square meters. Subtract the garden, 96 square meters, and the path covers "
        "44 square meters. So the answer is \\boxed{44}.",
    ),
    "36": (
        "The garden is 12 * 8 = 96 and the inner part is 10 * 6 = 60, so the path is 96 - 60 = 36. "
        "Therefore the answer is \\boxed{36}.",
        "The inner part covers 60 square meters out of 96, which leaves 36 square meters for the "
        "path. So the answer is \\boxed{36}.",
    ),
    "40": (
        "The long strips are 12 * 1 = 12 each and the short strips 8 * 1 = 8 each, so "
        "2 * 12 + 2 * 8 = 40. Therefore the answer is \\boxed{40}.",
        "Two strips of 12 square meters and two of 8 square meters add up to 24 + 16 = 40 square "
        "meters. So the answer is \\boxed{40}.",
    ),
    "48": (
        "The perimeter is 2 * (12 + 8) = 40 meters; with the corners counted twice the path is "
        "40 + 8 = 48. Therefore the answer is \\boxed{48}.",
        "Perimeter 40 meters, plus 8 for the four corner squares counted on both sides, gives 48. "
        "So the answer is \\boxed{48}.",
    ),
}


def _trace(answer: str, variant: int) -> dict[str, Any]:
    text = _OPENINGS[answer] + "\n\n" + _ENDINGS[answer][variant % 2]
    return {"text": text, "reference_answer": answer}


def garden_pool(*, disagreeing: int = 8, agreeing: int = 0) -> TracePool:
    """The garden question: ``disagreeing`` traces cycling through four answers (2 of each for 8),
    then ``agreeing`` more traces that all say 44 (the outside-path reading)."""
    answers = list(_OPENINGS)
    traces = [_trace(answers[i % 4], i // 4) for i in range(disagreeing)]
    traces += [_trace("44", i) for i in range(agreeing)]
    return TracePool.model_validate(
        {"problems": [{"id": "garden", "problem": GARDEN, "answer": "44", "traces": traces}]}
    )


#: The embedded traces are short, so the judge reads 40-token prefixes (as in examples/).
PRUNING = PruningConfig(n_traces=8, prefix=TokensPrefix(k=40), finalists=3)
#: Every cluster's founder finishes and votes with the cluster's size: the vote covers all traces.
DIVERSE = PRUNING.model_copy(update={"policy": "diverse"})


def reasoner(
    pool: TracePool | None = None, pruning: PruningConfig = PRUNING, judge: Any = "lexical"
) -> DeepPruneReasoner:
    """A reasoner over ``pool`` (default: the embedded demo pool) with the lexical judge."""
    backend: Any = "replay:demo" if pool is None else ReplayBackend(pool, yield_every=1)
    return DeepPruneReasoner(backend=backend, judge=judge, pruning=pruning)


def stream_chunks(
    graph: Any,
    inputs: dict[str, Any],
    modes: list[str],
    *,
    asynchronous: bool,
    config: dict[str, Any] | None = None,
) -> list[tuple[str, Any]]:
    """Every ``(mode, chunk)`` of ``graph.stream`` or ``graph.astream``."""
    if not asynchronous:
        return list(graph.stream(inputs, config, stream_mode=modes))

    async def collect() -> list[tuple[str, Any]]:
        return [chunk async for chunk in graph.astream(inputs, config, stream_mode=modes)]

    return asyncio.run(collect())


def call_node(node: Any, inputs: Any, *, asynchronous: bool, **kwargs: Any) -> dict[str, Any]:
    """``node.invoke`` or ``node.ainvoke`` outside any graph (``kwargs`` go to the call)."""
    if not asynchronous:
        return dict(node.invoke(inputs, **kwargs))
    return dict(asyncio.run(node.ainvoke(inputs, **kwargs)))


def run_graph(
    graph: Any, inputs: dict[str, Any], *, asynchronous: bool, config: dict[str, Any] | None = None
) -> dict[str, Any]:
    if not asynchronous:
        return dict(graph.invoke(inputs, config))
    return dict(asyncio.run(graph.ainvoke(inputs, config)))
