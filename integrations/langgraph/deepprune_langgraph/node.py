"""``DeepPruneNode``: a ``DeepPruneReasoner`` as a LangGraph node.

A chat model is not a node over a messages state: something has to read the conversation from the
state, pass the node's ``config`` on (callbacks, tags, tracing), hand the run the graph's stream
writer, and write the answer and the run summary back. ``DeepPruneNode`` is that something, with a
sync and an async body (LangGraph calls the one matching ``invoke``/``ainvoke``), built like
LangGraph's own ``ToolNode``.

Streams inside a graph:

* ``stream_mode="custom"``: every DeepPrune decision as ``{"event": name, "data": payload}``. The
  reasoner dispatches each decision as a LangChain custom event on its run; LangGraph's custom
  stream does not receive callback events, so the node takes the graph's stream writer from the
  runtime (LangGraph injects it as the body's ``writer`` argument) and adds a
  ``StreamWriterCallbackHandler`` over it to the call's config. Nothing is looked up from context
  variables, so this holds in sync and async graphs, on the background loop thread the reasoner's
  sync path runs on, and on Python 3.10, where LangGraph cannot propagate the config into async
  nodes.
* ``stream_mode="messages"``: the reasoner's final answer only. The reasoner tags its judge's child
  runs ``nostream`` itself, so tokens of a judge that calls a chat model stay out of that stream.

A hand-written node that calls the reasoner does the same in one line::

    def reason(state: MessagesState, config: RunnableConfig, writer: StreamWriter) -> dict:
        return {"messages": [model.invoke(state["messages"], with_stream_writer(config, writer))]}
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal, cast, get_args
from uuid import UUID, uuid4

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, convert_to_messages
from langchain_core.runnables import RunnableConfig
from langchain_core.runnables.config import merge_configs

# LangGraph's base for its own prebuilt nodes (ToolNode, ValidationNode): a runnable with sync and
# async bodies whose ``config``/``writer``/``runtime`` parameters LangGraph fills in. It is not
# re-exported under a public name; langgraph<2 is pinned, and the node's tests cover the parts
# used here (body signatures, ``writer`` injection in and outside a graph).
from langgraph._internal._runnable import RunnableCallable
from langgraph.types import StreamWriter

from deepprune_langgraph.state import DeepPruneRun, RecordedSummary
from deepprune_lc import DeepPruneError, DeepPruneReasoner, RunSummary

#: What the node does when the run fails with a ``DeepPruneError``: ``"raise"`` it (the graph run
#: fails), or ``"record"`` the partial run's summary with the error under ``summary_key``.
OnError = Literal["raise", "record"]
_EVENT_PREFIX = "deepprune."


class StreamWriterCallbackHandler(BaseCallbackHandler):
    """Writes a DeepPrune run's events to a LangGraph stream writer (``stream_mode="custom"``).

    The reasoner dispatches every decision as a LangChain custom event on its run; this handler
    writes each one as ``{"event": "deepprune.trace_pruned", "data": {...}}`` to ``writer``, the
    chunk shape of the graph's custom stream. Other custom events are left alone. Add it to the
    config of a reasoner call (``with_stream_writer`` does) inside a node whose body takes
    ``writer: StreamWriter`` (or ``runtime: Runtime`` and uses ``runtime.stream_writer``).
    """

    #: Write in the dispatching thread, in order (never in an executor thread).
    run_inline = True

    def __init__(self, writer: StreamWriter) -> None:
        self.writer = writer

    def on_custom_event(
        self,
        name: str,
        data: Any,
        *,
        run_id: UUID,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if name.startswith(_EVENT_PREFIX):
            self.writer({"event": name, "data": data})


def with_stream_writer(config: RunnableConfig | None, writer: StreamWriter) -> RunnableConfig:
    """``config`` with a ``StreamWriterCallbackHandler(writer)`` added to its callbacks.

    For a hand-written node that calls the reasoner: pass the node's own ``config`` (so the graph's
    callbacks, tags and tracing still see the call) and the ``writer`` LangGraph gave the node.
    The handler is added next to the config's callbacks, whether they are a list or a manager.
    """
    return merge_configs(config, {"callbacks": [StreamWriterCallbackHandler(writer)]})


def read_messages(state: object, messages_key: str) -> list[BaseMessage]:
    """The conversation under ``messages_key`` of a state (mapping or attributes), as messages."""
    if isinstance(state, Mapping):
        found = messages_key in state
        messages = state.get(messages_key)
    else:
        found = hasattr(state, messages_key)
        messages = getattr(state, messages_key, None)
    if not found:
        keys = sorted(state) if isinstance(state, Mapping) else type(state).__name__
        raise KeyError(
            f"the graph state has no {messages_key!r} key (it has {keys}); pass "
            "messages_key=... to name the key that holds the conversation"
        )
    if isinstance(messages, BaseMessage | str | dict | tuple):
        messages = [messages]
    if not isinstance(messages, Sequence):
        raise TypeError(f"state[{messages_key!r}]: expected a list of messages")
    return convert_to_messages(messages)


def node_messages(input: object, messages_key: str) -> list[BaseMessage]:
    """The conversation a node answers: ``input`` itself if it is a list, else its state key."""
    if isinstance(input, list):
        return convert_to_messages(input)
    return read_messages(input, messages_key)


def invoke_model(
    model: BaseChatModel,
    messages: list[BaseMessage],
    config: RunnableConfig,
    writer: StreamWriter,
) -> AIMessage:
    return _as_ai_message(model.invoke(messages, with_stream_writer(config, writer)))


async def ainvoke_model(
    model: BaseChatModel,
    messages: list[BaseMessage],
    config: RunnableConfig,
    writer: StreamWriter,
) -> AIMessage:
    return _as_ai_message(await model.ainvoke(messages, with_stream_writer(config, writer)))


def _as_ai_message(message: BaseMessage) -> AIMessage:
    if not isinstance(message, AIMessage):  # pragma: no cover - chat models return AIMessages
        raise TypeError(f"expected the model to return an AIMessage, got {type(message).__name__}")
    return message


def run_summary(message: AIMessage) -> RunSummary | None:
    """``DeepPruneResult.summary()`` of the run behind a reasoner's message (None for other models)."""
    summary = message.response_metadata.get("deepprune")
    return cast(RunSummary, dict(summary)) if isinstance(summary, Mapping) else None


