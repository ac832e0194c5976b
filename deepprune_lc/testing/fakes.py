"""Fake judges and fault-injecting backend wrappers for tests and benchmarks: one set, shared.

Real parts run wherever they can (the replay backend, the lexical judge, the tiny engines); these
fakes exist for what a real part cannot be made to do on demand: answer with a chosen probability,
fail, take its time, or ignore an abort.

* ``ConstantJudge`` (from ``deepprune_lc.judges``): the same probability for every pair; ``1.0``
  puts every trace in one cluster, ``0.0`` never merges. A real, public baseline, re-exported here.
* ``ScriptedJudge``: a probability per pair from a function or a table, and a record of every batch.
* ``FailingJudge``: raises (optionally after some calls that a real judge answered).
* ``SlowJudge``: answers like another judge, after a delay (deadlines, judges in flight).
* ``FailingBackend`` / ``DeafBackend``: wrap a real backend; one trace dies mid-stream, or every
  abort is ignored (what a broken engine does, which no real engine here can be made to do).
* ``RecordingBackend``: wraps a real backend and records every request, what each stream
  delivered, and the tokens that arrived after a mark (a caller's cancellation) and after each
  request's abort call: how far a real engine runs on once it was told to stop.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping, Sequence

from deepprune_lc.core.ports import (
    GenerationBackend,
    Judge,
    JudgeScores,
    PrefixPair,
    Prompt,
    TraceDelta,
    TraceRequest,
    close_stream,
)
from deepprune_lc.judges.fixed import ConstantJudge

__all__ = [
    "ConstantJudge",
    "DeafBackend",
    "DelegatingBackend",
    "FailingBackend",
    "FailingJudge",
    "RecordingBackend",
    "ScriptedJudge",
    "SlowJudge",
    "StallingBackend",
]


class ScriptedJudge:
    """Scores each pair by ``script``: a function of the pair, or a table keyed by trace ids.

    A table maps ``(trace_a, trace_b)`` to a probability, in either order; pairs it does not hold
    get ``default``, or raise ``KeyError`` when there is none (a test that scripts its judge means
    every pair it expects). ``batches`` records every batch scored, in call order.
    """

    def __init__(
        self,
        script: Callable[[PrefixPair], float] | Mapping[tuple[int, int], float],
        *,
        default: float | None = None,
        prefill_tokens_per_pair: int = 0,
    ) -> None:
        self.script = script
        self.default = default
        self.prefill_tokens_per_pair = prefill_tokens_per_pair
        self.batches: list[list[PrefixPair]] = []

    @property
    def calls(self) -> int:
        """Batches scored so far."""
        return len(self.batches)

    def probability(self, pair: PrefixPair) -> float:
        """The scripted probability of one pair."""
        script = self.script
        if callable(script):
            return float(script(pair))
        for key in ((pair.trace_a, pair.trace_b), (pair.trace_b, pair.trace_a)):
            if key in script:
                return float(script[key])
        if self.default is None:
            raise KeyError(
                f"ScriptedJudge: no probability for traces {pair.trace_a}, {pair.trace_b}"
            )
        return float(self.default)

    async def score(self, pairs: Sequence[PrefixPair]) -> JudgeScores:
        """The scripted probability of every pair; the batch is recorded first."""
        self.batches.append(list(pairs))
        return JudgeScores(
            [self.probability(pair) for pair in pairs],
            prefill_tokens=self.prefill_tokens_per_pair * len(pairs),
        )


class FailingJudge:
    """Raises ``error`` from ``score``, after ``after`` calls answered by ``inner``.

    The default error reads like an unreachable judge server (what a remote judge does). ``calls``
    counts every call, the failing ones included.
    """

    def __init__(
        self,
        error: BaseException | None = None,
        *,
        after: int = 0,
        inner: Judge | None = None,
    ) -> None:
        if after < 0:
            raise ValueError(f"after: must be >= 0, got {after}")
        if after and inner is None:
            raise ValueError("inner: a judge must answer the calls before the failure")
        self.error = error if error is not None else RuntimeError("judge server unreachable")
        self.after = after
        self.inner = inner
        self.calls = 0

    async def score(self, pairs: Sequence[PrefixPair]) -> JudgeScores:
        """``inner``'s answer for the first ``after`` calls, then the error."""
        self.calls += 1
        if self.calls <= self.after and self.inner is not None:
            return await self.inner.score(pairs)
        raise self.error


