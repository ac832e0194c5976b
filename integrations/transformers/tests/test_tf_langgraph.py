"""The LangGraph node on a real engine: a compiled graph whose node runs DeepPrune on transformers.

The replayed-trace graph tests live in integrations/langgraph/tests; here the traces are really
decoded (the tiny model trained to answer ``REASONER_QUESTION`` with 42), so pruning decisions,
the answer and the token counts all come from the engine.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from deepprune_langgraph import DeepPruneState, create_deepprune_node
from deepprune_transformers.testing import REASONER_QUESTION
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage
from langgraph.graph import START, StateGraph

from deepprune_lc import DeepPruneReasoner, PruningConfig, SamplingConfig, TokensPrefix


def _graph(model_dir: Path) -> Any:
    reasoner = DeepPruneReasoner(
        backend=f"transformers:{model_dir}",
        judge="lexical",
        pruning=PruningConfig(n_traces=6, prefix=TokensPrefix(k=8), finalists=2),
        sampling=SamplingConfig(temperature=1.0, max_tokens=96),
    )
    builder = StateGraph(DeepPruneState)
    builder.add_node("reason", create_deepprune_node(reasoner))
    builder.add_edge(START, "reason")
    return builder.compile()


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
def test_graph_node_streams_pruning_and_the_answer_from_the_engine(
    tiny_reasoner_dir: Path, asynchronous: bool
) -> None:
    graph = _graph(tiny_reasoner_dir)
    inputs = {"messages": [HumanMessage(REASONER_QUESTION)]}
    modes = ["custom", "messages", "updates"]
    if asynchronous:

        async def collect() -> list[tuple[str, Any]]:
            return [c async for c in graph.astream(inputs, stream_mode=modes)]

        chunks = asyncio.run(collect())
    else:
        chunks = list(graph.stream(inputs, stream_mode=modes))

    names = [chunk["event"] for mode, chunk in chunks if mode == "custom"]
    assert names.count("deepprune.trace_started") == 6
    assert "deepprune.trace_clustered" in names and names[-1] == "deepprune.run_completed"

    (update,) = [chunk for mode, chunk in chunks if mode == "updates"]
    (answer,) = update["reason"]["messages"]
    summary = update["reason"]["deepprune"]
    assert isinstance(answer, AIMessage) and answer.text
    assert sum(summary["trace_status"].values()) == 6
    # Every trace was decoded by the engine, pruned ones included, and counted.
    assert answer.usage_metadata is not None
    assert answer.usage_metadata["output_tokens"] == summary["decoded_tokens"] > 0

    streamed = [chunk[0] for mode, chunk in chunks if mode == "messages"]
    assert [m.text for m in streamed] == [answer.text]
    assert isinstance(streamed[0], AIMessage | AIMessageChunk)
