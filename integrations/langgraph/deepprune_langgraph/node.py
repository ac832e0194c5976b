"""``create_deepprune_node``: a ``DeepPruneReasoner`` as a LangGraph node.

A chat model is not a node over a messages state: something has to read the conversation from the
state, pass the node's ``config`` on (callbacks, tags, the stream writer), and write the answer and
the run summary back. This module is that something, in a sync and an async twin (LangGraph calls
the one matching ``invoke``/``ainvoke``), as LangGraph's ``ToolNode`` does for tools.

Streams inside a graph:

* ``stream_mode="custom"``: every DeepPrune decision as ``{"event": name, "data": payload}``. The
  reasoner writes these itself through ``langgraph.config.get_stream_writer()``; the node runs the
  model with the node's config installed as the current runnable config, so the writer is found in
  sync and async execution alike (also on Python 3.10, where LangGraph cannot propagate the config
  into async nodes on its own).
* ``stream_mode="messages"``: the reasoner's final answer only. Model calls that the reasoner's judge
  or backend make *without* an explicit config inherit a config tagged ``nostream``, so their tokens
  stay out of the graph's messages stream (the reasoner itself is called with the node's own config,
  untagged).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, convert_to_messages
from langchain_core.runnables import RunnableConfig, RunnableLambda
from langchain_core.runnables.config import var_child_runnable_config
from langgraph.constants import TAG_NOSTREAM

from deepprune_lc import DeepPruneReasoner


def _check_key(name: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name}: expected a non-empty state key, got {value!r}")
    return value


def read_messages(state: Mapping[str, Any], messages_key: str) -> list[BaseMessage]:
    """The conversation under ``messages_key``, as LangChain messages."""
    try:
        messages = state[messages_key]
    except (KeyError, TypeError):
        keys = sorted(state) if isinstance(state, Mapping) else type(state).__name__
        raise KeyError(
            f"the graph state has no {messages_key!r} key (it has {keys}); pass "
            "messages_key=... to name the key that holds the conversation"
        ) from None
    if isinstance(messages, BaseMessage | str | dict | tuple):
        messages = [messages]
    if not isinstance(messages, Sequence):
        raise TypeError(f"state[{messages_key!r}]: expected a list of messages")
    return convert_to_messages(messages)


@contextmanager
def node_call_context(config: RunnableConfig) -> Iterator[RunnableConfig]:
    """Install the node's config for everything the model does, and return the config to call it with.

    Inside the block, code that looks up the current runnable config (``get_stream_writer``, a
    LangChain model called without ``config``) sees the node's config with the ``nostream`` tag
    added: the reasoner finds the graph's stream writer, and model calls made by its judge or backend
    are kept out of ``stream_mode="messages"``. The yielded config (the node's own, without that
    tag) is the one the reasoner itself is called with, so its answer is streamed.
    """
    tags = list(config.get("tags") or [])
    implicit: RunnableConfig = {**config, "tags": [*tags, TAG_NOSTREAM]}
    token = var_child_runnable_config.set(implicit)
    try:
        yield {**config, "tags": tags}
    finally:
        var_child_runnable_config.reset(token)


def invoke_model(
    model: BaseChatModel, messages: list[BaseMessage], config: RunnableConfig
) -> AIMessage:
    with node_call_context(config) as call_config:
        message = model.invoke(messages, call_config)
    return _as_ai_message(message)


async def ainvoke_model(
    model: BaseChatModel, messages: list[BaseMessage], config: RunnableConfig
) -> AIMessage:
    with node_call_context(config) as call_config:
        message = await model.ainvoke(messages, call_config)
    return _as_ai_message(message)


def _as_ai_message(message: BaseMessage) -> AIMessage:
    if not isinstance(message, AIMessage):  # pragma: no cover - chat models return AIMessages
        raise TypeError(f"expected the model to return an AIMessage, got {type(message).__name__}")
    return message


def run_summary(message: AIMessage) -> dict[str, Any] | None:
    """``DeepPruneResult.summary()`` of the run behind a reasoner's message (None for other models)."""
    summary = message.response_metadata.get("deepprune")
    return dict(summary) if isinstance(summary, Mapping) else None


def create_deepprune_node(
    model: DeepPruneReasoner,
    *,
    messages_key: str = "messages",
    summary_key: str = "deepprune",
    name: str = "deepprune",
) -> RunnableLambda[Any, dict[str, Any]]:
    """A LangGraph node that answers the conversation in ``state[messages_key]`` with DeepPrune.

    The node returns ``{messages_key: [answer], summary_key: summary}``: the reasoner's ``AIMessage``
    (appended by an ``add_messages`` reducer) and ``DeepPruneResult.summary()`` of its run (answer,
    votes, clusters, decoded tokens, token savings, ...). Use it with ``DeepPruneState`` or any state
    with those two keys::

        graph = StateGraph(DeepPruneState)
        graph.add_node("reason", create_deepprune_node(model))

    The node's ``config`` is passed on to the model, so callbacks (``DeepPruneCallbackHandler``),
    tags, metadata and LangSmith tracing see the run under the node. Pruning decisions stream as
    ``stream_mode="custom"`` chunks ``{"event": "deepprune.trace_pruned", "data": {...}}``.
    """
    if not isinstance(model, DeepPruneReasoner):
        raise TypeError(
            f"model: expected a DeepPruneReasoner, got {type(model).__name__}; for another chat "
            "model write a plain node that calls model.invoke(state['messages'], config)"
        )
    messages_key = _check_key("messages_key", messages_key)
    summary_key = _check_key("summary_key", summary_key)
    if messages_key == summary_key:
        raise ValueError(f"messages_key and summary_key must differ, both are {messages_key!r}")

    def update(message: AIMessage) -> dict[str, Any]:
        return {messages_key: [message], summary_key: run_summary(message)}

    def deepprune_node(state: Mapping[str, Any], config: RunnableConfig) -> dict[str, Any]:
        return update(invoke_model(model, read_messages(state, messages_key), config))

    async def adeepprune_node(state: Mapping[str, Any], config: RunnableConfig) -> dict[str, Any]:
        return update(await ainvoke_model(model, read_messages(state, messages_key), config))

    return RunnableLambda(deepprune_node, afunc=adeepprune_node, name=_check_key("name", name))


__all__ = ["create_deepprune_node"]