class SlowJudge:
    """Answers like ``inner`` after ``delay_s`` seconds (``inner`` defaults to ``ConstantJudge(0.5)``).

    For tests where a judge call must still be in flight when something else happens (a deadline, a
    cancellation); ``in_flight`` says how many calls are waiting now.
    """

    def __init__(self, delay_s: float, inner: Judge | None = None) -> None:
        if delay_s < 0:
            raise ValueError(f"delay_s: must be >= 0, got {delay_s}")
        self.delay_s = delay_s
        self.inner: Judge = inner if inner is not None else ConstantJudge(0.5)
        self.calls = 0
        self.in_flight = 0

    async def score(self, pairs: Sequence[PrefixPair]) -> JudgeScores:
        """Wait, then delegate (a cancelled wait propagates, as a cancelled real call would)."""
        self.calls += 1
        self.in_flight += 1
        try:
            await asyncio.sleep(self.delay_s)
        finally:
            self.in_flight -= 1
        return await self.inner.score(pairs)


class DelegatingBackend:
    """Passes everything to ``inner``: the base of a wrapper that changes one thing (records what it
    sees, breaks one rule of the port), so the rest stays the wrapped backend's."""

    def __init__(self, inner: GenerationBackend) -> None:
        self.inner = inner

    def stream(self, request: TraceRequest) -> AsyncIterator[TraceDelta]:
        return self.inner.stream(request)

    async def abort(self, request_id: str) -> None:
        await self.inner.abort(request_id)

    def count_prompt_tokens(self, prompt: Prompt) -> int:
        return self.inner.count_prompt_tokens(prompt)

    def live_requests(self) -> set[str]:
        """The wrapped backend's live requests (empty when it cannot tell)."""
        probe = getattr(self.inner, "live_requests", None)
        return set(probe()) if probe is not None else set()


class RecordingBackend(DelegatingBackend):
    """Passes everything to ``inner`` and records what happened, per request id.

    * ``requests``: every request, in the order ``stream`` was called;
    * ``delivered`` / ``texts``: the token ids and text each stream delivered (to the caller);
    * ``after_mark``: tokens each stream delivered after ``mark()`` was called (for a caller that
      marks the instant it cancels a run: the tokens decoded past it);
    * ``after_abort``: tokens each stream delivered after ``abort`` was called for its request;
    * ``open``: streams not ended yet (neither finished, failed nor closed);
    * ``largest_delta``: the most tokens one delta carried (the granularity of every count above).

    Closing a recorded stream closes ``inner``'s, so an engine aborts it as it would unwrapped.
    """

    def __init__(self, inner: GenerationBackend) -> None:
        super().__init__(inner)
        self.requests: list[TraceRequest] = []
        self.delivered: dict[str, list[int]] = {}
        self.texts: dict[str, str] = {}
        self.after_mark: dict[str, int] = {}
        self.after_abort: dict[str, int] = {}
        self.open: set[str] = set()
        self.largest_delta = 0
        self.marked = False

    def mark(self) -> None:
        """From now on, count every delivered token in ``after_mark`` too."""
        self.marked = True

    def total_tokens(self) -> int:
        """Tokens every recorded stream delivered so far, all requests together."""
        return sum(len(ids) for ids in self.delivered.values())

    def stream(self, request: TraceRequest) -> AsyncGenerator[TraceDelta, None]:
        """``inner``'s stream, recorded (closing it closes ``inner``'s)."""
        self.requests.append(request)
        return self._stream(request)

    async def _stream(self, request: TraceRequest) -> AsyncGenerator[TraceDelta, None]:
        request_id = request.request_id
        ids = self.delivered.setdefault(request_id, [])
        self.texts.setdefault(request_id, "")
        self.open.add(request_id)
        try:
            async with contextlib.aclosing(_closable(self.inner.stream(request))) as deltas:
                async for delta in deltas:
                    n = len(delta.token_ids)
                    ids.extend(delta.token_ids)
                    self.texts[request_id] += delta.text
                    self.largest_delta = max(self.largest_delta, n)
                    if self.marked:
                        self.after_mark[request_id] = self.after_mark.get(request_id, 0) + n
                    if request_id in self.after_abort:
                        self.after_abort[request_id] += n
                    yield delta
        finally:
            self.open.discard(request_id)

    async def abort(self, request_id: str) -> None:
        """Note the abort (tokens delivered after it are counted), then pass it on."""
        self.after_abort.setdefault(request_id, 0)
        await self.inner.abort(request_id)


