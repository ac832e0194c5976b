"""The asyncio driver: runs a controller against a generation backend and a judge.

This is the only layer that knows about concurrency, deadlines and cancellation. It streams every
trace in its own task, feeds deltas to prefix trackers (until the prefix is complete, then never
again), forwards what happened to the controller, executes the actions it returns, measures tokens and
time, and tells listeners.

Guarantees, whatever happens mid-run: no request is left running in the backend (every live request
is aborted before ``run`` returns or raises), and token counts and finished traces survive in the
result (attached to the exception when the run fails).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import dataclass, field

from deepprune_lc.core.config import ProbeClustering, RunConfig, SamplingConfig
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
from deepprune_lc.core.ports import AnswerProbing, GenerationBackend, Judge, Prompt, TraceRequest
from deepprune_lc.core.result import (
    DeepPruneResult,
    RunTotals,
    TraceReport,
)

__all__ = ["ABORT_GRACE_S", "ABORT_SLACK_TOKENS", "Driver", "iterate_events", "validate_prompt"]

#: How long to wait for aborted streams to end before giving up on them (they are cancelled then).
ABORT_GRACE_S = 10.0
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
    messages = list(prompt)
    if not messages:
        raise ValueError("prompt: must contain at least one message")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise ValueError(f"prompt[{i}]: a message needs 'role' and 'content' keys")
    if not any(str(m["content"]).strip() for m in messages):
        raise ValueError("prompt: every message is empty")
    return messages


def _check_probing(backend: GenerationBackend, prompt: Prompt) -> None:
    """Probe clustering needs a backend that answers probes, here for this prompt."""
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
        settings = getattr(judge, "probe_clustering", None)
        enable = getattr(controller, "enable_probes", None)
        if (
            isinstance(settings, ProbeClustering)
            and enable is not None
            and getattr(controller, "probe", None) is None
        ):
            enable(settings)  # the probe judge: cluster by probe answers, no pair calls
        if getattr(controller, "needs_probes", False):
            _check_probing(backend, prompt)
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
            self._execute(self.controller.start())
            await self._wait_until_done()
            completed = self._failure is None
        finally:
            # Whatever ended the run (done, failure, cancellation), nothing may keep decoding.
            await self._shutdown(reason="cancelled" if not completed else "finalised")
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
            self._execute(self.controller.on_deadline())
            await self._done.wait()

    # ------------------------------------------------------------------------------------------
    # Action execution (synchronous: runs inside whichever task reported the event)

    def _execute(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, StartTrace):
                self._start(action.trace_id, resume=False)
            elif isinstance(action, ScorePairs):
                self._spawn(self._score(action))
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
            self._spawn(self._abort_request(trace.request_id))

    async def _abort_request(self, request_id: str) -> None:
        try:
            await self.backend.abort(request_id)
        except Exception as exc:
            self._fail(GenerationError(f"backend failed to abort request {request_id}: {exc!r}"))

    def _spawn(self, coro: Coroutine[object, object, None]) -> None:
        task = asyncio.get_running_loop().create_task(self._guarded(coro))
        self._aux_tasks.add(task)
        task.add_done_callback(self._aux_tasks.discard)

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
            self._fail(
                DeepPruneError(f"internal error in the DeepPrune driver: {exc!r}"), cause=exc
            )

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
        stream = self.backend.stream(request)
        try:
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
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()
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
            trace.trace_id, text=reply.text, answer=reply.answer, unknown=reply.unknown
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
        assert self.judge is not None
        started = time.perf_counter()
        try:
            scores = await self.judge.score(action.pairs)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._judge_calls += 1
            self._judge_time += time.perf_counter() - started
            self._execute(self.controller.on_judge_failed(action.request_id, repr(exc)))
            return
        seconds = time.perf_counter() - started
        self._judge_calls += 1
        self._judge_pairs += len(action.pairs)
        self._judge_prefill += int(scores.prefill_tokens)
        self._judge_time += seconds
        self._emit(
            JudgeScored,
            trace_ids=list(action.trace_ids),
            pairs=len(action.pairs),
            prefill_tokens=int(scores.prefill_tokens),
            seconds=seconds,
        )
        self._execute(self.controller.on_judged(action.request_id, list(scores.probabilities)))

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

    async def _shutdown(self, reason: AbortReason) -> None:
        """Abort every request still open, then wait for (or cancel) every task we started."""
        if not self.controller.done:
            self._abort_everything(reason)
        for trace in self.traces:
            if trace.stream_open and trace.request_id is not None:
                trace.abort_requested = True
                with contextlib.suppress(Exception):
                    await self.backend.abort(trace.request_id)
        tasks = [t.task for t in self.traces if t.task is not None and not t.task.done()]
        tasks += [t for t in self._aux_tasks if not t.done() and t is not asyncio.current_task()]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=ABORT_GRACE_S)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
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
