"""``create_escalating_graph``: the route is decided by the traces' vote, on real replayed runs."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from deepprune_langgraph import (
    ESCALATED_EVENT,
    create_escalating_graph,
    default_clarification,
    vote_support,
)
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, HumanMessage
from langgraph.checkpoint.memory import InMemorySaver
from lg_helpers import DIVERSE, GARDEN, PRUNING, garden_pool, reasoner, run_graph, stream_chunks

from deepprune_lc import DeepPruneReasoner, GenerationError
from deepprune_lc.demo import load_demo_pool

# -- vote_support -------------------------------------------------------------------------------


def test_support_is_the_winning_share_of_the_vote() -> None:
    summary = {
        "policy": "diverse",
        "votes": [{"answer": "44", "weight": 10.0}, {"answer": "36", "weight": 6.0}],
        "clusters": [5, 5, 3, 3],
    }
    assert vote_support(summary) == pytest.approx(10 / 16)


def test_majority_support_counts_the_winning_clusters_share() -> None:
    """Under the majority policy only the largest cluster votes, so its size matters too."""
    unanimous_finalists = {"policy": "majority", "votes": [{"answer": "216", "weight": 3.0}]}
    assert vote_support({**unanimous_finalists, "clusters": [4, 1, 1]}) == pytest.approx(4 / 6)
    assert vote_support({**unanimous_finalists, "clusters": [1] * 8}) == pytest.approx(1 / 8)
    split = {
        "policy": "majority",
        "votes": [{"answer": "216", "weight": 2.0}, {"answer": "120", "weight": 1.0}],
        "clusters": [6, 2],
    }
    assert vote_support(split) == pytest.approx(2 / 3 * 6 / 8)


def test_no_vote_has_no_support() -> None:
    assert vote_support({"policy": "majority", "votes": [], "clusters": [8]}) == 0.0
    assert vote_support({}) == 0.0


# -- routes ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("pruning", [PRUNING, DIVERSE], ids=["majority", "diverse"])
def test_well_supported_answer_ends_directly(bakery: str, asynchronous: bool, pruning: Any) -> None:
    graph = create_escalating_graph(reasoner(pruning=pruning), escalate=("more_traces", "clarify"))

    state = run_graph(graph, {"messages": [bakery]}, asynchronous=asynchronous)

    assert state["route"] == "direct"
    assert state["support"] >= 0.6
    assert state["deepprune"]["answer"] == "216"
    assert [m.type for m in state["messages"]] == ["human", "ai"]
    assert [a["step"] for a in state["attempts"]] == ["direct"]


def test_disagreeing_traces_escalate_to_more_traces(asynchronous: bool) -> None:
    """8 traces, four answers: support 0.25. With 16, eight more agree on 44: support 10/16."""
    model = reasoner(garden_pool(disagreeing=8, agreeing=8), pruning=DIVERSE)
    graph = create_escalating_graph(model, escalate="more_traces", max_traces=16)

    state = run_graph(graph, {"messages": [HumanMessage(GARDEN)]}, asynchronous=asynchronous)

    assert state["route"] == "more_traces"
    first, second = state["attempts"]
    assert first == {"step": "direct", "answer": first["answer"], "support": 0.25, "n_traces": 8}
    assert second == {"step": "more_traces", "answer": "44", "support": 0.625, "n_traces": 16}
    assert state["support"] == pytest.approx(0.625)
    assert state["deepprune"]["answer"] == "44"
    assert sum(state["deepprune"]["trace_status"].values()) == 16
    # The weak answer was replaced, not appended to.
    _question, answer = state["messages"]
    assert "\\boxed{44}" in answer.text


def test_still_disagreeing_traces_end_with_a_clarifying_question(asynchronous: bool) -> None:
    model = reasoner(garden_pool(disagreeing=8), pruning=DIVERSE)
    graph = create_escalating_graph(model, escalate=("more_traces", "clarify"), max_traces=16)

    state = run_graph(graph, {"messages": [GARDEN]}, asynchronous=asynchronous)

    assert state["route"] == "clarify"
    assert [a["step"] for a in state["attempts"]] == ["direct", "more_traces"]
    assert state["support"] == pytest.approx(0.25)
    _question, reply = state["messages"]
    assert isinstance(reply, AIMessage)
    assert reply.text == default_clarification(state["deepprune"])
    assert reply.text.endswith("?")
    assert all(answer in reply.text for answer in ("44", "36", "40", "48"))


def test_disagreeing_traces_escalate_to_a_stronger_model(asynchronous: bool) -> None:
    """The stronger reasoner's traces agree (all 44): its answer is accepted with support 1."""
    stronger = reasoner(garden_pool(disagreeing=0, agreeing=8), pruning=DIVERSE)
    graph = create_escalating_graph(
        reasoner(garden_pool(), pruning=DIVERSE),
        escalate=("stronger_model", "clarify"),
        stronger_model=stronger,
    )

    state = run_graph(graph, {"messages": [GARDEN]}, asynchronous=asynchronous)

    assert state["route"] == "stronger_model"
    assert state["support"] == 1.0
    assert state["deepprune"]["answer"] == "44"
    assert [(a["step"], a["support"]) for a in state["attempts"]] == [
        ("direct", 0.25),
        ("stronger_model", 1.0),
    ]


