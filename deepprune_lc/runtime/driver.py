"""The asyncio driver: runs a controller against a generation backend and a judge.

This is the only layer that knows about concurrency, deadlines and cancellation. It streams every
trace in its own task, feeds deltas to prefix trackers (until the prefix is complete, then never
again), forwards what happened to the controller, executes the actions it returns, measures tokens and
time, and tells listeners.

Guarantees, whatever happens mid-run: no request is left running in the backend (every live request
is aborted before ``run`` returns or raises), and token counts and finished traces survive in the
result (attached to the exception when the run fails). Nothing waits unbounded: a stalled stream is
caught by the idle timeout, a hung judge by the judge timeout, and shutdown gives aborted streams a
bounded grace (a share of the deadline, at most ``ABORT_GRACE_S``), then cancels what is left and
names any request whose abort the backend never confirmed (docs/reliability.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from deepprune_lc.core.config import RunConfig, SamplingConfig
from deepprune_lc.core.controllers import (
    AbortReason,
    AbortTrace,
    Action,
    ClusterTrace,
    ControllerProtocol,
    FailRun,
    FlagUnreliable,
    ParkTrace,
    ProbeTrace,
    ResumeTrace,
    RunDone,
    ScorePairs,
    StartTrace,
)
from deepprune_lc.core.errors import DeepPruneError, GenerationError, JudgeError
from deepprune_lc.core.events import (
    DeepPruneEvent,
    EventListener,
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
from deepprune_lc.core.monitors import PrefixComplete, Signal, TraceMonitor
from deepprune_lc.core.ports import (
    AnswerProbing,
    GenerationBackend,
    Judge,
    JudgeScores,
    Prompt,
    TraceDelta,
    TraceRequest,
    close_stream,
)
from deepprune_lc.core.result import (
    DeepPruneResult,
    RunTotals,
    TraceReport,
)

__all__ = [
    "ABORT_GRACE_MIN_S",
    "ABORT_GRACE_S",
    "ABORT_GRACE_SHARE",
    "ABORT_SLACK_TOKENS",
    "Driver",
    "iterate_events",
    "validate_prompt",
]

#: The longest shutdown waits for aborted streams to end (and for abort calls to return) before it
#: cancels them; the same bound again for the cancelled ones, then the run ends regardless.
ABORT_GRACE_S = 10.0
#: With a deadline the grace is this share of it (at least ``ABORT_GRACE_MIN_S``), so a 1 s
#: deadline ends the run in about 1.25 s, not 1 s plus a fixed 10 s.
ABORT_GRACE_SHARE = 0.25
ABORT_GRACE_MIN_S = 0.25
#: Tokens a stream may still deliver after its abort call before the driver closes it itself. Covers
#: an abort that reached the backend before the request did (the backend then knows nothing of it).
ABORT_SLACK_TOKENS = 64

_run_counter = itertools.count()
_log = logging.getLogger(__name__)


def validate_prompt(prompt: Prompt) -> Prompt:
    """Reject prompts no backend can answer, before any engine work starts."""
    if isinstance(prompt, str):
        if not prompt.strip():
            raise ValueError("prompt: must not be empty")
        return prompt
    if not isinstance(prompt, list | tuple):
        raise TypeError(
            f"prompt: expected a string or a list of chat messages, got {type(prompt).__name__}"
        )
    messages = list(prompt)
    if not messages:
        raise ValueError("prompt: must contain at least one message")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise ValueError(f"prompt[{i}]: a message needs 'role' and 'content' keys")
        for key in ("role", "content"):
            if not isinstance(message[key], str):
                kind = type(message[key]).__name__
                raise ValueError(f"prompt[{i}].{key}: expected a string, got {kind}")
    if not any(str(m["content"]).strip() for m in messages):
        raise ValueError("prompt: every message is empty")
    return messages


#: (pool, clustering offset, the pool's first offset) already warned about by ``_check_probing``.
_GRID_WARNED: set[tuple[str, int, int]] = set()


def _check_probing(backend: GenerationBackend, prompt: Prompt, first_at: int | None) -> None:
    """Probe clustering needs a backend that answers probes, here for this prompt; a recording
    whose first probe comes after ``first_at`` (the clustering probe) gets a warning, since every
    trace would be clustered as unknown."""
    if not isinstance(backend, AnswerProbing):
        raise ValueError(
            f"probe clustering needs a backend with AnswerProbing (probe); "
            f"{type(backend).__name__} has none"
        )
    records = getattr(backend, "records_probes", None)
    if records is None:
        return
    try:
        recorded = bool(records(prompt))
    except ValueError:
        return  # a prompt the backend does not hold: its stream says so
    if not recorded:
        source = getattr(getattr(backend, "pool", None), "source", type(backend).__name__)
        raise ValueError(
            f"probe clustering: the trace pool {source} records no answer probes for this "
            "prompt (a text pool); use a pool with 'probes' and 'probe_every_tokens', or a "
            "pairwise judge"
        )
    grid = getattr(backend, "probe_every_tokens", None)
    every = grid(prompt) if first_at is not None and grid is not None else None
    if every is not None and first_at is not None and first_at < every:
        source = getattr(getattr(backend, "pool", None), "source", type(backend).__name__)
        if (source, first_at, every) in _GRID_WARNED:
            return  # said once per pool and offset: a bench runs every problem of the pool
        _GRID_WARNED.add((source, first_at, every))
        _log.warning(
            "probe clustering probes every trace at %d tokens, but the trace pool %s records its "
            "first probe at %d: every trace is unknown when it is clustered. Probe at the pool's "
            "offsets: ProbeClustering(at_tokens=%d), or the judge spec 'probe?at_tokens=%d'",
            first_at,
            source,
            every,
            every,
            every,
        )


@dataclass(slots=True)
class _TraceRun:
    """What the driver measures of one trace (the controller owns its status)."""

    trace_id: int
    token_ids: list[int] = field(default_factory=list)
    chunks: list[str] = field(default_factory=list)
    monitor: TraceMonitor | None = None
    monitor_chosen: bool = False
    request_id: str | None = None
    incarnation: int = 0
    task: asyncio.Task[None] | None = None
    stream_open: bool = False
    abort_requested: bool = False
    stop_before_start: bool = False
    tokens_after_abort: int = 0
    resume_prefill_tokens: int = 0
    prefix_tokens: int | None = None
    clustered_at_s: float | None = None
    finish_reason: str | None = None
    #: Virtual clock (decode steps) when the current incarnation started, and the trace's tokens
    #: then: the incarnation is at step ``clock_base + len(token_ids) - tokens_at_start``.
    clock_base: int = 0
    tokens_at_start: int = 0
    #: The clock when the controller started (or resumed) the trace: its incarnation begins there.
    started_at: int = 0
    #: The terminal event (aborted, pruned) decided but held until the trace's stream has ended,
    #: so that it carries the final token count; ``ended`` once a terminal event was sent.
    end_event: tuple[type[DeepPruneEvent], dict[str, object]] | None = None
    ended: bool = False

    @property
    def text(self) -> str:
        return "".join(self.chunks)


class Driver:
    """Runs one controller to completion; one instance per run."""

    def __init__(
        self,
        backend: GenerationBackend,
        judge: Judge | None,
        controller: ControllerProtocol,
        *,
        prompt: Prompt,
        sampling: SamplingConfig,
        run: RunConfig,
        listeners: Sequence[EventListener] = (),
        policy: str | None = None,
    ) -> None:
        if getattr(controller, "needs_probes", False):
            first_at = getattr(getattr(controller, "probe", None), "at_tokens", None)
            _check_probing(backend, prompt, first_at if isinstance(first_at, int) else None)
        if controller.needs_judge and judge is None:
            raise ValueError(f"{type(controller).__name__} needs a judge")
        if controller.n_traces != run.n_traces:
            raise ValueError(
                f"run.n_traces={run.n_traces} but the controller runs {controller.n_traces} traces"
            )
        self.backend = backend
        self.judge = judge
        self.controller = controller
        self.prompt = prompt
        self.sampling = sampling
        self.seed = run.seed
        self.deadline_s = run.deadline_s
        self.idle_timeout_s = run.idle_timeout_s
        self.judge_timeout_s: float | None = getattr(run, "judge_timeout_s", None)
        self.listeners = list(listeners)
        #: Exceptions raised by listeners, per listener index (logged; they never stop the run).
        self.listener_errors: dict[int, int] = {}
        self.policy = policy
        self.run_id = f"dp-{uuid.uuid4().hex[:8]}-{next(_run_counter)}"
        self.traces = [_TraceRun(t) for t in range(controller.n_traces)]
        self._t0 = 0.0
        self._done = asyncio.Event()
        self._failure: DeepPruneError | None = None
        self._aux_tasks: set[asyncio.Task[None]] = set()
        self._judge_tasks: set[asyncio.Task[None]] = set()
        #: Judge calls in flight: request id -> (start time, pairs), to name a judge the deadline met.
        self._judge_inflight: dict[int, tuple[float, int]] = {}
        self._abort_tasks: dict[str, asyncio.Task[None]] = {}
        self._watchdog: asyncio.Task[None] | None = None
        #: What the result's ``error`` should say besides a failure (a hung judge, stuck aborts).
        self._notes: list[str] = []
        #: Requests whose abort the backend never confirmed while their stream was still open:
        #: they may still be decoding in the engine after ``run`` returned.
        self.unconfirmed_aborts: list[str] = []
        self._judge_calls = 0
        self._judge_pairs = 0
        self._judge_prefill = 0
        self._judge_time = 0.0
        self._probe_calls = 0
        self._probe_prefill = 0
        self._probe_decoded = 0
        self._probe_time = 0.0
        #: Probes due on the trace being handled, run before its next delta is read.
        self._inline_probes: list[ProbeTrace] = []
        #: The trace whose delta, signal or end the driver is handling (its clock is "now").
        self._current: _TraceRun | None = None
        self._decided_at: int | None = None

    # ------------------------------------------------------------------------------------------
    # Public entry point

    async def run(self) -> DeepPruneResult:
        self._t0 = time.perf_counter()
        completed = False
        try:
            if self.idle_timeout_s is not None:
                self._watchdog = asyncio.get_running_loop().create_task(
                    self._watch_idle(self.idle_timeout_s), name=f"{self.run_id}-idle-watchdog"
                )
            self._call_controller(self.controller.start)
            await self._wait_until_done()
            completed = self._failure is None
        finally:
            # Whatever ended the run (done, failure, cancellation), nothing may keep decoding.
            await self._shutdown_to_the_end(reason="cancelled" if not completed else "finalised")
        result = self._build_result()
        if self._failure is not None:
            self._report_listener_errors()
            self._failure.partial_result = result
            raise self._failure
        self._emit(
            VoteCounted,
            answer=result.answer,
            votes=[
                {"answer": v.answer, "weight": v.weight, "trace_ids": v.trace_ids}
                for v in result.votes
            ],
            fallback=result.fallback,
        )
        self._emit(RunCompleted, result=result)
        self._report_listener_errors()
        return result

    async def _wait_until_done(self) -> None:
        if self.deadline_s is None:
            await self._done.wait()
            return
        try:
            await asyncio.wait_for(self._done.wait(), timeout=self.deadline_s)
        except asyncio.TimeoutError:
            now = time.perf_counter()
            for started, pairs in self._judge_inflight.values():
                self._notes.append(
                    f"the deadline ({self.deadline_s} s) passed while the judge "
                    f"{type(self.judge).__name__} had been scoring {pairs} pair(s) for "
                    f"{now - started:.1f} s without answering"
                )
            self._call_controller(self.controller.on_deadline)
            await self._done.wait()

    def _call_controller(self, step: Callable[[], list[Action]]) -> None:
        """Run a controller step outside any task; what it raises fails the run (never hangs it)."""
        try:
            self._execute(step())
        except Exception as exc:
            self._fail_with(exc)

    # ------------------------------------------------------------------------------------------
    # Action execution (synchronous: runs inside whichever task reported the event)

    def _execute(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, StartTrace):
                self._start(action.trace_id, resume=False)
            elif isinstance(action, ScorePairs):
                self._judge_tasks.add(self._spawn(self._score(action)))
            elif isinstance(action, ProbeTrace):
                current = self._current
                if current is not None and current.trace_id == action.trace_id:
                    # Asked between two of its deltas: the probe runs before the next is read,
                    # so it sees the trace exactly where the signal was (and a park lands there).
                    self._inline_probes.append(action)
                else:
                    self._spawn(self._probe(action, inline=False))
            elif isinstance(action, ClusterTrace):
                trace = self.traces[action.trace_id]
                trace.clustered_at_s = self._elapsed()
                self._emit(
                    TraceClustered,
                    trace_id=action.trace_id,
                    cluster_id=action.cluster_id,
                    founded=action.founded,
                    score=action.score,
                    cluster_size=action.cluster_size,
                    forced=action.forced,
                )
            elif isinstance(action, ParkTrace):
                self._stop(action.trace_id)
                self._emit(
                    TraceParked,
                    trace_id=action.trace_id,
                    cluster_id=action.cluster_id,
                    tokens_decoded=len(self.traces[action.trace_id].token_ids),
                )
            elif isinstance(action, AbortTrace):
                self._stop(action.trace_id)
                self._end_when_stopped(
                    self.traces[action.trace_id], TraceAborted, {"reason": action.reason}
                )
            elif isinstance(action, ResumeTrace):
                self._start(action.trace_id, resume=True, cluster_id=action.cluster_id)
            elif isinstance(action, FlagUnreliable):
                self._emit(JudgeUnreliable, reason=action.reason, detail=action.detail)
            elif isinstance(action, FailRun):
                self._fail(JudgeError(action.reason))
            elif isinstance(action, RunDone):
                if self._decided_at is None:
                    self._decided_at = self._clock()
                self._settle_pruned()
                self._done.set()

    # ------------------------------------------------------------------------------------------
    # Terminal events: one per trace, sent once its stream has ended, with its final token count

    def _settle_pruned(self) -> None:
        """Parked traces the run ended without resuming are pruned: report each one once."""
        for trace in self.traces:
            if trace.ended or trace.end_event is not None:
                continue
            view = self.controller.trace_view(trace.trace_id)
            if view.status == "pruned":
                cluster_id = view.cluster_id if view.cluster_id is not None else -1
                self._end_when_stopped(trace, TracePruned, {"cluster_id": cluster_id})

    def _end_when_stopped(
        self, trace: _TraceRun, event_type: type[DeepPruneEvent], fields: dict[str, object]
    ) -> None:
        if trace.ended:
            return
        trace.end_event = (event_type, fields)
        task = trace.task
        if not trace.stream_open and (
            task is None or task.done() or task is asyncio.current_task()
        ):
            self._flush_end(trace)

    def _flush_end(self, trace: _TraceRun) -> None:
        if trace.end_event is None or trace.ended:
            return
        event_type, fields = trace.end_event
        trace.end_event, trace.ended = None, True
        self._emit(
            event_type, trace_id=trace.trace_id, tokens_decoded=len(trace.token_ids), **fields
        )

    async def _run_trace(self, trace: _TraceRun, coro: Coroutine[object, object, None]) -> None:
        try:
            await coro
        finally:
            # The stream has ended (or never started): a terminal event held for it goes out now.
            if trace.task is asyncio.current_task():
                self._flush_end(trace)

    def _start(self, trace_id: int, *, resume: bool, cluster_id: int = -1) -> None:
        trace = self.traces[trace_id]
        if not trace.monitor_chosen:
            # Chosen once per trace; a resumed trace keeps its monitor, so its counts run on.
            trace.monitor = self.controller.monitor(trace_id)
            trace.monitor_chosen = True
        previous = trace.task
        trace.stop_before_start = False
        # Read when the decision is taken: a trace started after others ended (an ESC window, a
        # resume) begins at that step, while the first wave all begins at step 0.
        trace.started_at = self._clock()
        trace.task = asyncio.get_running_loop().create_task(
            self._guarded(
                self._run_trace(
                    trace,
                    self._consume(trace, resume=resume, cluster_id=cluster_id, previous=previous),
                )
            ),
            name=f"{self.run_id}-trace-{trace_id}",
        )

    def _stop(self, trace_id: int) -> None:
        trace = self.traces[trace_id]
        if not trace.stream_open:
            if trace.task is not None and not trace.task.done():
                trace.stop_before_start = True  # started or resumed, but not streaming yet
            return
        if trace.abort_requested:
            return
        trace.abort_requested = True
        if trace.request_id is not None:
            self._spawn_abort(trace.request_id)

    def _spawn_abort(self, request_id: str, *, quiet: bool = False) -> None:
        if request_id not in self._abort_tasks:
            self._abort_tasks[request_id] = self._spawn(self._abort_request(request_id, quiet))

    async def _abort_request(self, request_id: str, quiet: bool = False) -> None:
        try:
            await self.backend.abort(request_id)
        except Exception as exc:
            if quiet:  # shutdown's own aborts: the run's outcome is already decided
                _log.warning("run %s: aborting %s failed: %r", self.run_id, request_id, exc)
                return
            self._fail(GenerationError(f"backend failed to abort request {request_id}: {exc!r}"))

    def _spawn(self, coro: Coroutine[object, object, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(self._guarded(coro))
        self._aux_tasks.add(task)
        task.add_done_callback(self._aux_tasks.discard)
        # A task cancelled before its first step never awaits ``coro``: close it, so it is not
        # reported as "never awaited" (a no-op for one that ran).
        task.add_done_callback(lambda _: coro.close())
        return task

    async def _guarded(self, coro: Coroutine[object, object, None]) -> None:
        """Run a trace or helper task; a bug in it fails the run loudly instead of hanging it.

        Without this an exception in a task (a controller that rejects an impossible event, a
        failing action) would end that task silently and leave ``run`` waiting forever.
        """
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._fail_with(exc)

    def _fail_with(self, exc: Exception) -> None:
        """Fail the run with what a step raised: a ``DeepPruneError`` as it is (a user's answer
        rule that raised, say), anything else as an internal error of the driver."""
        if isinstance(exc, DeepPruneError):
            self._fail(exc)
        else:
            self._fail(
                DeepPruneError(f"internal error in the DeepPrune driver: {exc!r}"), cause=exc
            )

    async def _watch_idle(self, timeout: float) -> None:
        """Fail the run when a trace's open stream delivers nothing for ``timeout`` seconds.

        Polls instead of timing every delta: the per-delta path stays what it is, and a stall is
        caught within ``timeout`` plus one poll interval (a quarter of it, at most 5 s).
        """
        interval = min(max(timeout / 4, 0.005), 5.0)
        seen: dict[int, tuple[int, int, float]] = {}  # trace -> (incarnation, deltas, since)
        while not self._done.is_set():
            await asyncio.sleep(interval)
            now = time.perf_counter()
            stalled: list[tuple[_TraceRun, asyncio.Task[None], float]] = []
            for trace in self.traces:
                if not trace.stream_open or trace.task is None or trace.task.done():
                    seen.pop(trace.trace_id, None)
                    continue
                last = seen.get(trace.trace_id)
                if last is None or last[:2] != (trace.incarnation, len(trace.chunks)):
                    seen[trace.trace_id] = (trace.incarnation, len(trace.chunks), now)
                elif now - last[2] >= timeout:
                    stalled.append((trace, trace.task, now - last[2]))
            if stalled:
                trace, _, idle = stalled[0]
                others = f" (and trace(s) {', '.join(str(t.trace_id) for t, _, _ in stalled[1:])})"
                self._fail(
                    GenerationError(
                        f"trace {trace.trace_id} stalled: its stream delivered nothing for "
                        f"{idle:.1f} s (idle_timeout_s={timeout}) after {len(trace.token_ids)} "
                        f"tokens{others if len(stalled) > 1 else ''}"
                    )
                )
                for _, task, _ in stalled:
                    task.cancel()  # a stalled stream will not answer an abort either
                return

    # ------------------------------------------------------------------------------------------
    # Streams

    async def _consume(
        self,
        trace: _TraceRun,
        *,
        resume: bool,
        cluster_id: int,
        previous: asyncio.Task[None] | None,
    ) -> None:
        if previous is not None and not previous.done():
            # A resumed trace continues from the ids its parked stream produced: wait until that
            # stream has really ended so none are missing.
            await asyncio.wait([previous])
        if trace.stop_before_start:
            trace.stop_before_start = False
            return
        resume_ids = tuple(trace.token_ids) if resume else ()
        trace.clock_base = trace.started_at
        trace.tokens_at_start = len(trace.token_ids)
        trace.incarnation += 1
        trace.request_id = f"{self.run_id}-t{trace.trace_id}-{trace.incarnation}"
        trace.abort_requested = False
        trace.finish_reason = None
        if resume:
            trace.resume_prefill_tokens += len(resume_ids)
            self._emit(
                TraceResumed,
                trace_id=trace.trace_id,
                cluster_id=cluster_id,
                resume_prefill_tokens=len(resume_ids),
            )
        else:
            self._emit(TraceStarted, trace_id=trace.trace_id)
        request = TraceRequest(
            request_id=trace.request_id,
            trace_index=trace.trace_id,
            prompt=self.prompt,
            sampling=self.sampling,
            seed=(self.seed << 16) + trace.trace_id,
            resume_token_ids=resume_ids,
        )
        trace.stream_open = True
        finish_reason: str | None = None
        stream: AsyncIterator[TraceDelta] | None = None
        try:
            # Inside the try: a backend whose stream() raises at once fails like a failed request.
            stream = self.backend.stream(request)
            # Hot path: one iteration per delta. Keep it to appends, one counter, one check.
            ids_extend = trace.token_ids.extend
            chunks_append = trace.chunks.append
            monitor = trace.monitor
            if monitor is not None and not monitor.active:
                monitor = None
            async for delta in stream:
                ids = delta.token_ids
                ids_extend(ids)
                chunks_append(delta.text)
                if monitor is None and delta.finish_reason is None and not trace.abort_requested:
                    continue  # the common case once no signal is due: nothing to decide
                if trace.abort_requested:
                    trace.tokens_after_abort += len(ids)
                    if (
                        delta.finish_reason is None
                        and trace.tokens_after_abort > ABORT_SLACK_TOKENS
                    ):
                        finish_reason = "abort"  # the backend ignored the abort: close it ourselves
                        break
                elif monitor is not None:
                    signals = monitor.feed(delta)
                    if not monitor.active:
                        monitor = None
                    if signals:
                        self._on_signals(trace, signals)
                        if self._inline_probes:
                            await self._run_inline_probes()
                if delta.finish_reason is not None:
                    finish_reason = delta.finish_reason
                    break
        except asyncio.CancelledError:
            trace.stream_open = False
            raise
        except Exception as exc:
            trace.stream_open = False
            if len(trace.token_ids) > len(resume_ids):
                where = f"failed mid-stream after {len(trace.token_ids)} tokens"
            elif resume_ids:
                where = f"failed before its first token after resuming at {len(resume_ids)}"
            else:  # nothing streamed: the request itself failed (unknown prompt, engine down)
                where = "failed before its first token"
            self._fail(GenerationError(f"trace {trace.trace_id} {where}: {exc!r}"), cause=exc)
            return
        finally:
            with contextlib.suppress(Exception):
                await close_stream(stream)
        trace.stream_open = False
        self._on_stream_end(trace, finish_reason)

    def _on_signals(self, trace: _TraceRun, signals: Sequence[Signal]) -> None:
        self._current = trace
        try:
            self._handle_signals(trace, signals)
        finally:
            self._current = None

    def _handle_signals(self, trace: _TraceRun, signals: Sequence[Signal]) -> None:
        for signal in signals:
            if isinstance(signal, PrefixComplete):
                trace.prefix_tokens = signal.tokens
                self._emit(
                    PrefixReached,
                    trace_id=trace.trace_id,
                    prefix_tokens=signal.tokens,
                    ended_early=signal.ended_early,
                )
            self._execute(self.controller.on_signal(trace.trace_id, signal))

    def _on_stream_end(self, trace: _TraceRun, finish_reason: str | None) -> None:
        self._current = trace
        try:
            self._handle_stream_end(trace, finish_reason)
        finally:
            self._current = None

    def _handle_stream_end(self, trace: _TraceRun, finish_reason: str | None) -> None:
        if finish_reason == "abort" or (finish_reason is None and trace.abort_requested):
            if not trace.abort_requested:
                self._fail(GenerationError(f"backend aborted trace {trace.trace_id} on its own"))
            return
        trace.finish_reason = finish_reason or "stop"
        if trace.monitor is not None and trace.monitor.active:
            self._handle_signals(trace, trace.monitor.close())
        actions = self.controller.on_finished(trace.trace_id, trace.text, trace.finish_reason)
        if self.controller.trace_view(trace.trace_id).status == "finished":
            trace.ended = True
            self._emit(
                TraceFinished,
                trace_id=trace.trace_id,
                answer=self.controller.answer_of(trace.trace_id),
                finish_reason=trace.finish_reason,
                tokens_decoded=len(trace.token_ids),
            )
        # else: it had already been stopped (a race with its abort); its held event says so.
        self._execute(actions)

    # ------------------------------------------------------------------------------------------
    # Probes

    async def _run_inline_probes(self) -> None:
        while self._inline_probes:
            await self._probe(self._inline_probes.pop(0), inline=True)

    async def _probe(self, action: ProbeTrace, *, inline: bool) -> None:
        """Ask the backend for the trace's answer now and tell the controller what it said."""
        trace = self.traces[action.trace_id]
        on_probed = getattr(self.controller, "on_probed", None)
        on_failed = getattr(self.controller, "on_probe_failed", None)
        if on_probed is None or on_failed is None:
            raise TypeError(f"{type(self.controller).__name__} asked for a probe it cannot take")
        request_id = trace.request_id
        if request_id is None or not trace.stream_open or trace.abort_requested:
            # It stopped before the probe ran: nothing to ask, its answer is unknown.
            self._execute_for(trace, on_probed(trace.trace_id, unknown=True), inline)
            return
        backend = self.backend
        assert isinstance(backend, AnswerProbing)
        started = time.perf_counter()
        try:
            reply = await backend.probe(request_id)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._probe_calls += 1
            self._probe_time += time.perf_counter() - started
            self._execute_for(trace, on_failed(trace.trace_id, repr(exc)), inline)
            return
        self._probe_calls += 1
        self._probe_prefill += int(reply.prefill_tokens)
        self._probe_decoded += int(reply.decoded_tokens)
        self._probe_time += time.perf_counter() - started
        actions = on_probed(
            trace.trace_id,
            text=reply.text,
            answer=reply.answer,
            unknown=reply.unknown,
            observed_at=reply.at_tokens if reply.observed_at is None else reply.observed_at,
        )
        self._execute_for(trace, actions, inline)

    def _execute_for(self, trace: _TraceRun, actions: list[Action], inline: bool) -> None:
        """Execute with ``trace`` as "now" when it runs between that trace's deltas."""
        if not inline:
            self._execute(actions)
            return
        self._current = trace
        try:
            self._execute(actions)
        finally:
            self._current = None

    # ------------------------------------------------------------------------------------------
    # Judge

    async def _score(self, action: ScorePairs) -> None:
        """One judge call: bounded by ``judge_timeout_s`` and checked before the controller sees it.

        A judge that raises, hangs or answers something that is not one probability in [0, 1] per
        pair (a plain list, ``JudgeScores(None)``, NaN, a wrong count, a NaN token count) is a
        judge failure, named after the judge, and ``on_judge_error`` decides what follows.
        """
        assert self.judge is not None
        name = type(self.judge).__name__
        started = time.perf_counter()
        self._judge_inflight[action.request_id] = (started, len(action.pairs))
        try:
            try:  # a score() that raises at once fails like any judge error
                answer = self.judge.score(action.pairs)
            except Exception as exc:
                raise _JudgeFault(f"judge {name} raised {exc!r}") from exc
            raw, expired = await _bounded(answer, self.judge_timeout_s)
            if expired:
                raise _JudgeFault(
                    f"judge {name} did not answer within {self.judge_timeout_s} s "
                    f"(judge_timeout_s) for {len(action.pairs)} pair(s)"
                )
            if isinstance(raw, Exception):
                raise _JudgeFault(f"judge {name} raised {raw!r}") from raw
            probabilities, prefill = _read_scores(raw, len(action.pairs), name)
        except _JudgeFault as fault:
            self._judge_calls += 1
            self._judge_time += time.perf_counter() - started
            self._execute(self.controller.on_judge_failed(action.request_id, str(fault)))
            return
        finally:
            self._judge_inflight.pop(action.request_id, None)
        seconds = time.perf_counter() - started
        self._judge_calls += 1
        self._judge_pairs += len(action.pairs)
        self._judge_prefill += prefill
        self._judge_time += seconds
        self._emit(
            JudgeScored,
            trace_ids=list(action.trace_ids),
            pairs=len(action.pairs),
            prefill_tokens=prefill,
            seconds=seconds,
        )
        self._execute(self.controller.on_judged(action.request_id, probabilities))

    # ------------------------------------------------------------------------------------------
    # Failure and shutdown

    def _fail(self, error: DeepPruneError, cause: BaseException | None = None) -> None:
        if self._failure is None:
            if cause is not None:
                error.__cause__ = cause
            self._failure = error
            self._done.set()
            self._abort_everything("error")
        self._done.set()

    def _abort_everything(self, reason: AbortReason) -> None:
        """Ask the controller to stop every trace; if even that fails, stop every stream directly."""
        try:
            self._execute(self.controller.abort_all(reason))
            self._settle_pruned()
        except Exception:
            _log.exception("run %s: the controller failed to abort its traces", self.run_id)
            for trace in self.traces:
                self._stop(trace.trace_id)

    async def _shutdown_to_the_end(self, reason: AbortReason) -> None:
        """``_shutdown``, finished even when the caller cancels the run again meanwhile.

        A cancellation that interrupted shutdown would leave streams open and tasks pending; the
        shutdown is bounded (see ``_abort_grace``), so it is safe to see it through, then re-raise.
        """
        shutdown = asyncio.get_running_loop().create_task(self._shutdown(reason))
        interrupted = False
        while not shutdown.done():
            try:
                await asyncio.shield(shutdown)
            except asyncio.CancelledError:
                interrupted = True
        if interrupted:
            raise asyncio.CancelledError
        shutdown.result()

    def _abort_grace(self) -> float:
        """How long shutdown waits for aborted streams: a share of the deadline, never longer
        than the idle timeout (a stream silent that long has stalled anyway) or ``ABORT_GRACE_S``."""
        grace = ABORT_GRACE_S
        if self.deadline_s is not None:
            grace = min(grace, max(ABORT_GRACE_MIN_S, ABORT_GRACE_SHARE * self.deadline_s))
        if self.idle_timeout_s is not None:
            grace = min(grace, self.idle_timeout_s)
        return grace

    def _open_requests(self) -> set[str]:
        return {t.request_id for t in self.traces if t.stream_open and t.request_id is not None}

    async def _shutdown(self, reason: AbortReason) -> None:
        """Abort every request still open, then wait for (or cancel) every task we started.

        Every wait is bounded by the grace: a stream that ignores its abort, an abort call that
        never returns and a task that ignores cancellation cannot keep the run from ending.
        """
        if self._watchdog is not None:
            self._watchdog.cancel()
        if not self.controller.done:
            self._abort_everything(reason)
        for task in self._judge_tasks:
            task.cancel()  # the run is decided: no verdict can change it any more
        for request_id, task in self._abort_tasks.items():
            if request_id not in self._open_requests():
                task.cancel()  # its stream ended already: the abort has nothing left to stop
        for trace in self.traces:
            if trace.stream_open and trace.request_id is not None:
                trace.abort_requested = True
                self._spawn_abort(trace.request_id, quiet=True)
        grace = self._abort_grace()
        tasks = [t.task for t in self.traces if t.task is not None and not t.task.done()]
        tasks += [t for t in self._aux_tasks if not t.done() and t is not asyncio.current_task()]
        if self._watchdog is not None and not self._watchdog.done():
            tasks.append(self._watchdog)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace)
            still_open = self._open_requests()
            self.unconfirmed_aborts = sorted(
                request_id
                for request_id, task in self._abort_tasks.items()
                if task in pending and request_id in still_open
            )
            for task in pending:
                task.cancel()
            if pending:
                _, stuck = await asyncio.wait(pending, timeout=grace)
                if stuck:
                    _log.warning(
                        "run %s: %d task(s) ignored cancellation for %.2f s; the run ends anyway",
                        self.run_id,
                        len(stuck),
                        grace,
                    )
        if self.unconfirmed_aborts:
            ids = ", ".join(self.unconfirmed_aborts)
            note = (
                f"the backend did not confirm aborting {ids} within {grace:.2f} s; "
                "those requests may still run in the engine"
            )
            self._notes.append(note)
            _log.warning("run %s: %s", self.run_id, note)
        # Every stream has ended: terminal events still held (cancelled tasks) go out, final.
        self._settle_pruned()
        for trace in self.traces:
            self._flush_end(trace)

    # ------------------------------------------------------------------------------------------
    # Events and results

    def _clock(self) -> int:
        """Decode steps so far (docs/method.md, "Latency").

        The trace being handled defines "now" (its own position; in lockstep every running trace
        is there too, give or take one delta); otherwise the furthest incarnation's position.
        """
        current = self._current
        if current is not None:
            return current.clock_base + len(current.token_ids) - current.tokens_at_start
        return max(
            (
                t.clock_base + len(t.token_ids) - t.tokens_at_start
                for t in self.traces
                if t.incarnation
            ),
            default=0,
        )

    def _elapsed(self) -> float:
        return time.perf_counter() - self._t0

    def _emit(self, event_type: type[DeepPruneEvent], **fields: object) -> None:
        """Tell every listener. A listener that raises is logged and the run goes on.

        Events are emitted from inside the driver's own steps (between a controller decision and
        the actions it returns), so an exception escaping here would skip those actions and could
        leave the run waiting forever. A listener observes the run; it cannot stop it. Its first
        failure is logged with the traceback, the count of later ones when the run ends.
        """
        if not self.listeners:
            return
        event = event_type(run_id=self.run_id, elapsed_s=self._elapsed(), **fields)
        for index, listener in enumerate(self.listeners):
            try:
                listener(event)
            except Exception:
                failures = self.listener_errors.get(index, 0) + 1
                self.listener_errors[index] = failures
                if failures == 1:
                    _log.exception(
                        "run %s: event listener %r raised on %s; the run goes on",
                        self.run_id,
                        listener,
                        event.name,
                    )

    def _report_listener_errors(self) -> None:
        for index, failures in self.listener_errors.items():
            if failures > 1:
                _log.warning(
                    "run %s: event listener %r raised on %d events in all",
                    self.run_id,
                    self.listeners[index],
                    failures,
                )

    def _build_result(self) -> DeepPruneResult:
        controller = self.controller
        outcome = controller.outcome
        reports: list[TraceReport] = []
        finished_lengths: list[int] = []
        for trace in self.traces:
            state = controller.trace_view(trace.trace_id)
            if state.status is None:
                continue  # never sampled (ESC stopped before this window)
            if state.status == "finished":
                finished_lengths.append(len(trace.token_ids))
            reports.append(
                TraceReport(
                    trace_id=trace.trace_id,
                    status=state.status,
                    cluster_id=state.cluster_id,
                    tokens_decoded=len(trace.token_ids),
                    tokens_prefilled_on_resume=trace.resume_prefill_tokens,
                    tokens_after_abort=trace.tokens_after_abort,
                    prefix_tokens=trace.prefix_tokens,
                    clustered_at_s=trace.clustered_at_s,
                    cluster_score=state.cluster_score,
                    finish_reason=trace.finish_reason,
                    answer=state.answer,
                    resumed=state.resumed,
                    voted=state.voted,
                )
            )
        decoded = sum(len(t.token_ids) for t in self.traces)
        capped = sum(1 for t in self.traces if t.finish_reason == "length")
        if capped:
            _log.warning(
                "run %s: %d of %d traces ended on the token budget (max_tokens=%d) and were cut "
                "short; their answers may be missing",
                self.run_id,
                capped,
                controller.n_traces,
                self.sampling.max_tokens,
            )
        estimated = (
            controller.n_traces * sum(finished_lengths) / len(finished_lengths)
            if finished_lengths
            else None
        )
        try:
            prompt_tokens = self.backend.count_prompt_tokens(self.prompt)
        except Exception:
            prompt_tokens = 0
        totals = RunTotals(
            n_traces=controller.n_traces,
            prompt_tokens=prompt_tokens,
            decoded_tokens=decoded,
            resume_prefill_tokens=sum(t.resume_prefill_tokens for t in self.traces),
            estimated_full_tokens=estimated,
            token_savings=(1.0 - decoded / estimated) if estimated else None,
            judge_calls=self._judge_calls,
            judge_pairs=self._judge_pairs,
            judge_prefill_tokens=self._judge_prefill,
            judge_time_s=self._judge_time,
            probe_calls=self._probe_calls,
            probe_prefill_tokens=self._probe_prefill,
            probe_decoded_tokens=self._probe_decoded,
            probe_time_s=self._probe_time,
            wall_time_s=self._elapsed(),
            latency_tokens=self._decided_at if self._decided_at is not None else self._clock(),
            length_capped=capped,
        )
        winner = outcome.winning_trace if outcome else None
        fallback = outcome.fallback if outcome else None
        error = str(self._failure) if self._failure else None
        if controller.fallback_detail:
            error = error or f"judge error: {controller.fallback_detail}"
        if self._notes:
            error = "; ".join([error, *self._notes] if error else self._notes)
        return DeepPruneResult(
            method=controller.method,
            policy=self.policy,
            answer=outcome.answer if outcome else None,
            text=self.traces[winner].text if winner is not None else None,
            winning_trace=winner,
            votes=list(outcome.votes) if outcome else [],
            clusters=controller.cluster_reports(),
            traces=reports,
            totals=totals,
            fallback=fallback,
            error=error,
            judge_unreliable=outcome.judge_unreliable if outcome else None,
        )


