"""``create_deepprune_node`` in compiled graphs: answers, state keys, the three stream modes, the
writer the node hands the run, and the error policy."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Annotated, Any
from uuid import UUID

import pytest
from deepprune_langgraph import (
    DeepPruneNode,
    DeepPruneState,
    RecordedSummary,
    create_deepprune_node,
    with_stream_writer,
)
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, AnyMessage, HumanMessage
from langchain_core.runnables import RunnableConfig
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.types import StreamWriter
from lg_helpers import PRUNING, call_node, reasoner, run_graph, stream_chunks
from pydantic import BaseModel
from typing_extensions import TypedDict

from deepprune_lc import (
    DeepPruneCallbackHandler,
    DeepPruneReasoner,
    GenerationError,
    JudgeScores,
    LexicalJudge,
    PrefixPair,
    ReplayBackend,
    RunSummary,
)
from deepprune_lc.core.events import ALL_EVENT_TYPES, TracePruned
from deepprune_lc.demo import load_demo_pool
from deepprune_lc.testing import FailingBackend

EVENT_NAMES = {t.name for t in ALL_EVENT_TYPES}


def one_node_graph(node: Any, state: type = DeepPruneState) -> Any:
    graph = StateGraph(state)
    graph.add_node("reason", node)
    graph.add_edge(START, "reason")
    return graph.compile()


class EventRecorder(BaseCallbackHandler):
    """Names of the LangChain custom events a run dispatches, in order."""

    run_inline = True

    def __init__(self) -> None:
        self.names: list[str] = []

    def on_custom_event(self, name: str, data: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self.names.append(name)


class PruneCounter(DeepPruneCallbackHandler):
    def __init__(self) -> None:
        self.pruned: list[TracePruned] = []

    def on_trace_pruned(self, event: TracePruned, *, run_id: UUID) -> None:
        self.pruned.append(event)


class ChatModelJudge:
    """A judge that consults a LangChain chat model, as an LLM judge would, then scores lexically.

    It calls the model without a config, the way judge code inside a backend library does: the
    call inherits whatever runnable config is current.
    """

    VERDICT = "JUDGE VERDICT: same answer"

    def __init__(self) -> None:
        self.model = GenericFakeChatModel(messages=itertools.cycle([AIMessage(self.VERDICT)]))
        self.lexical = LexicalJudge()
        self.calls = 0

    async def score(self, pairs: Sequence[PrefixPair]) -> JudgeScores:
        self.calls += 1
        await self.model.ainvoke("Do these two prefixes reach the same answer?")
        return await self.lexical.score(pairs)


def test_node_answers_the_demo_question(bakery: str, asynchronous: bool) -> None:
    graph = one_node_graph(create_deepprune_node(reasoner()))

    state = run_graph(graph, {"messages": [HumanMessage(bakery)]}, asynchronous=asynchronous)

    question, answer = state["messages"]
    assert isinstance(question, HumanMessage) and isinstance(answer, AIMessage)
    assert "\\boxed{216}" in answer.text
    assert state["deepprune"] == answer.response_metadata["deepprune"]
    assert state["deepprune"]["answer"] == "216"
    assert state["deepprune"]["trace_status"].get("pruned", 0) >= 1
    assert answer.usage_metadata and answer.usage_metadata["output_tokens"] > 0


def test_streams_events_answer_and_message(bakery: str, asynchronous: bool) -> None:
    """custom: every DeepPrune event; updates: the answer; messages: the answer, once."""
    graph = one_node_graph(create_deepprune_node(reasoner()))
    recorder, counter = EventRecorder(), PruneCounter()

    chunks = stream_chunks(
        graph,
        {"messages": [HumanMessage(bakery)]},
        ["custom", "messages", "updates"],
        asynchronous=asynchronous,
        config={"callbacks": [recorder, counter]},
    )

    custom = [chunk for mode, chunk in chunks if mode == "custom"]
    assert {c["event"] for c in custom} <= EVENT_NAMES
    names = [c["event"] for c in custom]
    assert "deepprune.trace_pruned" in names and "deepprune.judge_scored" in names
    assert names[-1] == "deepprune.run_completed"
    # The same events, in the same order, as the LangChain callbacks saw.
    assert names == recorder.names
    assert len(counter.pruned) == names.count("deepprune.trace_pruned")
    pruned = next(c["data"] for c in custom if c["event"] == "deepprune.trace_pruned")
    assert {"trace_id", "cluster_id", "tokens_decoded"} <= set(pruned)

    (update,) = [chunk for mode, chunk in chunks if mode == "updates"]
    (answer,) = update["reason"]["messages"]
    assert "\\boxed{216}" in answer.text
    assert update["reason"]["deepprune"]["answer"] == "216"

    streamed = [chunk[0] for mode, chunk in chunks if mode == "messages"]
    assert [message.text for message in streamed] == [answer.text]
    assert isinstance(streamed[0], AIMessage | AIMessageChunk)


def test_judge_model_output_stays_out_of_the_messages_stream(
    bakery: str, asynchronous: bool
) -> None:
    judge = ChatModelJudge()
    graph = one_node_graph(create_deepprune_node(reasoner(judge=judge)))

    chunks = stream_chunks(
        graph, {"messages": [bakery]}, ["messages", "custom"], asynchronous=asynchronous
    )

    assert judge.calls >= 1  # the judge's model really ran ...
    streamed = [chunk[0].text for mode, chunk in chunks if mode == "messages"]
    assert len(streamed) == 1 and "\\boxed{216}" in streamed[0]  # ... and only the answer shows
    assert "deepprune.judge_scored" in [
        chunk["event"] for mode, chunk in chunks if mode == "custom"
    ]


def test_other_models_in_the_graph_still_stream_tokens(bakery: str, asynchronous: bool) -> None:
    """Only calls made *inside* the reasoner are hidden; the next node's model streams as usual."""
    writer = GenericFakeChatModel(messages=iter([AIMessage("The bakery made 216 dollars.")]))

    def summarise(state: DeepPruneState, config: RunnableConfig) -> dict[str, Any]:
        return {"messages": [writer.invoke(state["messages"], config)]}

    graph = StateGraph(DeepPruneState)
    graph.add_node("reason", create_deepprune_node(reasoner()))
    graph.add_node("summarise", summarise)
    graph.add_edge(START, "reason")
    graph.add_edge("reason", "summarise")

    chunks = stream_chunks(
        graph.compile(), {"messages": [bakery]}, ["messages"], asynchronous=asynchronous
    )
    by_node: dict[str, list[str]] = {}
    for _mode, (message, meta) in chunks:
        by_node.setdefault(meta["langgraph_node"], []).append(message.text)
    assert len(by_node["reason"]) == 1 and "216" in by_node["reason"][0]
    assert len(by_node["summarise"]) > 1  # token by token
    assert "".join(by_node["summarise"]) == "The bakery made 216 dollars."


