"""Pruning decisions as LangChain callbacks: typed handler, custom events, judge child runs.

Every driver event is dispatched as a custom event (``deepprune.<event>``) under the chat model's
run id, and every judge call is a child chain run (``deepprune_judge``, tagged ``nostream``) of the
model run. That holds on every path: invoke, ainvoke, batch, a bare ``stream``/``astream`` (which
the model runs on the generate path, since LangChain's own streaming hands ``_astream`` no run
manager), and ``astream_events`` over the bare model or over a chain or graph that calls it.
"""

from __future__ import annotations

import operator
from collections import Counter
from typing import Annotated, Any, TypeVar
from uuid import UUID

import pytest
from deepprune_langgraph import with_stream_writer
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import AIMessageChunk, AnyMessage
from langchain_core.runnables import RunnableConfig, RunnableLambda
from langchain_core.tracers.context import collect_runs
from langgraph.graph import END, START, StateGraph
from langgraph.types import StreamWriter
from typing_extensions import TypedDict

from deepprune_lc.backends.replay import ReplayBackend
from deepprune_lc.core.config import PruningConfig, TokensPrefix
from deepprune_lc.core.events import (
    DeepPruneEvent,
    JudgeScored,
    PrefixReached,
    RunCompleted,
    TraceAborted,
    TraceClustered,
    TraceFinished,
    TraceParked,
    TracePruned,
    TraceResumed,
    TraceStarted,
    VoteCounted,
)
from deepprune_lc.demo import load_demo_pool
from deepprune_lc.langchain.callbacks import (
    EVENT_TYPES_BY_NAME,
    NOSTREAM_TAG,
    DeepPruneCallbackHandler,
)
from deepprune_lc.langchain.chat_model import DeepPruneReasoner

E = TypeVar("E", bound=DeepPruneEvent)

POOL = load_demo_pool()
PRUNING = PruningConfig(n_traces=8, prefix=TokensPrefix(k=40), finalists=3)
BAKERY = POOL.by_id("demo-bakery").problem


def make_model(**kwargs: Any) -> DeepPruneReasoner:
    kwargs.setdefault("judge", "lexical")
    return DeepPruneReasoner(backend=ReplayBackend(POOL, yield_every=1), pruning=PRUNING, **kwargs)


