"""DeepPrune nodes in one graph step: ``Send`` fan-out of many questions into one node, and parallel
DeepPrune nodes from START. Both used to fail with ``InvalidUpdateError: At key 'deepprune': Can
receive only one value per step``; the state's reducers keep the latest summary and log every run
with its question and its answer's message id."""

from __future__ import annotations

from typing import Any

import pytest
from deepprune_langgraph import (
    DeepPruneRun,
    DeepPruneState,
    RecordedSummary,
    append_runs,
    create_deepprune_node,
    create_escalating_graph,
    keep_last,
)
from langchain_core.messages import AIMessage, HumanMessage
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph
from langgraph.types import Overwrite, Send
from lg_helpers import DIVERSE, PRUNING, garden_pool, reasoner, run_graph

from deepprune_lc import TracePool
from deepprune_lc.demo import load_demo_pool

DEMO = load_demo_pool()
#: Four questions, each with its own answer: three demo problems and the garden question.
POOL = TracePool(
    problems=[
        DEMO.by_id("demo-bakery"),
        DEMO.by_id("demo-pencils"),
        DEMO.by_id("demo-train"),
        *garden_pool(disagreeing=2, agreeing=6).problems,
    ]
)
QUESTIONS = [problem.problem for problem in POOL.problems]
EXPECTED = {"demo-bakery": "216", "demo-pencils": "66", "demo-train": "210", "garden": "44"}


class FanOut(DeepPruneState, total=False):
    """A map-reduce state: the questions to map over, and the reduce step's report."""

    questions: list[str]
    report: str


def fan_out_graph(**node_kwargs: Any) -> Any:
    """START -> Send("reason", {"messages": [q]}) per question -> "report" (the reduce step)."""

    def report(state: FanOut) -> dict[str, Any]:
        runs = state["deepprune_runs"]
        return {"report": "; ".join(f"{r['question'][:12]}={r['summary']['answer']}" for r in runs)}

    graph = StateGraph(FanOut)
    graph.add_node("reason", create_deepprune_node(reasoner(POOL), **node_kwargs))
    graph.add_node("report", report)
    graph.add_conditional_edges(
        START,
        lambda state: [Send("reason", {"messages": [q]}) for q in state["questions"]],
        ["reason"],
    )
    graph.add_edge("reason", "report")
    return graph.compile()


def test_send_fan_out_keeps_every_run_with_its_own_question(asynchronous: bool) -> None:
    alone = {
        problem.problem: create_deepprune_node(reasoner(POOL)).invoke(
            {"messages": [problem.problem]}
        )
        for problem in POOL.problems
    }

    state = run_graph(
        fan_out_graph(), {"questions": QUESTIONS, "messages": []}, asynchronous=asynchronous
    )

    runs = state["deepprune_runs"]
    assert sorted(run["question"] or "" for run in runs) == sorted(QUESTIONS)
    answers = {message.id: message for message in state["messages"]}
    assert len(answers) == 4 and all(isinstance(m, AIMessage) for m in answers.values())
    for run in runs:
        problem = POOL.find_by_prompt(run["question"] or "")
        assert problem is not None
        # Each answer belongs to its own question: the run's summary, its message, and the
        # answer the node gives for that question on its own all agree.
        assert run["summary"]["answer"] == EXPECTED[problem.id]
        assert run["summary"]["answer"] == alone[problem.problem]["deepprune"]["answer"]
        message = answers[run["message_id"]]
        assert message.response_metadata["deepprune"] == run["summary"]
        assert f"\\boxed{{{EXPECTED[problem.id]}}}" in message.text
        assert run["node"] == "reason"
    # The single-summary key still reads as one summary: the last run applied.
    assert state["deepprune"] == runs[-1]["summary"]
    # The reduce step saw all four.
    assert state["report"].count("=") == 4


def test_send_fan_out_shares_a_bound_on_traces_in_flight(asynchronous: bool) -> None:
    """Four questions fanned out to one bounded node: never more than the bound's streams on the
    backend at once, every question still answered with its own answer."""
    from deepprune_lc import DeepPruneReasoner
    from deepprune_lc.backends import BoundedBackend, ReplayBackend

    bounded = BoundedBackend(ReplayBackend(POOL, yield_every=1), max_in_flight=3)
    model = DeepPruneReasoner(backend=bounded, pruning=PRUNING)
    graph = StateGraph(FanOut)
    graph.add_node("reason", create_deepprune_node(model))
    graph.add_conditional_edges(
        START, lambda s: [Send("reason", {"messages": [q]}) for q in s["questions"]], ["reason"]
    )

    state = run_graph(
        graph.compile(), {"questions": QUESTIONS, "messages": []}, asynchronous=asynchronous
    )

    answers = {
        POOL.find_by_prompt(run["question"] or "").id: run["summary"]["answer"]  # type: ignore[union-attr]
        for run in state["deepprune_runs"]
    }
    assert answers == EXPECTED
    stats = bounded.admission_stats()
    assert stats.peak_in_flight == 3  # the four runs together wanted more: they took turns
    assert (stats.in_flight, stats.waiting) == (0, 0)