def test_a_plain_stronger_model_is_accepted_as_is() -> None:
    """A chat model without a vote has no support to check: its answer ends the graph."""
    plain = GenericFakeChatModel(messages=iter([AIMessage("The path covers 44 square meters.")]))
    graph = create_escalating_graph(
        reasoner(garden_pool(), pruning=DIVERSE),
        escalate=("stronger_model", "clarify"),
        stronger_model=plain,
    )

    state = graph.invoke({"messages": [GARDEN]})

    assert state["route"] == "stronger_model"
    assert state["support"] is None and state["deepprune"] is None
    assert state["messages"][-1].text == "The path covers 44 square meters."
    assert state["attempts"][-1] == {
        "step": "stronger_model",
        "answer": "The path covers 44 square meters.",
        "support": None,
        "n_traces": None,
    }


def test_a_weak_last_answer_is_kept_and_flagged() -> None:
    """No step left: the graph ends with the best it has, and ``support`` says how weak it is."""
    graph = create_escalating_graph(reasoner(garden_pool(), pruning=DIVERSE), max_traces=16)
    state = graph.invoke({"messages": [GARDEN]})
    assert state["route"] == "more_traces"
    assert state["support"] < 0.6
    assert state["messages"][-1].type == "ai"


def test_escalation_streams_its_own_event_and_both_runs(asynchronous: bool) -> None:
    model = reasoner(garden_pool(), pruning=DIVERSE)
    graph = create_escalating_graph(model, escalate=("more_traces", "clarify"), max_traces=16)

    chunks = stream_chunks(
        graph, {"messages": [GARDEN]}, ["custom", "updates"], asynchronous=asynchronous
    )

    custom = [chunk for mode, chunk in chunks if mode == "custom"]
    escalations = [c["data"] for c in custom if c["event"] == ESCALATED_EVENT]
    assert escalations == [
        {"step": "more_traces", "support": 0.25, "min_support": 0.6},
        {"step": "clarify", "support": 0.25, "min_support": 0.6},
    ]
    assert [c["event"] for c in custom].count("deepprune.run_completed") == 2
    assert [next(iter(chunk)) for mode, chunk in chunks if mode == "updates"] == [
        "reason",
        "more_traces",
        "clarify",
    ]


def test_min_support_decides_the_route() -> None:
    """The same disagreeing run (support 0.25) is accepted when 0.25 is enough."""
    model = reasoner(garden_pool(), pruning=DIVERSE)
    lenient = create_escalating_graph(model, min_support=0.25, escalate="clarify")
    strict = create_escalating_graph(model, min_support=0.26, escalate="clarify")
    assert lenient.invoke({"messages": [GARDEN]})["route"] == "direct"
    assert strict.invoke({"messages": [GARDEN]})["route"] == "clarify"


