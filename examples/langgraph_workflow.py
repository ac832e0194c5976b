"""DeepPrune inside LangGraph: a node in your own graph, and a graph that escalates on a weak vote.

1. A two-node workflow (reason with DeepPrune, then report) streamed with
   ``stream_mode=["custom", "updates"]``: every pruning decision arrives live in the custom stream,
   each node's state update in the updates stream.
2. ``create_escalating_graph``: answer directly when the traces' vote is well supported, otherwise
   re-run with more traces and, if they still disagree, ask a clarifying question.

Needs the integration package: pip install -e integrations/langgraph (``make setup`` does it).
Run: .venv/bin/python examples/langgraph_workflow.py   (offline: the embedded trace pool)
"""

from __future__ import annotations

import asyncio
from typing import Any

from deepprune_langgraph import DeepPruneState, create_deepprune_node, create_escalating_graph
from langchain_core.messages import AIMessage, HumanMessage
from langgraph.graph import END, START, StateGraph

from deepprune_lc import DeepPruneReasoner, PruningConfig, ReplayBackend, TokensPrefix
from deepprune_lc.demo import load_demo_pool

# The embedded traces are short, so the judge reads 40-token prefixes.
PRUNING = PruningConfig(n_traces=8, prefix=TokensPrefix(k=40), finalists=3)
LIVE = {"deepprune.trace_clustered", "deepprune.trace_parked", "deepprune.vote"}


def report(state: DeepPruneState) -> dict[str, Any]:
    """A plain node after the reasoner: it reads the run summary the DeepPrune node stored."""
    summary = state["deepprune"] or {}
    status = summary.get("trace_status", {})
    text = (
        f"Answer {summary.get('answer')}: {status.get('finished', 0)} traces finished, "
        f"{status.get('pruned', 0)} pruned, {status.get('aborted', 0)} stopped early; "
        f"{summary.get('decoded_tokens')} tokens decoded ({summary.get('token_savings', 0):.0%} saved)."
    )
    return {"messages": [AIMessage(text, name="report")]}


def build_workflow(model: DeepPruneReasoner) -> Any:
    graph = StateGraph(DeepPruneState)
    graph.add_node("reason", create_deepprune_node(model))
    graph.add_node("report", report)
    graph.add_edge(START, "reason")
    graph.add_edge("reason", "report")
    graph.add_edge("report", END)
    return graph.compile()


def show_event(chunk: dict[str, Any]) -> None:
    name, data = chunk["event"], chunk["data"]
    if name == "deepprune.trace_clustered":
        how = "founded" if data["founded"] else f"joined (score {data['score']:.2f})"
        print(f"    trace {data['trace_id']} {how} cluster {data['cluster_id']}")
    elif name == "deepprune.trace_parked":
        print(f"    trace {data['trace_id']} parked after {data['tokens_decoded']} tokens")
    elif name == "deepprune.vote":
        print(f"    vote: {data['votes']}")
    elif name == "deepprune.escalated":
        print(f"  >> support {data['support']:.2f} < {data['min_support']}: {data['step']}")


async def main() -> None:
    pool = load_demo_pool()
    model = DeepPruneReasoner(backend="replay:demo", pruning=PRUNING)
    question = pool.by_id("demo-bakery").problem

    print("1. A DeepPrune node in a workflow, streamed")
    workflow = build_workflow(model)
    async for mode, chunk in workflow.astream(
        {"messages": [HumanMessage(question)]}, stream_mode=["custom", "updates"]
    ):
        if mode == "custom" and chunk["event"] in LIVE:
            show_event(chunk)
        elif mode == "updates" and "report" in chunk:
            print(f"  report: {chunk['report']['messages'][0].content}")

    print("\n2. Escalate when the vote is weak (policy='diverse': every cluster votes)")
    # The demo pool records 8 traces of these questions, and "replay:demo" refuses to serve more.
    # To walk the whole ladder here, this backend replays them again when "more_traces" asks for
    # 32 (so the vote keeps its proportions); on an engine, more traces are new samples.
    diverse = DeepPruneReasoner(
        backend=ReplayBackend(pool, yield_every=1, reuse="cycle"),
        pruning=PRUNING.model_copy(update={"policy": "diverse"}),
    )
    graph = create_escalating_graph(
        diverse, min_support=0.7, escalate=("more_traces", "clarify"), max_traces=32
    )
    for problem in (pool.by_id("demo-bakery"), pool.by_id("demo-train")):
        print(f"  Q: {problem.problem[:70]}...")
        final: dict[str, Any] = {}
        async for mode, chunk in graph.astream(
            {"messages": [HumanMessage(problem.problem)]}, stream_mode=["custom", "values"]
        ):
            if mode == "custom" and chunk["event"] == "deepprune.escalated":
                show_event(chunk)
            elif mode == "values":
                final = chunk
        steps = ", ".join(f"{a['step']} ({a['support']:.2f})" for a in final["attempts"])
        print(f"  route {final['route']!r} after {steps}")
        print(f"  A: {final['messages'][-1].content.strip().splitlines()[-1]}\n")


if __name__ == "__main__":
    asyncio.run(main())