async def _bounded(awaitable: Any, timeout: float | None) -> tuple[object, bool]:
    """Await ``awaitable`` for at most ``timeout`` seconds: ``(its result or exception, expired)``.

    Awaited in the calling task (``asyncio.timeout``), not in a task of its own: a new task would
    add event-loop turns between a judge request and its verdict, and on replay, where time is
    loop turns, that would change which traces get pruned. An exception the awaitable raises is
    returned, not raised (a ``TimeoutError`` of its own included), so the caller can tell it from
    the timeout expiring; cancellation of the caller propagates.
    """
    if sys.version_info < (3, 11):  # pragma: no cover - no asyncio.timeout before 3.11
        try:
            return await asyncio.wait_for(awaitable, timeout), False
        except asyncio.TimeoutError:
            return None, True
        except Exception as exc:
            return exc, False
    timer = asyncio.timeout(timeout)
    try:
        async with timer:
            return await awaitable, False
    except TimeoutError as exc:
        if timer.expired():
            return None, True
        return exc, False
    except Exception as exc:
        return exc, False


class _JudgeFault(Exception):
    """A judge call that did not give a usable answer (the reason names the judge)."""


def _read_scores(raw: object, n_pairs: int, name: str) -> tuple[list[float], int]:
    """The probabilities and prefill count of a judge's answer, or ``_JudgeFault`` saying why not."""
    if not isinstance(raw, JudgeScores):
        raise _JudgeFault(f"judge {name} returned {type(raw).__name__}, not JudgeScores")
    given = raw.probabilities
    if given is None or isinstance(given, str | bytes):
        raise _JudgeFault(f"judge {name} returned probabilities={given!r}, not a sequence")
    try:
        values = [float(p) for p in _as_iterable(given)]
    except (TypeError, ValueError) as exc:
        raise _JudgeFault(f"judge {name} returned a score that is not a number: {exc}") from exc
    if len(values) != n_pairs:
        raise _JudgeFault(f"judge {name} returned {len(values)} scores for {n_pairs} pairs")
    for value in values:
        if not 0.0 <= value <= 1.0:  # also NaN, which fails every comparison
            raise _JudgeFault(f"judge {name} returned {value!r}, not a probability in [0, 1]")
    try:
        prefill = float(raw.prefill_tokens)
    except (TypeError, ValueError):
        prefill = math.nan
    if not (prefill >= 0 and math.isfinite(prefill)):
        raise _JudgeFault(
            f"judge {name} returned prefill_tokens={raw.prefill_tokens!r}, not a count >= 0"
        )
    return values, int(prefill)


def _as_iterable(values: object) -> Iterable[Any]:
    if not isinstance(values, Iterable):
        raise TypeError(f"{type(values).__name__} is not a sequence")
    return values


async def iterate_events(
    start: Callable[[EventListener], asyncio.Future[DeepPruneResult]],
) -> AsyncIterator[DeepPruneEvent]:
    """Turn a listener-based run into an async iterator of its events.

    The run executes in its own task; closing the iterator early cancels it, which aborts every
    live request. A failed run's error is raised after the events that led up to it.
    """
    queue: asyncio.Queue[DeepPruneEvent | None] = asyncio.Queue()
    task = start(queue.put_nowait)
    task.add_done_callback(lambda _: queue.put_nowait(None))
    try:
        while True:
            event = await queue.get()
            if event is None:
                break
            yield event
        task.result()  # re-raise the run's failure, if any
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