class Recorder(DeepPruneCallbackHandler):
    """Records every typed callback, plus the ids of chat model and chain runs it sees start."""

    def __init__(self) -> None:
        self.events: list[tuple[str, DeepPruneEvent, UUID]] = []
        self.model_runs: list[UUID] = []
        self.chains: list[dict[str, Any]] = []

    def _record(self, event: DeepPruneEvent, run_id: UUID) -> None:
        self.events.append((event.name, event, run_id))

    on_trace_started = _record
    on_prefix_reached = _record
    on_judge_scored = _record
    on_trace_clustered = _record
    on_trace_parked = _record
    on_trace_pruned = _record
    on_trace_resumed = _record
    on_trace_aborted = _record
    on_trace_finished = _record
    on_vote = _record
    on_run_completed = _record

    def on_chat_model_start(
        self, serialized: Any, messages: Any, *, run_id: UUID, **kw: Any
    ) -> None:
        self.model_runs.append(run_id)

    def on_chain_start(
        self,
        serialized: Any,
        inputs: Any,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        self.chains.append(
            {
                "name": kwargs.get("name"),
                "run_id": run_id,
                "parent_run_id": parent_run_id,
                "tags": tags or [],
                "inputs": inputs,
            }
        )

    def of(self, kind: type[E]) -> list[E]:
        return [event for _, event, _ in self.events if isinstance(event, kind)]


def check_typed_events(recorder: Recorder, answer: str) -> None:
    """The events of one pruning run on a demo problem, as a typed handler receives them."""
    (model_run,) = recorder.model_runs
    assert recorder.events
    assert {run_id for _, _, run_id in recorder.events} == {model_run}
    # One driver run: every event carries the same DeepPrune run id, in time order.
    assert len({event.run_id for _, event, _ in recorder.events}) == 1
    times = [event.elapsed_s for _, event, _ in recorder.events]
    assert times == sorted(times)

    (completed,) = recorder.of(RunCompleted)
    assert recorder.events[-1][1] is completed
    result = completed.result
    assert result.answer == answer

    started = recorder.of(TraceStarted)
    assert sorted(e.trace_id for e in started if not e.resumed) == list(range(PRUNING.n_traces))
    assert len(recorder.of(PrefixReached)) == PRUNING.n_traces

    clustered = recorder.of(TraceClustered)
    assert {(e.trace_id, e.cluster_id) for e in clustered} == {
        (member, c.cluster_id) for c in result.clusters for member in c.members
    }
    assert sum(e.founded for e in clustered) == len(result.clusters)

    parked = recorder.of(TraceParked)
    assert parked, "the demo configuration prunes"
    resumed = recorder.of(TraceResumed)
    assert {e.trace_id for e in resumed} <= {e.trace_id for e in parked}
    final_status = {t.trace_id: t.status for t in result.traces}
    for event in parked:
        assert final_status[event.trace_id] in {"pruned", "aborted", "finished"}
    # One terminal event per trace, each with its final token count.
    pruned = recorder.of(TracePruned)
    assert {e.trace_id for e in pruned} == {t for t, s in final_status.items() if s == "pruned"}
    terminal = [*pruned, *recorder.of(TraceAborted), *recorder.of(TraceFinished)]
    assert sorted(e.trace_id for e in terminal) == sorted(final_status)
    assert sum(e.tokens_decoded for e in terminal) == result.totals.decoded_tokens
    assert {e.trace_id for e in recorder.of(TraceAborted)} == {
        t for t, s in final_status.items() if s == "aborted"
    }
    finished = recorder.of(TraceFinished)
    assert {e.trace_id for e in finished} == {t for t, s in final_status.items() if s == "finished"}
    assert len(recorder.of(JudgeScored)) == result.totals.judge_calls

    (vote,) = recorder.of(VoteCounted)
    assert vote.answer == answer
    assert vote.votes and vote.votes[0]["answer"] == answer


def check_judge_runs(chains: list[dict[str, Any]], model_run: UUID, judge_calls: int) -> None:
    judge_runs = [c for c in chains if c["name"] == "deepprune_judge"]
    assert len(judge_runs) == judge_calls >= 1
    for run in judge_runs:
        assert run["parent_run_id"] == model_run
        assert NOSTREAM_TAG in run["tags"]
        assert run["inputs"]["judge"] == "lexical"
        assert run["inputs"]["pairs"]


# -- typed handler ---------------------------------------------------------------------------------


def test_typed_handler_receives_events_of_invoke() -> None:
    recorder = Recorder()
    message = make_model().invoke(BAKERY, {"callbacks": [recorder]})
    check_typed_events(recorder, "216")
    check_judge_runs(
        recorder.chains,
        recorder.model_runs[0],
        recorder.of(RunCompleted)[0].result.totals.judge_calls,
    )
    assert message.response_metadata["deepprune"] == recorder.of(RunCompleted)[0].result.summary()


async def test_typed_handler_receives_events_of_ainvoke() -> None:
    recorder = Recorder()
    await make_model().ainvoke(BAKERY, {"callbacks": [recorder]})
    check_typed_events(recorder, "216")
    (completed,) = recorder.of(RunCompleted)
    check_judge_runs(recorder.chains, recorder.model_runs[0], completed.result.totals.judge_calls)


async def test_typed_handler_receives_events_of_each_abatch_run() -> None:
    recorder = Recorder()
    questions: list[Any] = [p.problem for p in POOL]
    await make_model().abatch(questions, {"callbacks": [recorder]})
    assert len(recorder.model_runs) == len(questions)
    completed = {
        run_id: e.result.answer or ""
        for _, e, run_id in recorder.events
        if isinstance(e, RunCompleted)
    }
    assert set(completed) == set(recorder.model_runs)
    assert sorted(completed.values()) == sorted(p.answer or "" for p in POOL)


def test_handler_given_to_the_constructor_receives_events() -> None:
    recorder = Recorder()
    make_model(callbacks=[recorder]).invoke(BAKERY)
    check_typed_events(recorder, "216")
    # Judge runs are children of the model run: they go to inheritable (config) handlers only, as
    # LangChain does for any child run.
    assert recorder.chains == []


def test_plain_handler_sees_named_custom_events() -> None:
    seen: list[tuple[str, Any, UUID]] = []

    class Plain(BaseCallbackHandler):
        def on_custom_event(self, name: str, data: Any, *, run_id: UUID, **kwargs: Any) -> None:
            seen.append((name, data, run_id))

    make_model().invoke(BAKERY, {"callbacks": [Plain()]})
    names = Counter(name for name, _, _ in seen)
    assert set(names) <= set(EVENT_TYPES_BY_NAME)
    assert {"deepprune.trace_pruned", "deepprune.trace_clustered", "deepprune.vote"} <= set(names)
    assert names["deepprune.trace_started"] >= PRUNING.n_traces
    assert names["deepprune.run_completed"] == 1
    # Data is the event's JSON payload, which the typed event model reads back.
    for name, data, _ in seen:
        assert isinstance(data, dict)
        assert EVENT_TYPES_BY_NAME[name].model_validate(data).payload() == data


def test_judge_calls_are_child_runs_of_the_model_run() -> None:
    with collect_runs() as collector:
        message = make_model().invoke(BAKERY)
    (llm_run,) = collector.traced_runs
    assert llm_run.run_type == "llm" and llm_run.name == "DeepPruneReasoner"
    judge_runs = [r for r in llm_run.child_runs if r.name == "deepprune_judge"]
    assert len(judge_runs) == message.response_metadata["deepprune"]["judge_calls"] >= 1
    for run in judge_runs:
        assert run.run_type == "chain"
        assert run.parent_run_id == llm_run.id
        assert NOSTREAM_TAG in (run.tags or [])
        assert run.outputs is not None
        assert len(run.outputs["probabilities"]) == len(run.inputs["pairs"])
        assert run.end_time is not None and run.error is None


# -- astream_events and streaming handlers -------------------------------------------------------------


async def _events_over_chain(chain: Any) -> list[dict[str, Any]]:
    return [event async for event in chain.astream_events(BAKERY, version="v2")]


@pytest.mark.parametrize("sync_body", [False, True])
async def test_astream_events_over_a_chain_ties_events_to_the_model_run(sync_body: bool) -> None:
    model = make_model()

    async def call_async(question: str) -> Any:
        return await model.ainvoke(question)

    def call_sync(question: str) -> Any:
        return model.invoke(question)

    chain = RunnableLambda(call_sync) if sync_body else RunnableLambda(call_async)
    events = await _events_over_chain(chain)

    (start,) = [e for e in events if e["event"] == "on_chat_model_start"]
    model_run = start["run_id"]
    custom = [e for e in events if e["event"] == "on_custom_event"]
    assert custom
    assert {e["name"] for e in custom} <= set(EVENT_TYPES_BY_NAME)
    assert {"deepprune.trace_pruned", "deepprune.vote", "deepprune.run_completed"} <= {
        e["name"] for e in custom
    }
    assert {e["run_id"] for e in custom} == {model_run}

    judge_starts = [
        e for e in events if e["event"] == "on_chain_start" and e["name"] == "deepprune_judge"
    ]
    assert judge_starts
    for event in judge_starts:
        assert event["parent_ids"][-1] == model_run
        assert NOSTREAM_TAG in event["tags"]

    # The answer still reaches the stream, once, as the model's single chunk.
    (stream_event,) = [e for e in events if e["event"] == "on_chat_model_stream"]
    chunk = stream_event["data"]["chunk"]
    assert isinstance(chunk, AIMessageChunk)
    assert "\\boxed{216}" in chunk.text
    (end,) = [e for e in events if e["event"] == "on_chat_model_end"]
    assert end["data"]["output"].text == chunk.text
    assert end["data"]["output"].id == chunk.id


@pytest.mark.parametrize("sync", [False, True])
async def test_bare_stream_ties_events_and_judge_runs_to_the_model_run(sync: bool) -> None:
    recorder = Recorder()
    config: Any = {"callbacks": [recorder]}
    model = make_model()
    if sync:
        chunks = list(model.stream(BAKERY, config))
    else:
        chunks = [c async for c in model.astream(BAKERY, config)]
    (chunk,) = chunks
    assert "\\boxed{216}" in chunk.text
    assert chunk.chunk_position == "last" and chunk.usage_metadata is not None
    (model_run,) = recorder.model_runs
    names = {name for name, _, _ in recorder.events}
    assert {"deepprune.trace_pruned", "deepprune.vote", "deepprune.run_completed"} <= names
    assert {run_id for _, _, run_id in recorder.events} == {model_run}
    judges = [c for c in recorder.chains if c["name"] == "deepprune_judge"]
    assert judges and {c["parent_run_id"] for c in judges} == {model_run}


async def test_astream_events_on_the_bare_model_ties_events_and_streams_the_answer_once() -> None:
    events = [e async for e in make_model().astream_events(BAKERY, version="v2")]
    (start,) = [e for e in events if e["event"] == "on_chat_model_start"]
    custom = [e for e in events if e["event"] == "on_custom_event"]
    assert {"deepprune.trace_pruned", "deepprune.run_completed"} <= {e["name"] for e in custom}
    assert {e["run_id"] for e in custom} == {start["run_id"]}
    (stream_event,) = [e for e in events if e["event"] == "on_chat_model_stream"]
    (end,) = [e for e in events if e["event"] == "on_chat_model_end"]
    assert end["data"]["output"].text == stream_event["data"]["chunk"].text
    assert "\\boxed{216}" in end["data"]["output"].text


# -- LangGraph ----------------------------------------------------------------------------------------
# Hand-written nodes that call the model themselves. The reasoner's events reach the graph's custom
# stream through the handler ``with_stream_writer`` adds (docs/langgraph.md); the model never looks
# the graph's writer up itself.


class State(TypedDict):
    messages: Annotated[list[AnyMessage], operator.add]


def test_graph_streams_events_and_the_answer_once() -> None:
    model = make_model()

    def reason(state: State, config: RunnableConfig, writer: StreamWriter) -> dict[str, Any]:
        return {"messages": [model.invoke(state["messages"], with_stream_writer(config, writer))]}

    builder = StateGraph(State)
    builder.add_node("reason", reason)
    builder.add_edge(START, "reason")
    builder.add_edge("reason", END)
    graph = builder.compile()

    recorder = Recorder()
    state: Any = {"messages": [("user", BAKERY)]}
    parts: list[Any] = list(
        graph.stream(state, {"callbacks": [recorder]}, stream_mode=["messages", "custom"])
    )
    custom = [data for mode, data in parts if mode == "custom"]
    assert {item["event"] for item in custom} >= {"deepprune.trace_pruned", "deepprune.vote"}
    messages = [data[0] for mode, data in parts if mode == "messages"]
    assert len(messages) == 1 and "\\boxed{216}" in messages[0].text
    # The "messages" stream mode attaches a streaming handler; callbacks still see the run's events.
    check_typed_events(recorder, "216")


@pytest.mark.parametrize("asynchronous", [False, True], ids=["stream", "astream"])
async def test_a_node_that_streams_the_model_reports_events_and_the_answer_once(
    asynchronous: bool,
) -> None:
    model = make_model()

    async def reason_async(
        state: State, config: RunnableConfig, writer: StreamWriter
    ) -> dict[str, Any]:
        call_config = with_stream_writer(config, writer)
        chunks = [chunk async for chunk in model.astream(state["messages"], call_config)]
        return {"messages": chunks}

    def reason_sync(state: State, config: RunnableConfig, writer: StreamWriter) -> dict[str, Any]:
        return {
            "messages": list(model.stream(state["messages"], with_stream_writer(config, writer)))
        }

    builder = StateGraph(State)
    builder.add_node("reason", reason_async if asynchronous else reason_sync)
    builder.add_edge(START, "reason")
    graph = builder.compile()

    recorder = Recorder()
    state: Any = {"messages": [("user", BAKERY)]}
    config: Any = {"callbacks": [recorder]}
    parts = [p async for p in graph.astream(state, config, stream_mode=["messages", "custom"])]
    custom = [data for mode, data in parts if mode == "custom"]
    assert {item["event"] for item in custom} >= {"deepprune.trace_pruned", "deepprune.vote"}
    messages = [data[0] for mode, data in parts if mode == "messages"]
    assert len(messages) == 1 and "\\boxed{216}" in messages[0].text
    check_typed_events(recorder, "216")


class ModelCallingJudge:
    """A judge that asks a LangChain chat model (as a model-based judge would), with no config."""

    def __init__(self) -> None:
        from langchain_core.language_models.fake_chat_models import FakeListChatModel

        self.model = FakeListChatModel(responses=["same"])

    async def score(self, pairs: Any) -> Any:
        from deepprune_lc.core.ports import JudgeScores

        await self.model.ainvoke("Do these two prefixes reach the same answer?")
        return JudgeScores([0.9] * len(pairs))


def test_judge_model_runs_nest_under_the_judge_run_and_are_nostream() -> None:
    model = make_model(judge=ModelCallingJudge())
    with collect_runs() as collector:
        model.invoke(BAKERY)
    runs = {run.id: run for root in collector.traced_runs for run in _walk(root)}
    judge_models = [r for r in runs.values() if r.name == "FakeListChatModel"]
    assert judge_models
    for run in judge_models:
        parent = runs[run.parent_run_id]
        assert parent.name == "deepprune_judge"
        assert NOSTREAM_TAG in (run.tags or [])


def _walk(run: Any) -> list[Any]:
    return [run, *(child for c in run.child_runs for child in _walk(c))]
