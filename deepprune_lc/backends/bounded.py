"""A bound on the traces a backend streams at once, shared fairly between questions.

Many questions at once (``abatch``, a LangGraph ``Send`` fan-out, several workers on one reasoner)
each start N traces; an engine queues what it cannot run, but a client-side bound is what keeps a
fleet's load predictable: a server backend holds one connection per stream, an in-process engine
holds every request's state, and the first question to arrive would otherwise take every slot
before the next gets one. ``BoundedBackend`` wraps any ``GenerationBackend``:

* at most ``max_in_flight`` streams are open on the wrapped backend (per event loop: the sync entry
  points share one background loop, so their calls share the bound; callers on their own loops
  each get a bound of their own);
* a stream past the bound waits (backpressure, not an error) and is admitted when a slot frees;
* slots go fairly: the question (prompt) with the fewest traces in flight goes first, ties by
  arrival, so a question of 64 traces does not hold back one of 8 that came a moment later; the
  traces of one question are admitted in the order they asked;
* a stream aborted while it waits ends at once with ``"abort"`` and never reaches the backend; a
  parked trace gives its slot back (its stream ended), and its resume waits like any stream.

Nothing deadlocks: every admitted stream decodes on to its end (or its abort), so slots always
come back. Everything else (token counting, the optional ports such as ``PromptTokenIds``,
``Lifecycle``, ``AnswerProbing``) is the wrapped backend's, reached through attribute access.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections import deque
from collections.abc import AsyncGenerator, Hashable
from dataclasses import dataclass, field
from typing import Any

from deepprune_lc.backends.rendering import prompt_cache_key
from deepprune_lc.core.ports import (
    GenerationBackend,
    Prompt,
    TraceDelta,
    TraceRequest,
    close_stream,
)

__all__ = [
    "AdmissionStats",
    "BoundedBackend",
]


@dataclass(frozen=True, slots=True)
class AdmissionStats:
    """What the bound is doing on one event loop: streams open, streams waiting, the most open at
    once, and how many were admitted in all."""

    in_flight: int
    waiting: int
    peak_in_flight: int
    admitted: int


@dataclass(slots=True)
class _Waiter:
    request_id: str
    key: Hashable
    order: int
    future: asyncio.Future[bool]


@dataclass(slots=True)
class _LoopState:
    """The bound's state on one event loop (only that loop touches it)."""

    in_flight: dict[Hashable, int] = field(default_factory=dict)
    waiting: dict[Hashable, deque[_Waiter]] = field(default_factory=dict)
    by_request: dict[str, _Waiter] = field(default_factory=dict)
    total: int = 0
    peak: int = 0
    admitted: int = 0


