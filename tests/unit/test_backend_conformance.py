"""The shared backend contract (``deepprune_lc.testing.BackendConformanceTests``) on the replay
backend, and the fault-injecting backend wrappers of ``deepprune_lc.testing``."""

from __future__ import annotations

import pytest

from deepprune_lc.backends import ReplayBackend
from deepprune_lc.core.config import SamplingConfig
from deepprune_lc.core.ports import GenerationBackend, TraceDelta, TraceRequest
from deepprune_lc.testing import BackendConformanceTests, DeafBackend, FailingBackend

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
        return 2048  # a recorded trace ends by itself: "stop"


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
