"""DeepPrune decisions as LangChain callbacks and child runs.

Every driver event becomes a LangChain custom event named after it (``deepprune.trace_pruned``,
...), dispatched on a child callback manager of the chat model's run, so handlers and
``astream_events(version="v2")`` see it under that run's id. That is the one way events leave a
chat-model call: to send them anywhere else, give the call a callback handler that forwards them
(``DeepPruneCallbackHandler`` for typed methods; ``deepprune_langgraph`` has one that writes to a
LangGraph graph's custom stream). Callers of ``DeepPruneReasoner.arun`` may also pass a
``stream_writer``. Judge calls become child runs (``deepprune_judge``) of the model run, which is
how they show up in LangSmith; LangSmith does not record custom events, so the summary also goes
into ``response_metadata``.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable, Sequence
from typing import Any
from uuid import UUID

from langchain_core.callbacks import (
    AsyncCallbackHandler,
    AsyncCallbackManager,
    AsyncCallbackManagerForChainRun,
    AsyncCallbackManagerForLLMRun,
    BaseCallbackHandler,
    CallbackManager,
    CallbackManagerForChainRun,
    CallbackManagerForLLMRun,
)
from langchain_core.runnables import RunnableConfig
from langchain_core.runnables.config import var_child_runnable_config

from deepprune_lc.core.events import (
    ALL_EVENT_TYPES,
    DeepPruneEvent,
    JudgeScored,
    JudgeUnreliable,
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
from deepprune_lc.core.ports import Judge, JudgeScores, PrefixPair

__all__ = [
    "EVENT_TYPES_BY_NAME",
    "NOSTREAM_TAG",
    "DeepPruneCallbackHandler",
    "EventBridge",
    "TracedJudge",
    "child_manager",
]

EVENT_TYPES_BY_NAME: dict[str, type[DeepPruneEvent]] = {t.name: t for t in ALL_EVENT_TYPES}
#: Tag on the judge's child runs, inherited by every model call a judge makes: streaming consumers
#: that honour it (LangGraph's "messages" stream) leave those calls' tokens out, since a judge's
#: output is never part of the answer. A plain string: the tag is a convention, so the core needs no
#: LangGraph to set it, and it is set on every path (a hand-written graph node gets it too).
NOSTREAM_TAG = "nostream"


class DeepPruneCallbackHandler(BaseCallbackHandler):
    """Typed callbacks for DeepPrune decisions: override the methods you need.

    >>> class Printer(DeepPruneCallbackHandler):
    ...     def on_trace_pruned(self, event, *, run_id):
    ...         print(f"trace {event.trace_id} pruned after {event.tokens_decoded} tokens")
    >>> model.invoke("...", config={"callbacks": [Printer()]})

    ``run_id`` is the chat model run the event belongs to.
    """

    #: Run in the dispatching thread, in order (not in an executor).
    run_inline = True

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
        event_type = EVENT_TYPES_BY_NAME.get(name)
        if event_type is None:
            return
        method = getattr(self, "on_" + name.removeprefix("deepprune."))
        method(event_type.model_validate(data), run_id=run_id)

    def on_trace_started(self, event: TraceStarted, *, run_id: UUID) -> None: ...
    def on_prefix_reached(self, event: PrefixReached, *, run_id: UUID) -> None: ...
    def on_judge_scored(self, event: JudgeScored, *, run_id: UUID) -> None: ...
    def on_trace_clustered(self, event: TraceClustered, *, run_id: UUID) -> None: ...
    def on_trace_parked(self, event: TraceParked, *, run_id: UUID) -> None: ...
    def on_trace_pruned(self, event: TracePruned, *, run_id: UUID) -> None: ...
    def on_trace_resumed(self, event: TraceResumed, *, run_id: UUID) -> None: ...
    def on_trace_aborted(self, event: TraceAborted, *, run_id: UUID) -> None: ...
    def on_trace_finished(self, event: TraceFinished, *, run_id: UUID) -> None: ...
    def on_judge_unreliable(self, event: JudgeUnreliable, *, run_id: UUID) -> None: ...
    def on_vote(self, event: VoteCounted, *, run_id: UUID) -> None: ...
    def on_run_completed(self, event: RunCompleted, *, run_id: UUID) -> None: ...


def child_manager(
    run_manager: CallbackManagerForLLMRun | AsyncCallbackManagerForLLMRun,
    tag: str | None = None,
    *,
    local_handlers: bool = False,
) -> CallbackManager | AsyncCallbackManager:
    """A callback manager for runs and events *under* a chat model's run.

    LLM run managers have no ``get_child``: build one from the run's inheritable handlers, tags and
    metadata (without LangSmith's ``ls_`` invocation keys, which describe the model run itself).
    ``local_handlers`` adds the run's own handlers (e.g. ``DeepPruneReasoner(callbacks=[...])``):
    right for custom events, which describe the model run itself, wrong for child runs.
    """
    cls = (
        AsyncCallbackManager
        if isinstance(run_manager, AsyncCallbackManagerForLLMRun)
        else (CallbackManager)
    )
    manager = cls(handlers=[], parent_run_id=run_manager.run_id)
    manager.set_handlers(
        run_manager.handlers if local_handlers else run_manager.inheritable_handlers
    )
    manager.add_tags(run_manager.inheritable_tags)
    manager.add_metadata(
        {k: v for k, v in run_manager.inheritable_metadata.items() if not k.startswith("ls_")}
    )
    if tag is not None:
        manager.add_tags([tag], inherit=True)
    # As LangChain does for every child run: configure() adds the handlers the context contributes
    # without inheritance (``collect_runs()``'s collector), so they see the judge runs too.
    return manager.configure(inheritable_callbacks=manager)


class EventBridge:
    """Listener that forwards driver events to LangChain callbacks and, if given, a stream writer.

    Async run managers get events through a single dispatcher task, so handlers see them in order
    without the driver waiting on them; ``aclose`` drains what is left before the model returns.
    """

    def __init__(
        self,
        run_manager: CallbackManagerForLLMRun | AsyncCallbackManagerForLLMRun | None,
        writer: Callable[[Any], None] | None,
    ) -> None:
        self.run_id = run_manager.run_id if run_manager is not None else None
        self.child: CallbackManager | AsyncCallbackManager | None = (
            child_manager(run_manager, local_handlers=True) if run_manager is not None else None
        )
        self.writer = writer
        self._queue: asyncio.Queue[tuple[str, dict[str, Any]] | None] | None = None
        self._task: asyncio.Task[None] | None = None

    def __call__(self, event: DeepPruneEvent) -> None:
        data = event.payload()
        if self.writer is not None:
            self.writer({"event": event.name, "data": data})
        if self.child is None or self.run_id is None:
            return
        if isinstance(self.child, AsyncCallbackManager):
            if self._queue is None:
                self._queue = asyncio.Queue()
                self._task = asyncio.get_running_loop().create_task(self._dispatch())
            self._queue.put_nowait((event.name, data))
        else:
            self.child.on_custom_event(event.name, data, run_id=self.run_id)

    async def _dispatch(self) -> None:
        assert self._queue is not None and isinstance(self.child, AsyncCallbackManager)
        while (item := await self._queue.get()) is not None:
            name, data = item
            await self.child.on_custom_event(name, data, run_id=self.run_id)

    async def aclose(self) -> None:
        if self._queue is not None and self._task is not None:
            self._queue.put_nowait(None)
            with contextlib.suppress(Exception):
                await self._task


class TracedJudge:
    """Wraps a judge so that each of its calls is a child run (``deepprune_judge``) of the model run."""

    def __init__(
        self, judge: Judge, parent: CallbackManager | AsyncCallbackManager, name: str
    ) -> None:
        self.judge = judge
        self.parent = parent
        self.name = name

    async def score(self, pairs: Sequence[PrefixPair]) -> JudgeScores:
        inputs = {
            "judge": self.name,
            "pairs": [[p.trace_a, p.trace_b] for p in pairs],
        }
        run_id = uuid.uuid4()
        parent = _sync_when_possible(self.parent)
        run: CallbackManagerForChainRun | AsyncCallbackManagerForChainRun
        if isinstance(parent, AsyncCallbackManager):
            run = await parent.on_chain_start(
                {"name": "deepprune_judge"}, inputs, run_id=run_id, name="deepprune_judge"
            )
        else:
            run = parent.on_chain_start(
                {"name": "deepprune_judge"}, inputs, run_id=run_id, name="deepprune_judge"
            )
        # A judge that calls LangChain models picks its config up from the context: make that the
        # judge run's, so its model runs nest under it and inherit the "nostream" tag instead of
        # the caller's (whose tokens would otherwise leak into a graph's "messages" stream).
        token = var_child_runnable_config.set(RunnableConfig(callbacks=run.get_child()))
        try:
            scores = await self.judge.score(pairs)
        except BaseException as exc:
            result = run.on_chain_error(exc)
            if asyncio.iscoroutine(result):
                await result
            raise
        finally:
            var_child_runnable_config.reset(token)
        outputs = {
            "probabilities": [round(float(p), 4) for p in scores.probabilities],
            "prefill_tokens": scores.prefill_tokens,
        }
        result = run.on_chain_end(outputs)
        if asyncio.iscoroutine(result):
            await result
        return scores


def _sync_when_possible(
    manager: CallbackManager | AsyncCallbackManager,
) -> CallbackManager | AsyncCallbackManager:
    """The sync twin of an async manager none of whose handlers is async; else the manager.

    Why: the async manager's ``on_chain_end`` is ``@shielded`` (it runs in a task of its own), so
    awaiting it costs event-loop turns even with no handler, and every trace decodes on meanwhile:
    ``ainvoke`` then made different pruning decisions than ``invoke`` (whose manager is sync) for
    the same question and seed. Sync handlers run inline on either path, as ``invoke`` runs them.
    """
    if not isinstance(manager, AsyncCallbackManager):
        return manager
    if any(isinstance(h, AsyncCallbackHandler) for h in manager.handlers):
        return manager
    return CallbackManager(
        handlers=manager.handlers,
        inheritable_handlers=manager.inheritable_handlers,
        parent_run_id=manager.parent_run_id,
        tags=manager.tags,
        inheritable_tags=manager.inheritable_tags,
        metadata=manager.metadata,
        inheritable_metadata=manager.inheritable_metadata,
    )