def test_fan_out_records_failed_runs_with_no_message(asynchronous: bool) -> None:
    """``on_error="record"`` under fan-out: every run is logged, a failed one without a message."""
    from deepprune_lc import DeepPruneReasoner, ReplayBackend
    from deepprune_lc.testing import FailingBackend

    # Trace 0 of every question fails after 60 tokens.
    backend = FailingBackend(ReplayBackend(POOL, yield_every=1), trace_index=0, after=60)
    model = DeepPruneReasoner(backend=backend, pruning=PRUNING)
    graph = StateGraph(FanOut)
    graph.add_node("reason", create_deepprune_node(model, on_error="record"))
    graph.add_conditional_edges(
        START, lambda s: [Send("reason", {"messages": [q]}) for q in s["questions"]], ["reason"]
    )

    state = run_graph(
        graph.compile(), {"questions": QUESTIONS[:2], "messages": []}, asynchronous=asynchronous
    )

    runs = state["deepprune_runs"]
    assert sorted(run["question"] or "" for run in runs) == sorted(QUESTIONS[:2])
    assert all(run["message_id"] is None for run in runs)
    assert all(run["summary"]["error"].startswith("GenerationError") for run in runs)
    assert state["messages"] == []


class TwoModels(DeepPruneState, total=False):
    verdict: str


def test_two_deepprune_nodes_from_start_run_in_parallel(bakery: str, asynchronous: bool) -> None:
    """Two reasoners (majority and diverse policy) answer the same question in one step; a join
    node reads both runs."""

    def compare(state: TwoModels) -> dict[str, Any]:
        by_node = {run["node"]: run["summary"]["answer"] for run in state["deepprune_runs"]}
        agree = len(set(by_node.values())) == 1
        return {"verdict": ("agree" if agree else "disagree") + f" {sorted(by_node.items())}"}

    graph = StateGraph(TwoModels)
    graph.add_node("majority", create_deepprune_node(reasoner(pruning=PRUNING)))
    graph.add_node("diverse", create_deepprune_node(reasoner(pruning=DIVERSE)))
    graph.add_node("compare", compare)
    graph.add_edge(START, "majority")
    graph.add_edge(START, "diverse")
    graph.add_edge(["majority", "diverse"], "compare")
    graph.add_edge("compare", END)

    state = run_graph(graph.compile(), {"messages": [bakery]}, asynchronous=asynchronous)

    runs = state["deepprune_runs"]
    assert sorted(run["node"] for run in runs) == ["diverse", "majority"]
    assert {run["summary"]["policy"] for run in runs} == {"majority", "diverse"}
    assert all(run["summary"]["answer"] == "216" and run["question"] == bakery for run in runs)
    assert state["verdict"].startswith("agree")
    question, *answers = state["messages"]
    assert isinstance(question, HumanMessage) and len(answers) == 2
    assert {m.id for m in answers} == {run["message_id"] for run in runs}
    assert state["deepprune"] in [run["summary"] for run in runs]


def test_a_single_node_logs_one_run_per_turn(bakery: str) -> None:
    """One node, one run: ``deepprune`` reads exactly as before, and the log grows per turn."""
    graph = StateGraph(DeepPruneState)
    graph.add_node("reason", create_deepprune_node(reasoner()))
    graph.add_edge(START, "reason")
    app = graph.compile(checkpointer=InMemorySaver())
    config = {"configurable": {"thread_id": "t"}}

    first = app.invoke({"messages": [bakery]}, config)
    pencils = DEMO.by_id("demo-pencils").problem
    second = app.invoke({"messages": [HumanMessage(pencils)]}, config)

    (run,) = first["deepprune_runs"]
    assert run["summary"] == first["deepprune"] and first["deepprune"]["answer"] == "216"
    assert run["message_id"] == first["messages"][-1].id and run["question"] == bakery
    assert [r["summary"]["answer"] for r in second["deepprune_runs"]] == ["216", "66"]
    assert second["deepprune"]["answer"] == "66"
    app.update_state(config, {"deepprune_runs": Overwrite([])})  # clearing the log
    assert app.get_state(config).values["deepprune_runs"] == []


def test_the_escalating_graph_still_works_with_the_reducers(bakery: str) -> None:
    state = create_escalating_graph(reasoner(), escalate="clarify").invoke({"messages": [bakery]})
    assert state["route"] == "direct" and state["deepprune"]["answer"] == "216"


def test_runs_key_none_writes_no_log_and_the_reducers_are_public() -> None:
    node = create_deepprune_node(reasoner(), runs_key=None)
    update = node.invoke({"messages": [DEMO.by_id("demo-bakery").problem]})
    assert set(update) == {"messages", "deepprune"}

    # The reducers, for a state schema of your own.
    summary: RecordedSummary = update["deepprune"]
    run = DeepPruneRun(node="n", question="q", message_id="m", summary=summary)
    assert keep_last(None, summary) is summary and keep_last(summary, None) is None
    assert append_runs(None, run) == [run]
    assert append_runs([run], [run, run]) == [run, run, run]
    assert append_runs([run], None) == [run]


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"runs_key": ""}, "runs_key"),
        ({"runs_key": "messages"}, "runs_key must differ"),
        ({"runs_key": "deepprune"}, "runs_key must differ"),
    ],
)
def test_bad_runs_key_fails_at_construction(kwargs: dict[str, Any], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        create_deepprune_node(reasoner(), **kwargs)
