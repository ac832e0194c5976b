"""The shared backend contract (``deepprune_lc.testing.BackendConformanceTests``) on the replay
backend, and the fault-injecting backend wrappers of ``deepprune_lc.testing``."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncGenerator, AsyncIterator

import pytest

from deepprune_lc.backends import ReplayBackend
from deepprune_lc.core.config import SamplingConfig
from deepprune_lc.core.ports import GenerationBackend, TraceDelta, TraceRequest
from deepprune_lc.testing import (
    BackendConformanceTests,
    DeafBackend,
    DelegatingBackend,
    FailingBackend,
)

PROMPT = "A synthetic question: what is the answer?"


class TestReplayBackendConformance(BackendConformanceTests):
    """Replay is exact (no abort slack) and deterministic, so every check applies at its strictest."""

    @pytest.fixture
    def backend(self) -> ReplayBackend:
        # Traces longer than every budget, one delta per loop turn so concurrent streams interleave.
        return ReplayBackend.synthetic(8, 600, prompt=PROMPT, answers=["7", "12"], yield_every=1)

    @property
    def text_prompt(self) -> str:
        return PROMPT

    @property
    def min_distinct_reference_ids(self) -> int:
        return 6

    @property
    def stop_max_tokens(self) -> int:
        return 2048

    @property
    def probes_on_this_prompt(self) -> bool:
        return False  # text traces record no probes (tests/unit/test_probe_pools.py probes replay)


def _request(request_id: str, trace_index: int = 0) -> TraceRequest:
    return TraceRequest(request_id, trace_index, PROMPT, SamplingConfig(max_tokens=50), seed=0)


async def _collect(backend: GenerationBackend, request: TraceRequest) -> list[TraceDelta]:
    return [delta async for delta in backend.stream(request)]


async def test_failing_backend_breaks_only_the_chosen_trace() -> None:
    inner = ReplayBackend.synthetic(2, 100, prompt=PROMPT)
    failing = FailingBackend(inner, trace_index=1, after=5)
    healthy = await _collect(failing, _request("a", 0))
    assert len(healthy) == 50 and healthy[-1].finish_reason == "length"
    received: list[TraceDelta] = []
    with pytest.raises(ConnectionError, match="engine died"):
        async for delta in failing.stream(_request("b", 1)):
            received.append(delta)
    assert len(received) == 5
    assert inner.live_requests() == set()  # the inner stream was closed with the failing one
    assert failing.count_prompt_tokens(PROMPT) == inner.count_prompt_tokens(PROMPT)


async def test_deaf_backend_ignores_aborts() -> None:
    inner = ReplayBackend.synthetic(1, 100, prompt=PROMPT)
    deaf = DeafBackend(inner)
    deltas: list[TraceDelta] = []
    async for delta in deaf.stream(_request("r")):
        deltas.append(delta)
        if len(deltas) == 3:
            await deaf.abort("r")
    assert len(deltas) == 50 and deltas[-1].finish_reason == "length"
    assert deaf.abort_calls == ["r"]
    assert inner.live_requests() == set()


# -- the suite catches broken backends --------------------------------------------------------------


_Wrapper = DelegatingBackend  # delegates everything (subclasses below break one rule)


class _ReEmitting(_Wrapper):
    """Resumes one token early, so the last kept token comes out twice."""

    def stream(self, request: TraceRequest) -> AsyncIterator[TraceDelta]:
        if request.resume_token_ids:
            request = dataclasses.replace(request, resume_token_ids=request.resume_token_ids[:-1])
        return self.inner.stream(request)


class _Leaky(_Wrapper):
    """Closing its stream does not close the engine's: the request stays live."""

    def stream(self, request: TraceRequest) -> AsyncGenerator[TraceDelta, None]:
        inner = self.inner.stream(request)

        async def relay() -> AsyncGenerator[TraceDelta, None]:
            while True:
                try:
                    delta = await anext(inner)
                except StopAsyncIteration:
                    return
                yield delta

        self.kept = inner  # keeps the abandoned engine stream from being collected
        return relay()


def _replay() -> ReplayBackend:
    return ReplayBackend.synthetic(8, 600, prompt=PROMPT, yield_every=1)


async def test_the_suite_fails_a_backend_that_ignores_aborts() -> None:
    suite = TestReplayBackendConformance()
    deaf = DeafBackend(_replay())
    with pytest.raises(AssertionError):
        await suite.test_abort_mid_stream_keeps_exactly_the_tokens_produced(deaf)
    with pytest.raises(AssertionError):
        await suite.test_abort_before_the_first_token_ends_the_stream_with_abort(deaf)


async def test_the_suite_fails_a_backend_whose_resume_repeats_a_token() -> None:
    suite = TestReplayBackendConformance()
    with pytest.raises(AssertionError):
        await suite.test_resume_continues_token_exact(_ReEmitting(_replay()), "greedy")


async def test_the_suite_fails_a_backend_that_leaks_closed_streams() -> None:
    suite = TestReplayBackendConformance()
    with pytest.raises(AssertionError, match="not in"):
        await suite.test_closing_a_stream_early_leaves_nothing_live(_Leaky(_replay()))