def test_each_turn_starts_a_fresh_escalation() -> None:
    """With a checkpointer the user can answer the clarifying question; attempts reset per turn."""
    from deepprune_lc import ReplayBackend

    backend = ReplayBackend(garden_pool(), yield_every=1, fallback_problem="garden")
    model = DeepPruneReasoner(backend=backend, pruning=DIVERSE)
    graph = create_escalating_graph(model, escalate="clarify", checkpointer=InMemorySaver())
    thread = {"configurable": {"thread_id": "garden"}}

    first = graph.invoke({"messages": [GARDEN]}, thread)
    second = graph.invoke({"messages": ["The path is outside the garden."]}, thread)

    assert first["route"] == second["route"] == "clarify"
    assert [m.type for m in second["messages"]] == ["human", "ai", "human", "ai"]
    assert len(second["attempts"]) == 1


def test_a_custom_clarification_and_support_function(bakery: str) -> None:
    graph = create_escalating_graph(
        reasoner(pruning=DIVERSE),
        escalate="clarify",
        support=lambda summary: 0.0,  # never satisfied
        clarification=lambda summary: f"Did you mean {summary['answer']}?",  # type: ignore[index]
    )
    state = graph.invoke({"messages": [HumanMessage(bakery)]})
    assert state["route"] == "clarify"
    assert state["messages"][-1].text == "Did you mean 216?"


# -- validation ------------------------------------------------------------------------------------

_stronger = GenericFakeChatModel(messages=itertools.repeat(AIMessage("x")))


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"min_support": 0}, "min_support"),
        ({"min_support": 1.5}, "min_support"),
        ({"escalate": ()}, "at least one step"),
        ({"escalate": "louder"}, "unknown step"),
        ({"escalate": ("clarify", "more_traces")}, "must be the last"),
        ({"escalate": ("more_traces", "more_traces")}, "once"),
        ({"escalate": "stronger_model"}, "stronger_model: required"),
        ({"escalate": "clarify", "stronger_model": _stronger}, "stronger_model: given"),
        ({"escalate": "clarify", "max_traces": 32}, "max_traces: given"),
        ({"max_traces": 8}, "greater than the model's n_traces"),
        ({"max_traces": 5000}, "at most 4096"),
    ],
)
def test_bad_arguments_fail_at_construction(kwargs: dict[str, Any], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        create_escalating_graph(reasoner(), **kwargs)


def test_escalating_graph_needs_a_deepprune_reasoner() -> None:
    with pytest.raises(TypeError, match="DeepPruneReasoner"):
        create_escalating_graph(_stronger)  # type: ignore[arg-type]


def test_the_original_model_keeps_its_trace_count() -> None:
    """``more_traces`` runs a separate reasoner, even when the original has already run.

    On the demo question with 16 recorded traces: ``replay:demo`` replays each recorded trace
    once, so a run of 16 needs a question with 16 of them."""
    question = load_demo_pool().by_id("demo-divisors").problem
    model = reasoner(pruning=DIVERSE)
    model.invoke(question)  # creates the model's runner first
    graph = create_escalating_graph(model, min_support=1.0, max_traces=16)
    state = graph.invoke({"messages": [question]})
    assert [a["n_traces"] for a in state["attempts"]] == [8, 16]
    assert sum(state["deepprune"]["trace_status"].values()) == 16
    assert model.pruning.n_traces == 8


def test_the_default_max_traces_fits_a_replay_pool(bakery: str) -> None:
    """With ``max_traces`` left to the graph (4x the model's), ``more_traces`` on ``replay:demo``
    uses the traces the pool recorded for the question instead of failing or repeating them."""
    model = DeepPruneReasoner(backend="replay:demo")  # defaults: majority, 25 reasoning words
    graph = create_escalating_graph(model, min_support=0.6)

    state = graph.invoke({"messages": [bakery]})

    assert state["route"] == "more_traces"
    assert [a["n_traces"] for a in state["attempts"]] == [8, 8]
    assert sum(state["deepprune"]["trace_status"].values()) == 8


def test_an_explicit_max_traces_above_the_pool_is_an_error_naming_its_size(bakery: str) -> None:
    graph = create_escalating_graph(DeepPruneReasoner(backend="replay:demo"), max_traces=32)
    with pytest.raises(GenerationError, match=r"recorded 8 traces of problem 'demo-bakery'"):
        graph.invoke({"messages": [bakery]})
