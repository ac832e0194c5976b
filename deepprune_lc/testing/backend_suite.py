"""``BackendConformanceTests``: the ``GenerationBackend`` contract as a pytest suite to subclass.

Every backend (the replay backend, transformers, vLLM, yours) must behave the same way where the
driver relies on it: streams carry token ids and text and end with exactly one finish reason; an
abort is a no-op for unknown ids, is not lost when it comes before the first token, and keeps
exactly the tokens produced (up to a declared engine slack); a resumed trace continues token-exact
and its resumed tokens count toward ``max_tokens``; a stream closed or cancelled early leaves no
request behind; many streams run at once without disturbing each other; stop strings end the text
right before the stop string, as vLLM and OpenAI do (``deepprune_lc.backends.stops`` says what the
ids of the final delta hold), also for a trace parked and resumed. A backend that answers probes
(``AnswerProbing``) is also held to that contract: a probe of a running trace reports what it saw
and cost, and the trace then completes token-exact with the same trace left unprobed; an unknown
id raises ``KeyError``; nothing is left live (the probe tests are skipped, with the reason, for a
backend that does not probe). Written once here, in the
style of langchain-tests' ``ChatModelIntegrationTests``, a backend's test module inherits it::

    from deepprune_lc.testing import BackendConformanceTests

    class TestMyBackendConformance(BackendConformanceTests):
        @pytest.fixture
        def backend(self, my_session_engine):
            return my_session_engine

        @property
        def abort_slack_tokens(self) -> int:
            return 8  # the engine may deliver a few tokens after an abort

The properties below are the knobs (prompts, token budgets, the slack, whether seeded sampling
resumes exactly); ``live_requests`` and ``assert_nothing_live`` let the suite read the backend's own
view of what is still running, so leaks are caught from the engine's state, not from what the
streams say. Budgets default to a few dozen tokens, so the suite runs on a CPU in seconds.

A subclass that overrides a test to mark it ``xfail`` says why (``reason=``), as with
langchain-tests. Like langchain-tests, this module is for test code: it needs pytest.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import cast

import pytest

from deepprune_lc.core.config import SamplingConfig
from deepprune_lc.core.ports import (
    AnswerProbing,
    GenerationBackend,
    ProbeReply,
    Prompt,
    TraceDelta,
    TraceRequest,
)

__all__ = ["FINISH_REASONS", "BackendConformanceTests", "StopPick", "StreamRecord"]

#: The finish reasons a stream may end with (``TraceDelta.finish_reason`` of its last delta).
FINISH_REASONS = frozenset({"stop", "length", "abort"})

#: How long any one wait in the suite may take before it fails instead of hanging.
_WAIT_S = 60.0

_counter = itertools.count()


@dataclass
class StreamRecord:
    """What one stream delivered, checked against the delta invariants as it arrived."""

    request_id: str
    deltas: list[TraceDelta] = field(default_factory=list)
    ids: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str | None = None
    #: Tokens delivered after the ``abort`` call had returned (0 when never aborted).
    after_abort: int = 0
    aborted: bool = False

    def add(self, delta: TraceDelta) -> None:
        """Record one delta, failing on a delta after the final one or a malformed delta."""
        assert self.finish_reason is None, (
            f"{self.request_id}: a delta arrived after the final one ({self.finish_reason!r})"
        )
        ids = list(delta.token_ids)
        assert all(isinstance(i, int) and not isinstance(i, bool) for i in ids), (
            f"{self.request_id}: token ids must be ints, got {ids!r}"
        )
        assert isinstance(delta.text, str), f"{self.request_id}: text must be a str"
        if delta.finish_reason is None:
            assert ids, f"{self.request_id}: only the final delta may carry no tokens"
        else:
            assert delta.finish_reason in FINISH_REASONS, (
                f"{self.request_id}: finish_reason {delta.finish_reason!r} is not one of "
                f"{sorted(FINISH_REASONS)}"
            )
        self.deltas.append(delta)
        self.ids.extend(ids)
        self.text += delta.text
        if self.aborted:
            self.after_abort += len(ids)
        self.finish_reason = delta.finish_reason

    def check_finished(self) -> None:
        """The stream ended, and its last delta carried the (one) finish reason."""
        assert self.deltas, f"{self.request_id}: the stream ended without a delta"
        assert self.finish_reason is not None, (
            f"{self.request_id}: the stream ended without a finish reason"
        )


@dataclass(frozen=True)
class StopPick:
    """A stop string taken from a reference run, and what a run stopped by it must deliver."""

    stop: str
    #: The reference text before the stop string's first occurrence: the stopped run's text.
    text: str
    #: The reference ids up to and including the token that completes the stop string.
    ids: list[int]
    #: The ids of the delta that completes it: the stopped run's final delta carries them.
    final_ids: list[int]
    #: Index of the token where the stop string starts.
    first_token: int


def _shape(deltas: Sequence[TraceDelta]) -> list[tuple[list[int], str, str | None]]:
    """Deltas as plain values (ids as a list), to compare with what a test expects."""
    return [(list(d.token_ids), d.text, d.finish_reason) for d in deltas]


class BackendConformanceTests:
    """The shared ``GenerationBackend`` contract (module docstring). Subclass it as ``Test...``."""

    # ------------------------------------------------------------------ what a subclass provides

    @pytest.fixture
    def backend(self) -> GenerationBackend:
        """The backend under test (override: usually a session-scoped engine fixture)."""
        raise NotImplementedError("a BackendConformanceTests subclass defines a `backend` fixture")

    @pytest.fixture
    def stopping_backend(self, backend: GenerationBackend) -> GenerationBackend:
        """A backend whose greedy trace on ``prompt`` ends by itself within ``stop_max_tokens``.

        Defaults to ``backend``; engines that test with end-of-sequence ignored (fixed lengths) can
        hand in a sibling on the same engine that honours it.
        """
        return backend

    @pytest.fixture
    def stop_strings_backend(self, stopping_backend: GenerationBackend) -> GenerationBackend:
        """A backend whose greedy text on ``prompt`` varies enough to pick stop strings from.

        The stop-string tests take their stop strings from this backend's own greedy text (so they
        need no knowledge of the model); a model stuck repeating one token would make every stop
        string match at the very start. Defaults to ``stopping_backend``, whose traces are real text.
        """
        return stopping_backend

    @property
    def text_prompt(self) -> str:
        """A plain-text prompt the backend can serve."""
        return "What is 6 times 7? Think step by step."

    @property
    def chat_prompt(self) -> Prompt:
        """A chat prompt the backend can serve."""
        return [{"role": "user", "content": self.text_prompt}]

    @property
    def prompt(self) -> Prompt:
        """The prompt the streams use (the chat prompt unless overridden)."""
        return self.chat_prompt

    @property
    def max_tokens(self) -> int:
        """Budget of short streams (and of the resume-budget test)."""
        return 16

    @property
    def long_max_tokens(self) -> int:
        """Budget of streams that must still be running when they are aborted, closed or cancelled."""
        return 400

    @property
    def concurrent_streams(self) -> int:
        """How many streams the concurrency tests run at once."""
        return 8

    @property
    def concurrent_max_tokens(self) -> int:
        """Budget of each concurrent stream."""
        return 48

    @property
    def sampled_temperature(self) -> float:
        """Temperature of the seeded (not greedy) requests."""
        return 0.8

    @property
    def abort_slack_tokens(self) -> int:
        """Tokens a stream may still deliver after its ``abort`` call returned (0: exact abort).

        An engine that decodes in its own process can have a step in flight when the abort comes;
        the driver tolerates that (and counts it), the suite bounds it.
        """
        return 0

    @property
    def resume_total_tokens(self) -> int:
        """``max_tokens`` of the runs the resume test parks and resumes."""
        return 24

    @property
    def park_points(self) -> tuple[int, ...]:
        """Token counts at which the resume test aborts (parks) a run before resuming it.

        Each must leave room for the abort slack before ``resume_total_tokens``.
        """
        return (1, 7, self.resume_total_tokens - 1 - self.abort_slack_tokens)

    @property
    def resume_exact_when_sampled(self) -> bool:
        """Whether a seeded, sampled trace resumes with what it would have sampled unparked.

        Greedy resume must always be exact. A backend that reseeds a resumed request on purpose
        (so it does not replay the first tokens' random draws) answers False, and the sampled
        variant of the resume test is skipped with that reason.
        """
        return True

    @property
    def min_distinct_reference_ids(self) -> int:
        """Distinct token ids the resume test's uninterrupted run must have (0: no check).

        Guards against a degenerate model (one token repeated) passing the resume test by accident;
        a tiny random model's greedy output is exactly that, so the default asks nothing of greedy
        runs (sampled runs must always have at least two distinct ids).
        """
        return 0

    @property
    def stop_max_tokens(self) -> int | None:
        """Budget within which the greedy trace of ``stopping_backend`` ends by itself ("stop").

        None when no backend at hand ever stops by itself (every engine here ignores end of
        sequence); the stop test is then skipped.
        """
        return None

    @property
    def stop_strings_max_tokens(self) -> int:
        """Budget of the stop-string tests' greedy runs on ``stop_strings_backend``.

        Its greedy text must have a few distinct tokens after the first ``abort_slack_tokens + 3``
        (the stop strings are picked there, so a trace parked at its first token stops later).
        """
        return 48

    @property
    def settle_timeout_s(self) -> float:
        """How long ``assert_nothing_live`` may wait for the backend's state to catch up.

        0 (the default) means a request must be gone as soon as its stream has ended; an engine in
        another process may take a moment to forget a request.
        """
        return 0.0

    @property
    def probe_sees_every_token(self) -> bool:
        """Whether a probe sees at least the tokens its trace's stream had delivered when it was
        asked (an engine probes the ids it holds; a replay of probes recorded at fixed offsets
        answers from the latest offset reached, which may lie before them)."""
        return True

    @property
    def probes_on_this_prompt(self) -> bool:
        """Whether the backend can probe the suite's traces (a replay of text traces records no
        probes; its text-free pools are probed instead). False skips the probe tests."""
        return True

    @property
    def probe_max_tokens(self) -> int:
        """``max_tokens`` of the suite's probes."""
        return 8

    def live_requests(self, backend: GenerationBackend) -> set[str] | None:
        """The ids the backend still holds, read from its own state; None when it cannot tell.

        The default calls ``backend.live_requests()`` when there is one (the replay, transformers
        and vLLM backends have it). Override to add engine state (rows still in a batch, ...).
        """
        probe = getattr(backend, "live_requests", None)
        if probe is None:
            return None
        return set(probe())

    async def assert_nothing_live(self, backend: GenerationBackend) -> None:
        """Fail unless the backend holds no request (within ``settle_timeout_s``).

        Override to wait for engine-specific idleness first (a decode loop winding down, an
        engine-core process that still schedules).
        """
        deadline = time.monotonic() + self.settle_timeout_s
        while True:
            live = self.live_requests(backend)
            if not live:
                return
            if time.monotonic() >= deadline:
                raise AssertionError(f"requests still live: {sorted(live)}")
            await asyncio.sleep(0.02)

    # ------------------------------------------------------------------ helpers for the tests

    def sampling(
        self, max_tokens: int, *, greedy: bool = False, stop: Sequence[str] = ()
    ) -> SamplingConfig:
        """Sampling of the suite's requests: greedy, or seeded at ``sampled_temperature``."""
        return SamplingConfig(
            temperature=0.0 if greedy else self.sampled_temperature,
            top_p=1.0,
            max_tokens=max_tokens,
            stop=tuple(stop),
        )

    def make_request(
        self,
        *,
        max_tokens: int,
        greedy: bool = False,
        seed: int = 0,
        trace_index: int = 0,
        resume: Sequence[int] = (),
        prompt: Prompt | None = None,
        stop: Sequence[str] = (),
    ) -> TraceRequest:
        """A request with an id no other test (or test session on a shared engine) uses."""
        return TraceRequest(
            request_id=f"conformance-{uuid.uuid4().hex[:8]}-{next(_counter)}",
            trace_index=trace_index,
            prompt=self.prompt if prompt is None else prompt,
            sampling=self.sampling(max_tokens, greedy=greedy, stop=stop),
            seed=seed,
            resume_token_ids=tuple(resume),
        )

    async def consume(
        self, backend: GenerationBackend, request: TraceRequest, *, abort_at: int | None = None
    ) -> StreamRecord:
        """Read a stream to its end, calling ``abort`` once ``abort_at`` tokens have arrived."""
        record = StreamRecord(request.request_id)
        async with contextlib.aclosing(_generator(backend.stream(request))) as stream:
            async for delta in stream:
                record.add(delta)
                if (
                    abort_at is not None
                    and not record.aborted
                    and record.finish_reason is None
                    and len(record.ids) >= abort_at
                ):
                    await backend.abort(request.request_id)
                    record.aborted = True
        record.check_finished()
        return record

    def assert_gone_now(self, backend: GenerationBackend, request_id: str) -> None:
        """A request whose stream has ended is gone (only checked when nothing may lag behind)."""
        if self.settle_timeout_s > 0:
            return
        live = self.live_requests(backend)
        if live is not None:
            assert request_id not in live, f"{request_id} still live after its stream ended"

    # ------------------------------------------------------------------ the contract

    def test_backend_satisfies_the_protocol(self, backend: GenerationBackend) -> None:
        assert isinstance(backend, GenerationBackend)

    def test_count_prompt_tokens_for_text_and_chat(self, backend: GenerationBackend) -> None:
        for prompt in (self.text_prompt, self.chat_prompt):
            count = backend.count_prompt_tokens(prompt)
            assert isinstance(count, int) and not isinstance(count, bool)
            assert count > 0, prompt

    @pytest.mark.parametrize("kind", ["chat", "text"])
    async def test_max_tokens_ends_the_stream_with_length(
        self, backend: GenerationBackend, kind: str
    ) -> None:
        prompt = self.chat_prompt if kind == "chat" else self.text_prompt
        request = self.make_request(max_tokens=self.max_tokens, prompt=prompt)
        record = await self.consume(backend, request)
        assert record.finish_reason == "length"
        assert len(record.ids) == self.max_tokens
        assert record.text  # the deltas carry text as well as ids
        self.assert_gone_now(backend, request.request_id)
        await self.assert_nothing_live(backend)

    async def test_a_trace_that_ends_by_itself_finishes_with_stop(
        self, stopping_backend: GenerationBackend
    ) -> None:
        budget = self.stop_max_tokens
        if budget is None:
            pytest.skip("no backend at hand stops by itself (end of sequence is ignored)")
        request = self.make_request(max_tokens=budget, greedy=True)
        record = await self.consume(stopping_backend, request)
        assert record.finish_reason == "stop"
        assert len(record.ids) <= budget
        self.assert_gone_now(stopping_backend, request.request_id)
        await self.assert_nothing_live(stopping_backend)

    async def test_abort_of_an_unknown_or_finished_request_is_a_no_op(
        self, backend: GenerationBackend
    ) -> None:
        await backend.abort(f"never-started-{uuid.uuid4().hex}")
        request = self.make_request(max_tokens=4, greedy=True)
        first = await self.consume(backend, request)
        await backend.abort(request.request_id)  # finished: nothing to stop
        assert first.finish_reason == "length" and len(first.ids) == 4
        # A later request with the same id is not hit by the earlier, no-op abort.
        again = await self.consume(backend, request)
        assert (again.ids, again.finish_reason) == (first.ids, "length")
        await self.assert_nothing_live(backend)

    async def test_abort_before_the_first_token_ends_the_stream_with_abort(
        self, backend: GenerationBackend
    ) -> None:
        request = self.make_request(max_tokens=self.long_max_tokens)
        record = StreamRecord(request.request_id)
        stream = _generator(backend.stream(request))
        try:
            first = asyncio.ensure_future(stream.__anext__())
            await asyncio.sleep(0)  # the stream is open; its request may not have started yet
            await backend.abort(request.request_id)
            record.aborted = True
            record.add(await asyncio.wait_for(first, _WAIT_S))
            while record.finish_reason is None:
                record.add(await asyncio.wait_for(stream.__anext__(), _WAIT_S))
            with pytest.raises(StopAsyncIteration):  # nothing after the final delta
                await asyncio.wait_for(stream.__anext__(), _WAIT_S)
        finally:
            await stream.aclose()
        assert record.finish_reason == "abort", record.finish_reason
        # The abort was not lost: at most the delta already on its way, and the engine's slack.
        assert len(record.ids) <= 1 + self.abort_slack_tokens, len(record.ids)
        self.assert_gone_now(backend, request.request_id)
        await self.assert_nothing_live(backend)

    async def test_abort_mid_stream_keeps_exactly_the_tokens_produced(
        self, backend: GenerationBackend
    ) -> None:
        total, k = self.resume_total_tokens, self.park_points[-1]
        assert k > 0 and k + self.abort_slack_tokens < total, "park_points do not fit the budget"
        reference = await self.consume(backend, self.make_request(max_tokens=total, seed=11))
        request = self.make_request(max_tokens=total, seed=11)
        parked = await self.consume(backend, request, abort_at=k)
        assert parked.finish_reason == "abort"
        assert parked.after_abort <= self.abort_slack_tokens
        assert k <= len(parked.ids) <= k + self.abort_slack_tokens
        # What the engine produced before the abort took effect: a prefix of the same seeded run
        # left alone, nothing invented, dropped or repeated.
        assert parked.ids == reference.ids[: len(parked.ids)]
        if self.abort_slack_tokens == 0:
            assert _shape(parked.deltas[-1:]) == [([], "", "abort")]
        self.assert_gone_now(backend, request.request_id)
        await self.assert_nothing_live(backend)

    async def test_abort_from_another_task_ends_the_stream(
        self, backend: GenerationBackend
    ) -> None:
        """The driver's way: a trace's task reads the stream, another task aborts it."""
        request = self.make_request(max_tokens=self.long_max_tokens)
        record = StreamRecord(request.request_id)
        enough = asyncio.Event()

        async def read() -> None:
            async with contextlib.aclosing(_generator(backend.stream(request))) as stream:
                async for delta in stream:
                    record.add(delta)
                    if len(record.ids) >= 3:
                        enough.set()

        reader = asyncio.ensure_future(read())
        try:
            await asyncio.wait_for(enough.wait(), _WAIT_S)
            await backend.abort(request.request_id)
            record.aborted = True
            await asyncio.wait_for(reader, _WAIT_S)
        finally:
            if not reader.done():
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reader
        record.check_finished()
        assert record.finish_reason == "abort"
        assert record.after_abort <= self.abort_slack_tokens
        assert len(record.ids) < self.long_max_tokens
        self.assert_gone_now(backend, request.request_id)
        await self.assert_nothing_live(backend)

    @pytest.mark.parametrize("mode", ["greedy", "sampled"])
    async def test_resume_continues_token_exact(
        self, backend: GenerationBackend, mode: str
    ) -> None:
        if mode == "sampled" and not self.resume_exact_when_sampled:
            pytest.skip("this backend reseeds resumed requests: only greedy resume is exact")
        greedy, total, slack = mode == "greedy", self.resume_total_tokens, self.abort_slack_tokens
        whole = await self.consume(
            backend, self.make_request(max_tokens=total, greedy=greedy, seed=5)
        )
        assert whole.finish_reason == "length" and len(whole.ids) == total
        # A sampled run that repeats one token would mean the seed or temperature was ignored.
        distinct = (
            self.min_distinct_reference_ids if greedy else max(2, self.min_distinct_reference_ids)
        )
        assert len(set(whole.ids)) >= distinct, whole.ids
        for k in self.park_points:
            assert k > 0 and k + slack < total, f"park point {k} does not fit the budget"
            parked = await self.consume(
                backend, self.make_request(max_tokens=total, greedy=greedy, seed=5), abort_at=k
            )
            assert parked.finish_reason == "abort", (k, parked.finish_reason)
            assert k <= len(parked.ids) <= k + slack
            resume = tuple(parked.ids)
            resumed = await self.consume(
                backend,
                self.make_request(max_tokens=total, greedy=greedy, seed=5, resume=resume),
            )
            # The continuation starts right after the kept ids (nothing re-emitted) and is what
            # the trace would have produced had it never been parked; so is the text.
            assert parked.ids + resumed.ids == whole.ids, k
            assert resumed.finish_reason == "length"
            assert parked.text + resumed.text == whole.text, k
        await self.assert_nothing_live(backend)

    async def test_resumed_tokens_count_toward_max_tokens(self, backend: GenerationBackend) -> None:
        budget = self.max_tokens
        reference = await self.consume(
            backend, self.make_request(max_tokens=budget + 2, greedy=True)
        )
        ids = reference.ids
        assert len(ids) == budget + 2
        resumed = await self.consume(
            backend, self.make_request(max_tokens=budget, greedy=True, resume=ids[:3])
        )
        assert resumed.ids == ids[3:budget]  # max_tokens bounds resumed + new tokens
        assert resumed.finish_reason == "length"
        for kept in (budget, budget + 1):  # at the budget, and past it: nothing more to produce
            request = self.make_request(max_tokens=budget, greedy=True, resume=ids[:kept])
            at_budget = await self.consume(backend, request)
            assert _shape(at_budget.deltas) == [([], "", "length")], kept
            self.assert_gone_now(backend, request.request_id)
        await self.assert_nothing_live(backend)

    async def test_closing_a_stream_early_leaves_nothing_live(
        self, backend: GenerationBackend
    ) -> None:
        request = self.make_request(max_tokens=self.long_max_tokens)
        stream = _generator(backend.stream(request))
        record = StreamRecord(request.request_id)
        for _ in range(3):
            record.add(await asyncio.wait_for(stream.__anext__(), _WAIT_S))
        live = self.live_requests(backend)
        if live is not None:
            assert request.request_id in live  # really running before the close
        await asyncio.wait_for(stream.aclose(), _WAIT_S)
        live = self.live_requests(backend)
        if live is not None:  # aclose returns once the request is gone
            assert request.request_id not in live
        # A stream closed before its first delta never starts anything.
        unstarted = self.make_request(max_tokens=self.long_max_tokens)
        await _generator(backend.stream(unstarted)).aclose()
        await backend.abort(unstarted.request_id)
        await self.assert_nothing_live(backend)

    async def test_cancelling_the_reader_leaves_nothing_live(
        self, backend: GenerationBackend
    ) -> None:
        request = self.make_request(max_tokens=self.long_max_tokens)
        started = asyncio.Event()

        async def read() -> None:
            async with contextlib.aclosing(_generator(backend.stream(request))) as stream:
                async for _ in stream:
                    started.set()

        reader = asyncio.ensure_future(read())
        await asyncio.wait_for(started.wait(), _WAIT_S)
        live = self.live_requests(backend)
        if live is not None:
            assert request.request_id in live  # decoding when cancelled
        reader.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reader
        self.assert_gone_now(backend, request.request_id)
        await self.assert_nothing_live(backend)

    async def test_many_concurrent_streams_complete_independently(
        self, backend: GenerationBackend
    ) -> None:
        n, length = self.concurrent_streams, self.concurrent_max_tokens
        arrivals: list[int] = []

        async def one(i: int) -> StreamRecord:
            request = self.make_request(max_tokens=length, seed=i, trace_index=i)
            record = StreamRecord(request.request_id)
            async with contextlib.aclosing(_generator(backend.stream(request))) as stream:
                async for delta in stream:
                    record.add(delta)
                    arrivals.append(i)
            record.check_finished()
            return record

        records = await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(n))), _WAIT_S)
        assert [len(r.ids) for r in records] == [length] * n
        assert {r.finish_reason for r in records} == {"length"}
        # Interleaved, not one after another: every stream had delivered before the first ended.
        first_done = min(len(arrivals) - 1 - arrivals[::-1].index(i) for i in range(n))
        assert set(arrivals[: first_done + 1]) == set(range(n))
        assert len({tuple(r.ids) for r in records}) > 1  # each its own trace, not one copied
        await self.assert_nothing_live(backend)

    async def test_aborting_some_concurrent_streams_leaves_the_others_whole(
        self, backend: GenerationBackend
    ) -> None:
        length, k = self.concurrent_max_tokens, 3
        requests = [self.make_request(max_tokens=length, seed=i, trace_index=i) for i in range(4)]
        records = await asyncio.wait_for(
            asyncio.gather(
                *(
                    self.consume(backend, r, abort_at=k if i < 2 else None)
                    for i, r in enumerate(requests)
                )
            ),
            _WAIT_S,
        )
        for record in records[:2]:
            assert record.finish_reason == "abort"
            assert k <= len(record.ids) <= k + self.abort_slack_tokens
        for record in records[2:]:
            assert (len(record.ids), record.finish_reason) == (length, "length")
        await self.assert_nothing_live(backend)

    # ------------------------------------------------------------------ answer probes

    def probing(self, backend: GenerationBackend) -> AnswerProbing:
        """The backend as an ``AnswerProbing``; the test is skipped when it is not one."""
        if not isinstance(backend, AnswerProbing):
            pytest.skip(f"{type(backend).__name__} does not answer probes (no AnswerProbing)")
        if not self.probes_on_this_prompt:
            pytest.skip(f"{type(backend).__name__} cannot probe the suite's traces")
        return backend

    def check_probe_reply(
        self, reply: ProbeReply, *, delivered: int, total: int, max_tokens: int
    ) -> None:
        """What any probe reply must hold, whatever the model says (a tiny model says noise)."""
        assert isinstance(reply, ProbeReply), type(reply).__name__
        assert isinstance(reply.text, str)
        assert reply.answer is None or isinstance(reply.answer, str)
        low = delivered if self.probe_sees_every_token else 0
        assert low <= reply.at_tokens <= total, (delivered, reply.at_tokens, total)
        # An answer observed earlier (a recording's last recorded probe) was observed in the past.
        assert reply.observed_at is None or 0 < reply.observed_at <= reply.at_tokens, reply
        assert 0 <= reply.decoded_tokens <= max_tokens, reply.decoded_tokens
        assert reply.prefill_tokens >= 0 and reply.seconds >= 0.0
        if reply.prefill_tokens:  # a model ran: it read the prompt, the trace and the suffix
            assert reply.prefill_tokens > reply.at_tokens, (reply.prefill_tokens, reply.at_tokens)

    @pytest.mark.parametrize("mode", ["greedy", "sampled"])
    async def test_a_probed_trace_completes_token_exact(
        self, backend: GenerationBackend, mode: str
    ) -> None:
        """Probed twice mid-stream, a trace produces exactly the ids of the same trace unprobed."""
        probing = self.probing(backend)
        greedy, total, budget = mode == "greedy", self.resume_total_tokens, self.probe_max_tokens
        reference = await self.consume(
            backend, self.make_request(max_tokens=total, greedy=greedy, seed=13)
        )
        assert reference.finish_reason == "length" and len(reference.ids) == total
        request = self.make_request(max_tokens=total, greedy=greedy, seed=13)
        record = StreamRecord(request.request_id)
        points = (2, total // 2)
        replies: list[ProbeReply] = []
        async with contextlib.aclosing(_generator(backend.stream(request))) as stream:
            async for delta in stream:
                record.add(delta)
                due = len(replies) < len(points) and len(record.ids) >= points[len(replies)]
                if record.finish_reason is None and due:
                    delivered = len(record.ids)
                    reply = await asyncio.wait_for(
                        probing.probe(request.request_id, max_tokens=budget), _WAIT_S
                    )
                    self.check_probe_reply(
                        reply, delivered=delivered, total=total, max_tokens=budget
                    )
                    replies.append(reply)
        record.check_finished()
        assert len(replies) == len(points)
        assert replies[0].at_tokens <= replies[1].at_tokens
        # The probes left the trace alone: the same ids, text and end as never probed.
        assert record.ids == reference.ids
        assert record.text == reference.text
        assert record.finish_reason == reference.finish_reason
        self.assert_gone_now(backend, request.request_id)
        await self.assert_nothing_live(backend)

    async def test_a_probe_with_its_own_suffix_and_budget(self, backend: GenerationBackend) -> None:
        probing = self.probing(backend)
        total = self.resume_total_tokens
        request = self.make_request(max_tokens=total, greedy=True)
        record = StreamRecord(request.request_id)
        reply: ProbeReply | None = None
        async with contextlib.aclosing(_generator(backend.stream(request))) as stream:
            async for delta in stream:
                record.add(delta)
                if reply is None and record.finish_reason is None and len(record.ids) >= 3:
                    reply = await asyncio.wait_for(
                        probing.probe(request.request_id, suffix=" The answer is", max_tokens=1),
                        _WAIT_S,
                    )
        record.check_finished()
        assert reply is not None
        self.check_probe_reply(reply, delivered=3, total=total, max_tokens=1)
        assert record.finish_reason == "length" and len(record.ids) == total
        await self.assert_nothing_live(backend)

    async def test_probing_an_unknown_request_raises_key_error(
        self, backend: GenerationBackend
    ) -> None:
        probing = self.probing(backend)
        with pytest.raises(KeyError):
            await asyncio.wait_for(probing.probe(f"never-started-{uuid.uuid4().hex}"), _WAIT_S)
        await self.assert_nothing_live(backend)

    # ------------------------------------------------------------------ stop strings

    async def stop_reference(self, backend: GenerationBackend) -> StreamRecord:
        """The greedy run the stop-string tests pick their stop strings from (no stop strings)."""
        return await self.consume(
            backend, self.make_request(max_tokens=self.stop_strings_max_tokens, greedy=True)
        )

    async def reference_and_stop(
        self, backend: GenerationBackend, *, mid_token: bool, attempts: int = 3
    ) -> tuple[StreamRecord, StopPick]:
        """A greedy reference and a stop string picked from it (``pick_stop``).

        Tried up to ``attempts`` times: a backend behind an HTTP server may merge a lagging
        client's deltas into multi-token chunks, and a reference merged throughout has no three
        single-token deltas to pick from; the next greedy run is the same text, streamed afresh.
        """
        for _ in range(attempts - 1):
            reference = await self.stop_reference(backend)
            pick = self.find_stop(reference, mid_token=mid_token)
            if pick is not None:
                return reference, pick
        reference = await self.stop_reference(backend)
        return reference, self.pick_stop(reference, mid_token=mid_token)

    def pick_stop(self, reference: StreamRecord, *, mid_token: bool) -> StopPick:
        """``find_stop``, failing with the reference text when there is nothing to pick."""
        pick = self.find_stop(reference, mid_token=mid_token)
        if pick is None:
            raise AssertionError(
                "no stop string could be picked from the reference text (override "
                f"stop_strings_backend or prompt): {reference.text!r}"
            )
        return pick

    def find_stop(self, reference: StreamRecord, *, mid_token: bool) -> StopPick | None:
        """A stop string spanning three single-token deltas of ``reference`` (first found where it
        starts, past the first ``abort_slack_tokens + 3`` tokens), or None.

        ``mid_token``: the stop string ends after the first character of its third token, so the
        token that completes it has text after the stop string (dropped with it).
        """
        deltas = reference.deltas
        offsets = list(itertools.accumulate((len(d.text) for d in deltas), initial=0))
        id_counts = list(itertools.accumulate((len(d.token_ids) for d in deltas), initial=0))
        for k in range(len(deltas) - 3):
            if id_counts[k] < self.abort_slack_tokens + 3:
                continue
            if any(len(deltas[k + i].token_ids) != 1 for i in range(3)):
                continue  # a merged chunk: which of its tokens completes a stop is not visible
            a, b, c = (deltas[k + i].text for i in range(3))
            if not (a and b and c) or (mid_token and len(c) < 2):
                continue
            stop = a + b + (c[:1] if mid_token else c)
            if reference.text.find(stop) != offsets[k]:
                continue  # it occurs earlier: keep looking for a first occurrence
            return StopPick(
                stop=stop,
                text=reference.text[: offsets[k]],
                ids=reference.ids[: id_counts[k + 3]],
                final_ids=list(deltas[k + 2].token_ids),
                first_token=id_counts[k],
            )
        return None

    @pytest.mark.parametrize("where", ["token-boundary", "mid-token"])
    async def test_stop_strings_end_the_text_right_before_the_stop_string(
        self, stop_strings_backend: GenerationBackend, where: str
    ) -> None:
        backend = stop_strings_backend
        reference, pick = await self.reference_and_stop(backend, mid_token=where == "mid-token")
        # Listed first but completing later (it ends one character after the picked one): the
        # stop string that completes first wins, whatever the order of the list.
        later = reference.text[len(pick.text) + 1 : len(pick.text) + len(pick.stop) + 1]
        if reference.text.find(later) + len(later) <= len(pick.text) + len(pick.stop):
            later = "\x00never"
        request = self.make_request(
            max_tokens=self.stop_strings_max_tokens, greedy=True, stop=(later, pick.stop)
        )
        record = await self.consume(backend, request)
        assert record.finish_reason == "stop"
        # Nothing of the stop string was streamed, not even the tokens before the one completing it.
        assert record.text == pick.text, (pick.stop, record.text)
        # The ids run up to and including the token that completed the stop string, the last delta's.
        assert record.ids == pick.ids
        assert list(record.deltas[-1].token_ids) == pick.final_ids
        self.assert_gone_now(backend, request.request_id)
        await self.assert_nothing_live(backend)

    async def test_stop_strings_that_never_complete_change_nothing(
        self, stop_strings_backend: GenerationBackend
    ) -> None:
        backend = stop_strings_backend
        reference, pick = await self.reference_and_stop(backend, mid_token=False)
        # Each begins like the text (a stretch mid-way, and the very end) and then never matches:
        # what was held back while it might have is released, mid-stream and at the end.
        stops = (pick.stop[:-1] + "\x00", reference.text[-3:] + "\x00")
        request = self.make_request(
            max_tokens=self.stop_strings_max_tokens, greedy=True, stop=stops
        )
        record = await self.consume(backend, request)
        assert (record.ids, record.text, record.finish_reason) == (
            reference.ids,
            reference.text,
            reference.finish_reason,
        )
        await self.assert_nothing_live(backend)

    async def test_stop_strings_on_a_parked_and_resumed_trace(
        self, stop_strings_backend: GenerationBackend
    ) -> None:
        backend = stop_strings_backend
        _, pick = await self.reference_and_stop(backend, mid_token=True)
        budget, stops = self.stop_strings_max_tokens, (pick.stop,)
        whole = await self.consume(
            backend, self.make_request(max_tokens=budget, greedy=True, stop=stops)
        )
        assert (whole.finish_reason, whole.text) == ("stop", pick.text)
        parked = await self.consume(
            backend, self.make_request(max_tokens=budget, greedy=True, stop=stops), abort_at=1
        )
        assert parked.finish_reason == "abort"
        assert len(parked.ids) < pick.first_token  # parked before the stop string began
        resumed = await self.consume(
            backend,
            self.make_request(max_tokens=budget, greedy=True, stop=stops, resume=parked.ids),
        )
        # Parked, then resumed: the same ids, the same text and the same stop as unparked.
        assert resumed.finish_reason == "stop"
        assert parked.ids + resumed.ids == whole.ids
        assert parked.text + resumed.text == whole.text
        await self.assert_nothing_live(backend)


def _generator(stream: AsyncIterator[TraceDelta]) -> AsyncGenerator[TraceDelta, None]:
    """The stream, checked to be closable: a caller that stops early must be able to ``aclose`` it.

    The port types ``stream`` as an ``AsyncIterator``; the driver closes what it stops reading, so
    a conforming backend returns an async generator (or anything with ``aclose``).
    """
    assert callable(getattr(stream, "aclose", None)), (
        f"stream() returned {type(stream).__name__}, which has no aclose(): return an async "
        "generator so a caller that stops early can release the request"
    )
    return cast(AsyncGenerator[TraceDelta, None], stream)