class BoundedBackend:
    """``backend`` with at most ``max_in_flight`` streams open at once, admitted fairly by question.

    >>> backend = BoundedBackend(VLLMServerBackend(urls, model=...), max_in_flight=256)
    >>> reasoner = DeepPruneReasoner(backend=backend)  # every call and batch shares the 256

    ``DeepPruneReasoner(max_traces_in_flight=...)`` wraps its backend this way.
    """

    def __init__(self, backend: GenerationBackend, max_in_flight: int) -> None:
        if isinstance(max_in_flight, bool) or not isinstance(max_in_flight, int):
            raise TypeError(f"max_in_flight must be an int, got {max_in_flight!r}")
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1, got {max_in_flight}")
        self.backend = backend
        self.max_in_flight = max_in_flight
        self._lock = threading.Lock()
        self._states: dict[asyncio.AbstractEventLoop, _LoopState] = {}
        self._order = itertools.count()

    def __repr__(self) -> str:
        return f"BoundedBackend({self.backend!r}, max_in_flight={self.max_in_flight})"

    def __getattr__(self, name: str) -> Any:
        # Only reached for names this class does not define: the wrapped backend's optional ports
        # and attributes (model_name, prompt_token_ids, max_traces, astart, probe, ...).
        if name.startswith("_") or name in ("backend", "max_in_flight"):
            raise AttributeError(name)
        return getattr(self.backend, name)

    # ------------------------------------------------------------------ GenerationBackend

    def stream(self, request: TraceRequest) -> AsyncGenerator[TraceDelta, None]:
        """The wrapped stream, once a slot is free; ``"abort"`` if aborted while waiting."""
        return self._stream(request)

    async def abort(self, request_id: str) -> None:
        """Abort a waiting stream here (it ends with ``"abort"``), else the backend's request."""
        state = self._state_or_none()
        waiter = state.by_request.get(request_id) if state is not None else None
        if waiter is not None and not waiter.future.done():
            waiter.future.set_result(False)
            return
        await self.backend.abort(request_id)

    def count_prompt_tokens(self, prompt: Prompt) -> int:
        return self.backend.count_prompt_tokens(prompt)

    # ------------------------------------------------------------------ inspection

    def admission_stats(self) -> AdmissionStats:
        """The bound's figures over every event loop it serves (each loop has its own bound):
        streams open and waiting now, the most open at once on one loop, streams admitted."""
        with self._lock:
            states = list(self._states.values())
        return AdmissionStats(
            in_flight=sum(state.total for state in states),
            waiting=sum(len(queue) for state in states for queue in state.waiting.values()),
            peak_in_flight=max((state.peak for state in states), default=0),
            admitted=sum(state.admitted for state in states),
        )

    # ------------------------------------------------------------------ admission

    def _state_or_none(self) -> _LoopState | None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return None
        with self._lock:
            return self._states.get(loop)

    def _state(self) -> _LoopState:
        loop = asyncio.get_running_loop()
        with self._lock:
            for other in [other for other in self._states if other.is_closed()]:
                del self._states[other]  # a finished loop's streams are long gone
            state = self._states.get(loop)
            if state is None:
                state = self._states[loop] = _LoopState()
            return state

    async def _stream(self, request: TraceRequest) -> AsyncGenerator[TraceDelta, None]:
        state = self._state()
        key = prompt_cache_key(request.prompt)
        if not await self._admit(state, request.request_id, key):
            yield TraceDelta((), "", "abort")
            return
        try:
            stream = self.backend.stream(request)
            try:
                async for delta in stream:
                    yield delta
            finally:
                await close_stream(stream)
        finally:
            self._release(state, key)

    async def _admit(self, state: _LoopState, request_id: str, key: Hashable) -> bool:
        """Take a slot (True), or learn that the request was aborted while it waited (False)."""
        if state.total < self.max_in_flight and not state.waiting:
            self._take(state, key)
            return True
        waiter = _Waiter(
            request_id, key, next(self._order), asyncio.get_running_loop().create_future()
        )
        state.waiting.setdefault(key, deque()).append(waiter)
        state.by_request[request_id] = waiter
        try:
            admitted = await waiter.future
        except BaseException:  # cancelled, or the stream closed (GeneratorExit) while it waited
            if waiter.future.done() and not waiter.future.cancelled() and waiter.future.result():
                self._release(state, key)  # admitted just as it left: give the slot back
            raise
        finally:
            if state.by_request.get(request_id) is waiter:
                del state.by_request[request_id]
            self._forget(state, waiter)
        if not admitted:
            self._grant(state)  # the waiter left; nothing else changed, but keep slots busy
        return admitted

    def _take(self, state: _LoopState, key: Hashable) -> None:
        state.in_flight[key] = state.in_flight.get(key, 0) + 1
        state.total += 1
        state.admitted += 1
        state.peak = max(state.peak, state.total)

    def _release(self, state: _LoopState, key: Hashable) -> None:
        count = state.in_flight.get(key, 0) - 1
        if count > 0:
            state.in_flight[key] = count
        else:
            state.in_flight.pop(key, None)
        state.total -= 1
        self._grant(state)

    def _forget(self, state: _LoopState, waiter: _Waiter) -> None:
        queue = state.waiting.get(waiter.key)
        if queue is None:
            return
        if waiter in queue:
            queue.remove(waiter)
        if not queue:
            del state.waiting[waiter.key]

    def _grant(self, state: _LoopState) -> None:
        """Hand free slots to waiters: fewest in flight for their question first, then arrival."""
        while state.total < self.max_in_flight:
            heads = [
                (state.in_flight.get(key, 0), queue[0].order, key)
                for key, queue in state.waiting.items()
                if queue
            ]
            if not heads:
                return
            _, _, key = min(heads, key=lambda head: head[:2])
            queue = state.waiting[key]
            waiter = queue.popleft()
            if not queue:
                del state.waiting[key]
            if waiter.future.done():  # aborted or cancelled: it has left already
                continue
            self._take(state, key)
            waiter.future.set_result(True)