def _check_key(name: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name}: expected a non-empty state key, got {value!r}")
    return value


def _question(messages: Sequence[BaseMessage]) -> str | None:
    """The text of the conversation's last user message: the question a run answered."""
    for message in reversed(messages):
        if isinstance(message, HumanMessage):
            return message.text
    return None


class DeepPruneNode(RunnableCallable):
    """A LangGraph node that answers a conversation with a ``DeepPruneReasoner``.

    Input: a graph state holding the conversation under ``messages_key`` (a mapping such as
    ``DeepPruneState``, or an object with that attribute, such as a pydantic state), or the
    conversation itself as a list of messages. Output: the state update
    ``{messages_key: [answer], summary_key: summary, runs_key: [run]}``, the reasoner's
    ``AIMessage`` (appended by an ``add_messages`` reducer), ``DeepPruneResult.summary()`` of its
    run, and a ``DeepPruneRun`` (question, answer message id, summary) for the run log.

    Several DeepPrune runs may end in one graph step (parallel branches; ``Send`` fan-out of many
    questions into one node): ``DeepPruneState`` gives ``summary_key`` and ``runs_key`` reducers,
    so ``state["deepprune"]`` is the latest summary and ``state["deepprune_runs"]`` has them all,
    each naming its question and its answer's message id. ``runs_key=None`` writes no log.

    ``on_error`` decides what a failed run (a ``DeepPruneError``: the backend or, with
    ``on_judge_error="raise"``, the judge failed) does to the graph:

    * ``"raise"`` (default): the error propagates and the graph run fails, as any node error does;
      the partial run is in the error's ``partial_result``.
    * ``"record"``: the node returns ``{summary_key: {**partial_summary, "error": "..."}}`` and no
      message, so the conversation is left as it was and the graph can route on
      ``state[summary_key].get("error")`` (retry, a fallback model, an apology). Other errors (a
      missing state key, bad input) still raise.

    The node's ``config`` is passed on to the model, so callbacks (``DeepPruneCallbackHandler``),
    tags, metadata and LangSmith tracing see the run under the node; LangGraph's stream writer is
    passed on through a ``StreamWriterCallbackHandler`` (see the module docstring).
    """

    def __init__(
        self,
        model: DeepPruneReasoner,
        *,
        messages_key: str = "messages",
        summary_key: str = "deepprune",
        name: str = "deepprune",
        on_error: OnError = "raise",
        runs_key: str | None = "deepprune_runs",
    ) -> None:
        if not isinstance(model, DeepPruneReasoner):
            raise TypeError(
                f"model: expected a DeepPruneReasoner, got {type(model).__name__}; for another "
                "chat model write a plain node that calls model.invoke(state['messages'], config)"
            )
        messages_key = _check_key("messages_key", messages_key)
        summary_key = _check_key("summary_key", summary_key)
        if messages_key == summary_key:
            raise ValueError(f"messages_key and summary_key must differ, both are {messages_key!r}")
        if runs_key is not None:
            runs_key = _check_key("runs_key", runs_key)
            if runs_key in (messages_key, summary_key):
                raise ValueError(
                    f"runs_key must differ from messages_key and summary_key, got {runs_key!r}"
                )
        if on_error not in get_args(OnError):
            raise ValueError(f"on_error: expected one of {get_args(OnError)}, got {on_error!r}")
        # trace=False, as for LangGraph's own nodes: in a graph the node's task is the chain run,
        # and the model's run nests directly under it.
        super().__init__(
            self._answer, self._aanswer, name=_check_key("name", name), trace=False, recurse=False
        )
        self.model = model
        self.messages_key = messages_key
        self.summary_key = summary_key
        self.runs_key = runs_key
        self.on_error: OnError = on_error

    def _answer(
        self, input: object, config: RunnableConfig, writer: StreamWriter
    ) -> dict[str, Any]:
        messages = node_messages(input, self.messages_key)
        try:
            message = invoke_model(self.model, messages, config, writer)
        except DeepPruneError as error:
            return self._failed(error, messages, config)
        return self._answered(message, messages, config)

    async def _aanswer(
        self, input: object, config: RunnableConfig, writer: StreamWriter
    ) -> dict[str, Any]:
        messages = node_messages(input, self.messages_key)
        try:
            message = await ainvoke_model(self.model, messages, config, writer)
        except DeepPruneError as error:
            return self._failed(error, messages, config)
        return self._answered(message, messages, config)

    def _answered(
        self, message: AIMessage, messages: list[BaseMessage], config: RunnableConfig
    ) -> dict[str, Any]:
        if message.id is None:
            # The run log names the answer by id; add_messages would give it one only later.
            message = message.model_copy(update={"id": str(uuid4())})
        summary = run_summary(message)
        update: dict[str, Any] = {self.messages_key: [message], self.summary_key: summary}
        if self.runs_key is not None and summary is not None:
            recorded = cast(RecordedSummary, summary)  # a RunSummary without an error
            update[self.runs_key] = [self._run(config, messages, message.id, recorded)]
        return update

    def _failed(
        self, error: DeepPruneError, messages: list[BaseMessage], config: RunnableConfig
    ) -> dict[str, Any]:
        """The ``on_error`` policy. Without a partial result there is nothing to record: raise."""
        partial = error.partial_result
        if self.on_error == "raise" or partial is None:
            raise error
        recorded: RecordedSummary = {
            **partial.summary(),
            "error": f"{type(error).__name__}: {error}",
        }
        update: dict[str, Any] = {self.summary_key: recorded}
        if self.runs_key is not None:
            update[self.runs_key] = [self._run(config, messages, None, recorded)]
        return update

    def _run(
        self,
        config: RunnableConfig,
        messages: list[BaseMessage],
        message_id: str | None,
        summary: RecordedSummary,
    ) -> DeepPruneRun:
        """The run-log entry; ``node`` is the graph's name for the node (outside a graph, the
        runnable's ``name``), which is what tells two parallel DeepPrune nodes apart."""
        node = (config.get("metadata") or {}).get("langgraph_node")
        return DeepPruneRun(
            node=node if isinstance(node, str) else (self.name or "deepprune"),
            question=_question(messages),
            message_id=message_id,
            summary=summary,
        )