class Conversation(TypedDict, total=False):
    chat: Annotated[list[AnyMessage], add_messages]
    run: dict[str, Any] | None


def test_state_keys_are_configurable(bakery: str, asynchronous: bool) -> None:
    node = create_deepprune_node(reasoner(), messages_key="chat", summary_key="run", name="think")
    assert node.get_name() == "think"
    graph = one_node_graph(node, Conversation)

    state = run_graph(graph, {"chat": [("user", bakery)]}, asynchronous=asynchronous)

    assert state["run"]["answer"] == "216"
    assert [m.type for m in state["chat"]] == ["human", "ai"]
    assert "messages" not in state and "deepprune" not in state


class PydanticChat(BaseModel):
    messages: Annotated[list[AnyMessage], add_messages]
    deepprune: RecordedSummary | None = None


def test_node_reads_a_pydantic_state(bakery: str, asynchronous: bool) -> None:
    """LangGraph hands a node of a pydantic-state graph the model instance: read by attribute."""
    graph = one_node_graph(create_deepprune_node(reasoner()), PydanticChat)

    state = run_graph(graph, {"messages": [bakery]}, asynchronous=asynchronous)

    assert state["deepprune"]["answer"] == "216"
    assert [m.type for m in state["messages"]] == ["human", "ai"]


def test_a_second_turn_sees_the_whole_conversation(bakery: str) -> None:
    """The reply is appended; the next question is asked with the earlier turns in the prompt."""
    graph = one_node_graph(create_deepprune_node(reasoner()))
    first = graph.invoke({"messages": [bakery]})
    # The replay backend picks the problem by the last user turn.
    question = load_demo_pool().by_id("demo-pencils").problem

    second = graph.invoke({"messages": [*first["messages"], HumanMessage(question)]})

    assert [m.type for m in second["messages"]] == ["human", "ai", "human", "ai"]
    assert second["deepprune"]["answer"] == "66"


