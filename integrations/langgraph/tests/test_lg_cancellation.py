"""Cancelling a graph that runs a DeepPrune node, at random points, leaves nothing behind.

The LangGraph surface of the cancellation property in tests/reliability/test_run_cancellation.py:
a compiled ``StateGraph`` whose node is ``create_deepprune_node`` runs on the replay backend
(one delta per loop turn) through ``ainvoke`` or ``astream``, and is cancelled after a random
number of event-loop turns (sometimes a second time while the first cancellation unwinds). Once
the cancelled call has returned: no request is live in the backend, no task is left pending, and
nothing reached the loop's exception handler. A node that caught the cancellation, or a run that
kept its traces streaming after the graph's task was cancelled, fails it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from deepprune_langgraph import DeepPruneState, create_deepprune_node
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from langchain_core.messages import HumanMessage
from langgraph.graph import END, START, StateGraph
from lg_helpers import PRUNING

from deepprune_lc import DeepPruneReasoner, ReplayBackend
from deepprune_lc.demo import load_demo_pool
from deepprune_lc.testing import cancel_after_turns

POOL = load_demo_pool()
QUESTION = POOL.by_id("demo-bakery").problem


def _graph(backend: ReplayBackend) -> Any:
    model = DeepPruneReasoner(backend=backend, judge="lexical", pruning=PRUNING)
    graph = StateGraph(DeepPruneState)
    graph.add_node("reason", create_deepprune_node(model))
    graph.add_edge(START, "reason")
    graph.add_edge("reason", END)
    return graph.compile()


def _call(graph: Any, surface: str) -> Callable[[], Awaitable[Any]]:
    inputs = {"messages": [HumanMessage(QUESTION)]}

    async def call() -> Any:
        if surface == "ainvoke":
            return await graph.ainvoke(inputs)
        return [chunk async for chunk in graph.astream(inputs, stream_mode=["custom", "updates"])]

    return call


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,
)
@given(
    surface=st.sampled_from(["ainvoke", "astream"]),
    turns=st.integers(0, 300),
    again=st.none() | st.integers(0, 20),
)
def test_cancelling_a_graph_with_a_deepprune_node_aborts_every_trace(
    surface: str, turns: int, again: int | None
) -> None:
    backend = ReplayBackend(POOL, yield_every=1)
    outcome = asyncio.run(cancel_after_turns(_call(_graph(backend), surface), turns, again))
    assert backend.live_requests() == set()
    assert outcome.left == set(), f"tasks left pending: {outcome.left}"
    assert outcome.reported == [], outcome.reported


def test_a_cancellation_mid_run_really_lands_inside_the_node() -> None:
    # The property above is only worth something if its points fall while traces stream: a point
    # 40 turns in is past the graph's start and before the run ends (it decodes for hundreds).
    backend = ReplayBackend(POOL, yield_every=1)
    seen: list[int] = []
    original = backend.stream

    def stream(request: Any) -> Any:
        seen.append(request.trace_index)
        return original(request)

    backend.stream = stream  # type: ignore[method-assign]
    outcome = asyncio.run(cancel_after_turns(_call(_graph(backend), "ainvoke"), 40))
    assert seen and not outcome.finished_first  # traces had started, the graph had not finished
    assert backend.live_requests() == set() and outcome.left == set() and not outcome.reported