def create_deepprune_node(
    model: DeepPruneReasoner,
    *,
    messages_key: str = "messages",
    summary_key: str = "deepprune",
    name: str = "deepprune",
    on_error: OnError = "raise",
    runs_key: str | None = "deepprune_runs",
) -> DeepPruneNode:
    """A LangGraph node that answers the conversation in ``state[messages_key]`` with DeepPrune.

    The node returns ``{messages_key: [answer], summary_key: summary, runs_key: [run]}``: the
    reasoner's ``AIMessage`` (appended by an ``add_messages`` reducer), ``DeepPruneResult.summary()``
    of its run (answer, votes, clusters, decoded tokens, token savings, ...) and a ``DeepPruneRun``
    for the run log (the question, the answer's message id, the summary). Use it with
    ``DeepPruneState`` or any state with those keys (a state without ``runs_key`` simply drops
    it)::

        graph = StateGraph(DeepPruneState)
        graph.add_node("reason", create_deepprune_node(model))

    With ``DeepPruneState``'s reducers, DeepPrune nodes run in parallel branches and under ``Send``
    fan-out (``[Send("reason", {"messages": [q]}) for q in questions]``): ``state["deepprune"]`` is
    the latest summary, ``state["deepprune_runs"]`` every run with its question.

    Pruning decisions stream as ``stream_mode="custom"`` chunks
    ``{"event": "deepprune.trace_pruned", "data": {...}}``. ``on_error="record"`` writes a failed
    run's partial summary and the error into ``state[summary_key]`` instead of failing the graph
    run. See ``DeepPruneNode``.
    """
    return DeepPruneNode(
        model,
        messages_key=messages_key,
        summary_key=summary_key,
        name=name,
        on_error=on_error,
        runs_key=runs_key,
    )


__all__ = [
    "DeepPruneNode",
    "OnError",
    "StreamWriterCallbackHandler",
    "create_deepprune_node",
    "with_stream_writer",
]