class FailingBackend:
    """Wraps a backend; the trace with index ``trace_index`` raises ``error`` after ``after`` tokens.

    Counts deltas, as the tokens of the replay backend are one per delta. Every other request, and
    abort and token counting, go to ``inner`` unchanged.
    """

    def __init__(
        self,
        inner: GenerationBackend,
        trace_index: int,
        after: int,
        error: BaseException | None = None,
    ) -> None:
        self.inner = inner
        self.trace_index = trace_index
        self.after = after
        self.error = error if error is not None else ConnectionError("engine died")

    def stream(self, request: TraceRequest) -> AsyncGenerator[TraceDelta, None]:
        """``inner``'s stream, broken for the chosen trace (closing it closes ``inner``'s)."""
        return self._stream(request)

    async def _stream(self, request: TraceRequest) -> AsyncGenerator[TraceDelta, None]:
        count = 0
        async with contextlib.aclosing(_closable(self.inner.stream(request))) as deltas:
            async for delta in deltas:
                if request.trace_index == self.trace_index and count >= self.after:
                    raise self.error
                count += 1
                yield delta

    async def abort(self, request_id: str) -> None:
        await self.inner.abort(request_id)

    def count_prompt_tokens(self, prompt: Prompt) -> int:
        return self.inner.count_prompt_tokens(prompt)


class DeafBackend:
    """Wraps a backend and ignores every abort: streams run to their end (a stuck engine).

    ``abort_calls`` lists the ids it was asked to abort, so a test can check the caller tried.
    """

    def __init__(self, inner: GenerationBackend) -> None:
        self.inner = inner
        self.abort_calls: list[str] = []

    def stream(self, request: TraceRequest) -> AsyncGenerator[TraceDelta, None]:
        """``inner``'s stream (closing it closes ``inner``'s)."""
        return self._stream(request)

    async def _stream(self, request: TraceRequest) -> AsyncGenerator[TraceDelta, None]:
        async with contextlib.aclosing(_closable(self.inner.stream(request))) as deltas:
            async for delta in deltas:
                yield delta

    async def abort(self, request_id: str) -> None:
        self.abort_calls.append(request_id)

    def count_prompt_tokens(self, prompt: Prompt) -> int:
        return self.inner.count_prompt_tokens(prompt)


class StallingBackend:
    """Wraps a backend; the traces in ``stalled`` stop producing after ``after`` tokens and hang
    until aborted (a stuck engine stream), then end with ``finish_reason="abort"``.

    Every other trace streams from ``inner`` unchanged, so a run has some finished traces and some
    that can only end by the deadline, deterministically.
    """

    def __init__(self, inner: GenerationBackend, stalled: set[int], after: int = 0) -> None:
        self.inner = inner
        self.stalled = set(stalled)
        self.after = after
        self._aborted: dict[str, asyncio.Event] = {}

    def stream(self, request: TraceRequest) -> AsyncGenerator[TraceDelta, None]:
        """``inner``'s stream, stalled for the chosen traces (closing it closes ``inner``'s)."""
        return self._stream(request)

    async def _stream(self, request: TraceRequest) -> AsyncGenerator[TraceDelta, None]:
        aborted = self._aborted.setdefault(request.request_id, asyncio.Event())
        count = 0
        try:
            async with contextlib.aclosing(_closable(self.inner.stream(request))) as deltas:
                async for delta in deltas:
                    if request.trace_index in self.stalled and count >= self.after:
                        await aborted.wait()
                        yield TraceDelta(token_ids=(), text="", finish_reason="abort")
                        return
                    count += 1
                    yield delta
        finally:
            self._aborted.pop(request.request_id, None)

    async def abort(self, request_id: str) -> None:
        event = self._aborted.get(request_id)
        if event is not None:
            event.set()
        await self.inner.abort(request_id)

    def count_prompt_tokens(self, prompt: Prompt) -> int:
        return self.inner.count_prompt_tokens(prompt)


async def _closable(stream: AsyncIterator[TraceDelta]) -> AsyncGenerator[TraceDelta, None]:
    """An async generator over any delta iterator; closing it closes the iterator (if it can)."""
    try:
        async for delta in stream:
            yield delta
    finally:
        await close_stream(stream)
