"""``BoundedBackend``: a bound on the streams open at once, shared fairly between questions.

The wrapper is a backend like any other (the shared backend suite runs on it); on top of that: the
bound holds for ``abatch`` and concurrent runs, every question gets its own answer, a question that
arrives while another holds every slot is not starved, and a stream aborted or cancelled while it
waits never reaches the engine and never keeps a slot.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator

import pytest

from deepprune_lc import DeepPrune, DeepPruneReasoner, PruningConfig, SamplingConfig
from deepprune_lc.backends import BoundedBackend, ReplayBackend
from deepprune_lc.core.ports import (
    GenerationBackend,
    PromptTokenIds,
    TraceCapacity,
    TraceDelta,
    TraceRequest,
)
from deepprune_lc.demo import load_demo_pool
from deepprune_lc.testing import ConstantJudge, DelegatingBackend
from tests.unit.test_backend_conformance import PROMPT
from tests.unit.test_backend_conformance import (
    TestReplayBackendConformance as ReplayConformance,  # not collected here: not named Test*
)

QUESTIONS = {problem.problem: problem.answer for problem in load_demo_pool().problems}


class TestBoundedBackendConformance(ReplayConformance):
    """The wrapper passes the contract of the replay backend it wraps (bound = the suite's
    concurrency), held to the same settings."""

    @pytest.fixture
    def backend(self) -> BoundedBackend:  # type: ignore[override]
        inner = ReplayBackend.synthetic(8, 600, prompt=PROMPT, answers=["7", "12"], yield_every=1)
        return BoundedBackend(inner, max_in_flight=self.concurrent_streams)


class CountingBackend(DelegatingBackend):
    """The replay backend, recording which prompt each stream that reached it was for."""

    def __init__(self, inner: ReplayBackend) -> None:
        super().__init__(inner)
        self.started: list[str] = []
        self.open = 0
        self.peak = 0

    async def _stream(self, request: TraceRequest) -> AsyncGenerator[TraceDelta, None]:
        self.started.append(str(request.prompt))
        self.open += 1
        self.peak = max(self.peak, self.open)
        try:
            async with contextlib.aclosing(self.inner.stream(request)) as stream:  # type: ignore[type-var]
                async for delta in stream:
                    yield delta
        finally:
            self.open -= 1

    def stream(self, request: TraceRequest) -> AsyncGenerator[TraceDelta, None]:
        return self._stream(request)


def demo_backend(bound: int) -> tuple[BoundedBackend, CountingBackend, ReplayBackend]:
    replay = ReplayBackend(load_demo_pool(), yield_every=1)
    counting = CountingBackend(replay)
    return BoundedBackend(counting, max_in_flight=bound), counting, replay


def request(prompt: str, i: int, max_tokens: int = 40) -> TraceRequest:
    return TraceRequest(
        f"{abs(hash(prompt))}-{i}", i, prompt, SamplingConfig(max_tokens=max_tokens), i
    )


async def test_abatch_of_every_demo_question_keeps_to_the_bound_and_answers_each() -> None:
    bounded, counting, replay = demo_backend(bound=5)
    model = DeepPruneReasoner(backend=bounded, judge="lexical", pruning=PruningConfig(n_traces=8))
    questions = list(QUESTIONS)
    replies = await model.abatch(questions)
    assert counting.peak <= 5  # never more streams on the engine than the bound
    assert bounded.admission_stats().peak_in_flight <= 5
    assert bounded.admission_stats().admitted == len(counting.started)
    # No cross-talk: each reply is its own question's answer (the demo's answers all differ), the
    # one the question gets alone without the bound.
    unbounded = DeepPruneReasoner(
        backend=ReplayBackend(load_demo_pool()), judge="lexical", pruning=PruningConfig(n_traces=8)
    )
    for question, reply in zip(questions, replies, strict=True):
        alone = await unbounded.ainvoke(question)
        answer = reply.response_metadata["deepprune"]["answer"]
        assert answer == alone.response_metadata["deepprune"]["answer"] == QUESTIONS[question]
    assert replay.live_requests() == set()
    assert bounded.admission_stats().in_flight == bounded.admission_stats().waiting == 0


def test_sync_batch_shares_the_bound_on_the_background_loop() -> None:
    bounded, counting, _ = demo_backend(bound=3)
    model = DeepPruneReasoner(backend=bounded, judge="lexical", pruning=PruningConfig(n_traces=8))
    replies = model.batch(list(QUESTIONS), config={"max_concurrency": 4})
    assert [r.response_metadata["deepprune"]["answer"] for r in replies] == list(QUESTIONS.values())
    assert counting.peak <= 3


def test_the_reasoner_bounds_its_own_backend() -> None:
    model = DeepPruneReasoner(backend="replay:demo", judge="lexical", max_traces_in_flight=2)
    runner = model._deepprune()
    assert isinstance(runner.backend, BoundedBackend) and runner.backend.max_in_flight == 2
    assert model._deepprune() is runner  # batch calls share one runner, so one bound
    replies = model.batch(list(QUESTIONS)[:2])
    # The sync calls ran on the shared background loop, where the bound was 2.
    assert runner.backend.admission_stats().peak_in_flight == 2
    assert all(r.response_metadata["deepprune"]["answer"] for r in replies)
    with pytest.raises(ValueError, match="max_traces_in_flight"):
        DeepPruneReasoner(backend="replay:demo", max_traces_in_flight=0)


async def test_a_question_that_comes_later_is_not_starved() -> None:
    bounded, counting, _ = demo_backend(bound=2)
    first, second = list(QUESTIONS)[:2]
    streams: list[asyncio.Task[list[TraceDelta]]] = []

    async def read(req: TraceRequest) -> list[TraceDelta]:
        return [delta async for delta in bounded.stream(req)]

    for i in range(6):  # the first question asks for six traces: two run, four wait
        streams.append(asyncio.ensure_future(read(request(first, i))))
    await asyncio.sleep(0)
    for i in range(2):  # then the second asks for two
        streams.append(asyncio.ensure_future(read(request(second, i))))
    await asyncio.gather(*streams)
    # Whenever a slot freed, the question with fewer traces running got it (ties: who asked first):
    # the second question's first trace took the first free slot, and both of its traces ran
    # before the first question's last ones, not after all six (as they would first-come first-served).
    started = counting.started
    assert started[:3] == [first, first, second], started
    assert [i for i, prompt in enumerate(started) if prompt == second][-1] <= 4, started
    assert counting.peak == 2


async def test_a_stream_aborted_while_it_waits_ends_with_abort_and_never_starts() -> None:
    bounded, counting, replay = demo_backend(bound=1)
    question = next(iter(QUESTIONS))
    running = bounded.stream(request(question, 0, max_tokens=400))
    first = await running.__anext__()  # holds the only slot
    waiting_req = request(question, 1)
    waiting = asyncio.ensure_future(_collect(bounded.stream(waiting_req)))
    await asyncio.sleep(0)
    assert bounded.admission_stats().waiting == 1
    await bounded.abort(waiting_req.request_id)
    assert [(d.token_ids, d.finish_reason) for d in await waiting] == [((), "abort")]
    assert counting.started == [question]  # the aborted one never reached the engine
    await running.aclose()
    assert first.token_ids and bounded.admission_stats().in_flight == 0
    assert replay.live_requests() == set()


async def test_cancelled_or_closed_waiters_give_no_slot_away_and_keep_none() -> None:
    bounded, counting, _ = demo_backend(bound=1)
    question = next(iter(QUESTIONS))
    holder = bounded.stream(request(question, 0, max_tokens=400))
    await holder.__anext__()
    cancelled = asyncio.ensure_future(_collect(bounded.stream(request(question, 1))))
    closed = bounded.stream(request(question, 2))
    pending_next = asyncio.ensure_future(closed.__anext__())
    await asyncio.sleep(0)
    assert bounded.admission_stats().waiting == 2
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    pending_next.cancel()
    with pytest.raises(asyncio.CancelledError):
        await pending_next
    await closed.aclose()
    await holder.aclose()
    stats = bounded.admission_stats()
    assert (stats.in_flight, stats.waiting) == (0, 0)
    # The slot is free again: the next stream runs at once.
    deltas = await _collect(bounded.stream(request(question, 3)))
    assert deltas[-1].finish_reason in ("stop", "length")
    assert counting.started == [question, question]


async def test_a_run_larger_than_the_bound_queues_and_answers() -> None:
    inner = ReplayBackend.synthetic(32, 300, prompt=PROMPT, answers=["7", "7", "12"])
    bounded = BoundedBackend(inner, max_in_flight=4)
    runner = DeepPrune(
        bounded, ConstantJudge(0.9), PruningConfig(n_traces=32), sampling=SamplingConfig()
    )
    result = await runner.run(PROMPT)
    assert result.answer == "7"
    assert bounded.admission_stats().peak_in_flight == 4
    assert inner.live_requests() == set()


def test_optional_ports_and_bad_bounds() -> None:
    inner = ReplayBackend(load_demo_pool())
    bounded: GenerationBackend = BoundedBackend(inner, max_in_flight=3)
    assert isinstance(bounded, PromptTokenIds) and isinstance(bounded, TraceCapacity)
    question = next(iter(QUESTIONS))
    assert bounded.count_prompt_tokens(question) == inner.count_prompt_tokens(question)
    with pytest.raises(ValueError, match="at least 1"):
        BoundedBackend(inner, max_in_flight=0)
    with pytest.raises(TypeError, match="must be an int"):
        BoundedBackend(inner, max_in_flight=2.5)  # type: ignore[arg-type]


async def _collect(stream: object) -> list[TraceDelta]:
    return [delta async for delta in stream]  # type: ignore[attr-defined]