def test_node_runs_outside_a_graph(bakery: str) -> None:
    """Called directly (no graph, so no stream writer) it still answers."""
    update = create_deepprune_node(reasoner()).invoke({"messages": [HumanMessage(bakery)]})
    assert update["deepprune"]["answer"] == "216"
    assert isinstance(update["messages"][0], AIMessage)


async def test_node_runs_outside_a_graph_async(bakery: str) -> None:
    update = await create_deepprune_node(reasoner()).ainvoke({"messages": [bakery]})
    assert update["deepprune"]["answer"] == "216"


def test_missing_messages_key_is_named() -> None:
    node = create_deepprune_node(reasoner(), messages_key="chat")
    with pytest.raises(KeyError, match=r"no 'chat' key.*messages_key"):
        node.invoke({"messages": ["hi"]})


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"messages_key": ""}, "messages_key"),
        ({"summary_key": None}, "summary_key"),
        ({"messages_key": "x", "summary_key": "x"}, "must differ"),
        ({"name": ""}, "name"),
        ({"on_error": "ignore"}, "on_error"),
    ],
)
def test_bad_keys_fail_at_construction(kwargs: dict[str, Any], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        create_deepprune_node(reasoner(), **kwargs)


def test_node_needs_a_deepprune_reasoner() -> None:
    plain = GenericFakeChatModel(messages=iter([AIMessage("hi")]))
    with pytest.raises(TypeError, match="DeepPruneReasoner"):
        create_deepprune_node(plain)  # type: ignore[arg-type]


# -- input forms -----------------------------------------------------------------------------------


def test_node_is_a_deepprune_node_and_its_summary_is_a_run_summary(bakery: str) -> None:
    node = create_deepprune_node(reasoner())
    assert isinstance(node, DeepPruneNode)
    update = node.invoke({"messages": [bakery]})
    # RunSummary types every key DeepPruneResult.summary() writes, and no other.
    assert set(update["deepprune"]) == set(RunSummary.__required_keys__)
    assert RecordedSummary.__optional_keys__ == {"error"}
    # The typed summary is part of the graph's schema (LangGraph builds it with pydantic).
    schema = one_node_graph(node).get_input_jsonschema()["$defs"]["RecordedSummary"]
    assert set(schema["properties"]) == set(RunSummary.__required_keys__) | {"error"}


def test_node_answers_a_message_list(bakery: str, asynchronous: bool) -> None:
    """The conversation itself as the input: the update is the same as for a state."""
    node = create_deepprune_node(reasoner(), messages_key="chat", summary_key="run")
    conversation = [HumanMessage(bakery)]

    update = call_node(node, conversation, asynchronous=asynchronous)

    (answer,) = update["chat"]
    assert isinstance(answer, AIMessage) and "\\boxed{216}" in answer.text
    assert update["run"] == answer.response_metadata["deepprune"]
    assert update["run"]["answer"] == "216"


# -- the stream writer -----------------------------------------------------------------------------


def test_node_hands_the_run_the_writer_it_is_given(bakery: str, asynchronous: bool) -> None:
    """Outside any graph (no runtime, no context to look a writer up in) the ``writer`` argument
    LangGraph fills in from its runtime is what the run writes to."""
    node = create_deepprune_node(reasoner())
    written: list[dict[str, Any]] = []

    update = call_node(
        node, {"messages": [bakery]}, asynchronous=asynchronous, writer=written.append
    )

    names = [chunk["event"] for chunk in written]
    assert set(names) <= EVENT_NAMES
    assert "deepprune.trace_pruned" in names and names[-1] == "deepprune.run_completed"
    completed = written[-1]["data"]["result"]
    assert completed["answer"] == update["deepprune"]["answer"] == "216"


def test_custom_stream_gets_the_runtime_writer_events(bakery: str, asynchronous: bool) -> None:
    """In a graph, the writer comes from the graph's runtime: each run's events, once, in order."""
    graph = one_node_graph(create_deepprune_node(reasoner()))

    chunks = stream_chunks(graph, {"messages": [bakery]}, ["custom"], asynchronous=asynchronous)

    names = [chunk["event"] for _mode, chunk in chunks]
    assert names.count("deepprune.run_completed") == 1 and names[-1] == "deepprune.run_completed"
    assert names.count("deepprune.vote") == 1
    started = [c["data"]["trace_id"] for _m, c in chunks if c["event"] == "deepprune.trace_started"]
    assert sorted(set(started)) == list(range(PRUNING.n_traces))


def test_a_hand_written_node_streams_events_through_with_stream_writer(
    bakery: str, asynchronous: bool
) -> None:
    """The reasoner never looks the graph's writer up itself: a hand-written node hands it over
    with ``with_stream_writer``, and without it the custom stream stays empty."""
    model = reasoner()

    def plain(state: DeepPruneState, config: RunnableConfig) -> dict[str, Any]:
        return {"messages": [model.invoke(state["messages"], config)]}

    def wired(
        state: DeepPruneState, config: RunnableConfig, writer: StreamWriter
    ) -> dict[str, Any]:
        return {"messages": [model.invoke(state["messages"], with_stream_writer(config, writer))]}

    async def awired(
        state: DeepPruneState, config: RunnableConfig, writer: StreamWriter
    ) -> dict[str, Any]:
        message = await model.ainvoke(state["messages"], with_stream_writer(config, writer))
        return {"messages": [message]}

    inputs = {"messages": [bakery]}
    unwired = stream_chunks(one_node_graph(plain), inputs, ["custom"], asynchronous=asynchronous)
    node = awired if asynchronous else wired
    chunks = stream_chunks(one_node_graph(node), inputs, ["custom"], asynchronous=asynchronous)

    assert unwired == []
    names = [chunk["event"] for _mode, chunk in chunks]
    assert "deepprune.trace_pruned" in names and names[-1] == "deepprune.run_completed"


# -- the error policy ------------------------------------------------------------------------------


def failing_reasoner() -> DeepPruneReasoner:
    """Trace 0 raises after 60 tokens: past the 40-token prefix, so clusters have formed."""
    backend = FailingBackend(
        ReplayBackend(load_demo_pool(), yield_every=1), trace_index=0, after=60
    )
    return DeepPruneReasoner(backend=backend, judge="lexical", pruning=PRUNING)


def test_a_failed_run_raises_by_default(bakery: str, asynchronous: bool) -> None:
    graph = one_node_graph(create_deepprune_node(failing_reasoner()))

    with pytest.raises(GenerationError, match="engine died") as raised:
        run_graph(graph, {"messages": [bakery]}, asynchronous=asynchronous)

    assert raised.value.partial_result is not None
    assert raised.value.partial_result.totals.decoded_tokens > 0


def test_record_writes_the_partial_summary_and_the_graph_routes_on_it(
    bakery: str, asynchronous: bool
) -> None:
    """``on_error="record"``: no answer message, the partial run's summary with the error, and a
    graph that branches on it."""

    def apologise(state: DeepPruneState) -> dict[str, Any]:
        return {"messages": [AIMessage("Sorry, the reasoning engine failed.")]}

    graph = StateGraph(DeepPruneState)
    graph.add_node("reason", create_deepprune_node(failing_reasoner(), on_error="record"))
    graph.add_node("apologise", apologise)
    graph.add_edge(START, "reason")
    graph.add_conditional_edges(
        "reason", lambda state: "apologise" if state["deepprune"].get("error") else END
    )

    state = run_graph(graph.compile(), {"messages": [bakery]}, asynchronous=asynchronous)

    summary = state["deepprune"]
    assert summary["error"].startswith("GenerationError: trace 0 failed mid-stream")
    assert "engine died" in summary["error"]
    # The partial run up to the failure is kept, not lost.
    assert sum(summary["trace_status"].values()) == PRUNING.n_traces
    assert summary["decoded_tokens"] > 0 and summary["judge_calls"] >= 1
    assert sum(summary["clusters"]) >= 1
    assert summary["answer"] is None and summary["fallback"] == "error"
    assert set(summary) == set(RunSummary.__required_keys__) | {"error"}
    # No answer was appended: only the question and the graph's own reply.
    assert [m.text for m in state["messages"]] == [bakery, "Sorry, the reasoning engine failed."]


def test_record_still_raises_errors_that_are_not_run_failures() -> None:
    node = create_deepprune_node(failing_reasoner(), on_error="record", messages_key="chat")
    with pytest.raises(KeyError, match="no 'chat' key"):
        node.invoke({"messages": ["hi"]})
