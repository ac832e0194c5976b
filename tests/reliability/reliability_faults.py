"""Faults to inject into a real run: backends and judges that fail the ways engines and judges do.

Each wraps the real replay backend (or a real judge) and changes one thing: a stream that stalls,
an abort that never returns, a ``stream()`` that raises at once. Fakes only for faults the real
parts cannot produce; everything else in these runs is the real driver, controller and backend.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

from deepprune_lc import (
    GenerationBackend,
    JudgeScores,
    PrefixPair,
    ReplayBackend,
    TraceDelta,
    TraceRequest,
)
from deepprune_lc.testing import DelegatingBackend, RecordingBackend, leftover_tasks

__all__ = [
    "QUESTION",
    "AbortNeverReturns",
    "CallableJudge",
    "HungJudge",
    "StallingBackend",
    "SyncRaisingBackend",
    "cancel_at_tokens",
    "leftover_tasks",
    "synthetic_backend",
]

QUESTION = "A synthetic question: what is the answer?"


def synthetic_backend(n_traces: int = 8, tokens: int = 200) -> ReplayBackend:
    """Eight replayed traces, two answers (7 for even traces, 12 for odd), one delta per turn."""
    return ReplayBackend.synthetic(
        n_traces, tokens, prompt=QUESTION, answers=["7", "12"], yield_every=1
    )


_Wrapped = DelegatingBackend


class StallingBackend(_Wrapped):
    """The wrapped backend (replay, an engine), except that the traces in ``stall`` stop
    delivering after ``after`` deltas and never answer an abort (an engine whose request hung)."""

    def __init__(self, inner: GenerationBackend, stall: Sequence[int], after: int = 5) -> None:
        super().__init__(inner)
        self.stall, self.after = set(stall), after

    def stream(self, request: TraceRequest) -> AsyncIterator[TraceDelta]:
        return self._stream(request)

    async def _stream(self, request: TraceRequest) -> AsyncGenerator[TraceDelta, None]:
        async with contextlib.aclosing(self.inner.stream(request)) as deltas:
            n = 0
            async for delta in deltas:
                yield delta
                n += 1
                if request.trace_index in self.stall and n == self.after:
                    await asyncio.Event().wait()


class AbortNeverReturns(StallingBackend):
    """A stalled stream and an ``abort`` that never returns (an engine that stopped answering)."""

    async def abort(self, request_id: str) -> None:
        await asyncio.Event().wait()


class SyncRaisingBackend(_Wrapped):
    """``stream()`` raises before returning an iterator (a client that refuses the request)."""

    def stream(self, request: TraceRequest) -> AsyncIterator[TraceDelta]:
        raise ConnectionRefusedError("engine refused the request")


class HungJudge:
    """A judge that never answers (a model server that accepted the request and went silent)."""

    def __init__(self) -> None:
        self.calls = 0

    async def score(self, pairs: Sequence[PrefixPair]) -> JudgeScores:
        self.calls += 1
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


class CallableJudge:
    """A judge whose answer is ``answer(pairs)``: whatever a broken judge might return or raise."""

    def __init__(self, answer: Callable[[Sequence[PrefixPair]], Any]) -> None:
        self.answer = answer

    async def score(self, pairs: Sequence[PrefixPair]) -> JudgeScores:
        result: JudgeScores = self.answer(pairs)
        return result


async def cancel_at_tokens(
    run: Awaitable[Any], recorder: RecordingBackend, tokens: int, *, poll_s: float = 0.0
) -> None:
    """Start ``run``, cancel it once ``recorder``'s streams delivered ``tokens`` (marking the
    instant on the recorder), and return when the cancelled run has.

    Fails when the run ended before that point: a cancellation with nothing left to stop
    measures nothing.
    """
    task = asyncio.ensure_future(run)
    while not task.done() and recorder.total_tokens() < tokens:
        await asyncio.sleep(poll_s)
    assert not task.done(), f"the run ended before {tokens} tokens"
    recorder.mark()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.wait_for(task, timeout=120)
