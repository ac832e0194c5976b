"""ReplayBackend: exact replay, interleaving, pacing, prompts, resume checks, synthetic pools.

The backend contract every backend shares (abort, resume, budgets, closing, concurrency) is the
shared suite's: ``test_backend_conformance.py`` runs it on the replay backend.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from contextlib import aclosing

import pytest

from deepprune_lc.backends import ReplayBackend
from deepprune_lc.backends.pool import PoolProblem, PoolTrace, TracePool
from deepprune_lc.backends.tokenizer import RegexTokenizer
from deepprune_lc.core.config import SamplingConfig
from deepprune_lc.core.ports import TraceDelta, TraceRequest

PROBLEM = "Sam has 3 apples and buys 4 more. How many apples does he have?"
TRACES = [
    "First, Sam has 3 apples. Then he buys 4 more, so 3 + 4 = 7. Therefore \\boxed{7}.",
    "So we add: 3 + 4 = 7. Wait, let me check: 7 - 4 = 3. Yes. The answer is \\boxed{7}.",
    "Sam buys 4 more, which means 3 * 4 = 12. Therefore \\boxed{12}.",
]


def _pool() -> TracePool:
    problem = PoolProblem(
        id="apples", problem=PROBLEM, answer="7", traces=[PoolTrace(text=t) for t in TRACES]
    )
    other = PoolProblem(id="other", problem="What is 1+1?", traces=[PoolTrace(text="2")])
    return TracePool(problems=[problem, other], source="test-pool")


def _request(
    request_id: str = "r0",
    trace_index: int = 0,
    *,
    prompt: str | list[dict[str, str]] = PROBLEM,
    max_tokens: int = 2048,
    resume: tuple[int, ...] = (),
) -> TraceRequest:
    return TraceRequest(
        request_id=request_id,
        trace_index=trace_index,
        prompt=prompt,
        sampling=SamplingConfig(max_tokens=max_tokens),
        seed=0,
        resume_token_ids=resume,
    )


async def _collect(stream: AsyncIterator[TraceDelta]) -> list[TraceDelta]:
    return [delta async for delta in stream]


def test_default_tokenizer_is_the_documented_approximation() -> None:
    assert ReplayBackend(_pool()).tokenizer.name == "regex-bpe-approx-v1"


async def test_streams_the_exact_text_one_token_per_delta() -> None:
    backend = ReplayBackend(_pool())
    for index, text in enumerate(TRACES):
        deltas = await _collect(backend.stream(_request(f"r{index}", index)))
        assert "".join(d.text for d in deltas) == text
        assert all(len(d.token_ids) == 1 for d in deltas)
        ids = [d.token_ids[0] for d in deltas]
        assert backend.tokenizer.decode(ids) == text
        assert len(ids) == backend.tokenizer.count(text)
        assert [d.finish_reason for d in deltas[:-1]] == [None] * (len(deltas) - 1)
        assert deltas[-1].finish_reason == "stop"
        assert deltas[-1].token_ids  # the last token carries the finish reason
    assert backend.live_requests() == set()


async def test_trace_index_cycles_or_errors() -> None:
    backend = ReplayBackend(_pool())
    deltas = await _collect(backend.stream(_request("r", len(TRACES) + 1)))
    assert "".join(d.text for d in deltas) == TRACES[1]

    strict = ReplayBackend(_pool(), reuse="error")
    with pytest.raises(ValueError, match="trace_index: 3 out of range"):
        await _collect(strict.stream(_request("r", 3)))
    assert strict.live_requests() == set()


async def test_chat_messages_prompt_uses_last_user_message() -> None:
    backend = ReplayBackend(_pool())
    messages = [
        {"role": "system", "content": "Reason step by step."},
        {"role": "user", "content": "What is 1+1?"},
        {"role": "assistant", "content": "Let me think."},
        {"role": "user", "content": f"Please solve: {PROBLEM}"},
    ]
    deltas = await _collect(backend.stream(_request("r", 2, prompt=messages)))
    assert "".join(d.text for d in deltas) == TRACES[2]
    with pytest.raises(ValueError, match="no user message"):
        await _collect(
            backend.stream(_request("r", 0, prompt=[{"role": "system", "content": "x"}]))
        )


async def test_unknown_prompt_names_pool_and_prompt_head() -> None:
    backend = ReplayBackend(_pool())
    prompt = "An entirely different question " * 5
    with pytest.raises(ValueError) as info:
        await _collect(backend.stream(_request(prompt=prompt)))
    message = str(info.value)
    assert message.startswith("prompt not found in replay pool test-pool: ")
    assert repr(prompt.strip()[:60]) in message
    assert message.endswith("...")
    assert backend.live_requests() == set()


async def test_concurrent_streams_interleave() -> None:
    backend = ReplayBackend.synthetic(2, 64, yield_every=4)
    order: list[str] = []

    async def consume(request_id: str, index: int) -> None:
        async for _ in backend.stream(_request(request_id, index, prompt="synthetic")):
            order.append(request_id)

    await asyncio.gather(consume("a", 0), consume("b", 1))
    assert order.count("a") == order.count("b") == 64
    # Switches between the two streams happen at most every `yield_every` tokens.
    switches = sum(1 for x, y in itertools.pairwise(order) if x != y)
    assert switches >= 64 // 4
    longest_run = max(len(list(run)) for _, run in itertools.groupby(order))
    assert longest_run <= 4


async def test_seconds_per_token_paces_every_token(monkeypatch: pytest.MonkeyPatch) -> None:
    sleeps: list[float] = []
    real_sleep = asyncio.sleep

    async def fake_sleep(delay: float) -> None:
        sleeps.append(delay)
        await real_sleep(0)

    monkeypatch.setattr(asyncio, "sleep", fake_sleep)
    backend = ReplayBackend(_pool(), seconds_per_token=0.01)
    deltas = await _collect(backend.stream(_request()))
    assert sleeps == [0.01] * len(deltas)


async def test_yield_every_yields_to_the_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    sleeps: list[float] = []
    real_sleep = asyncio.sleep

    async def fake_sleep(delay: float) -> None:
        sleeps.append(delay)
        await real_sleep(0)

    monkeypatch.setattr(asyncio, "sleep", fake_sleep)
    backend = ReplayBackend.synthetic(1, 100, yield_every=10)
    deltas = await _collect(backend.stream(_request(prompt="synthetic")))
    assert len(deltas) == 100
    assert sleeps == [0] * 9  # between the 10 chunks of 10, not before the first


async def test_abort_during_paced_sleep_is_exact() -> None:
    backend = ReplayBackend(_pool(), seconds_per_token=0.001)
    received: list[TraceDelta] = []

    async def consume() -> None:
        async for delta in backend.stream(_request("r")):
            received.append(delta)

    task = asyncio.create_task(consume())
    while len(received) < 3:
        await asyncio.sleep(0.0005)
    await backend.abort("r")
    count_at_abort = len(received)
    await task
    assert len(received) == count_at_abort + 1
    assert received[-1] == TraceDelta((), "", "abort")
    assert backend.live_requests() == set()


async def test_resume_runs_to_the_end_of_the_recording() -> None:
    """A resumed trace ends with "stop" where the recording ends; resumed at the end, at once.

    (Token-exact resume within a budget is the shared backend suite's, test_backend_conformance.)
    """
    backend = ReplayBackend(_pool())
    full = await _collect(backend.stream(_request("full", 1)))
    full_ids = tuple(d.token_ids[0] for d in full)
    for k in (1, 5, len(full_ids) - 1):
        resumed = await _collect(backend.stream(_request(f"res{k}", 1, resume=full_ids[:k])))
        resumed_ids = tuple(i for d in resumed for i in d.token_ids)
        assert full_ids[:k] + resumed_ids == full_ids
        assert "".join(d.text for d in full[:k] + resumed) == TRACES[1]
        assert resumed[-1].finish_reason == "stop"

    at_end = await _collect(backend.stream(_request("end", 1, resume=full_ids)))
    assert at_end == [TraceDelta((), "", "stop")]
    assert backend.live_requests() == set()


async def test_resume_with_wrong_ids_raises() -> None:
    backend = ReplayBackend(_pool())
    full_ids = backend.trace_token_ids("apples", 0)
    wrong = (*full_ids[:3], full_ids[3] + 1000)
    with pytest.raises(ValueError, match=r"resume ids do not match trace 0 .* at position 3"):
        await _collect(backend.stream(_request(resume=wrong)))
    too_long = (*full_ids, 1)
    with pytest.raises(ValueError, match="resume ids do not match trace"):
        await _collect(backend.stream(_request(resume=too_long)))
    assert backend.live_requests() == set()


async def test_max_tokens_equal_to_the_trace_length_ends_with_stop() -> None:
    """The trace ended by itself at the budget: "stop", not "length" (budgets: the shared suite)."""
    backend = ReplayBackend(_pool())
    full_ids = backend.trace_token_ids("apples", 0)
    exact = await _collect(backend.stream(_request(max_tokens=len(full_ids))))
    assert exact[-1].finish_reason == "stop"


async def test_cancellation_removes_the_request() -> None:
    backend = ReplayBackend(_pool(), seconds_per_token=10.0)
    started = asyncio.Event()

    async def consume() -> None:
        async with aclosing(backend.stream(_request("r"))) as stream:
            started.set()
            async for _ in stream:
                pass

    task = asyncio.create_task(consume())
    await started.wait()
    await asyncio.sleep(0)  # let the stream start its first (long) sleep
    assert backend.live_requests() == {"r"}
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert backend.live_requests() == set()


async def test_duplicate_live_request_id_is_rejected() -> None:
    backend = ReplayBackend(_pool())
    async with aclosing(backend.stream(_request("r"))) as first:
        await anext(first)
        with pytest.raises(ValueError, match="already streaming"):
            await _collect(backend.stream(_request("r", 1)))
        assert backend.live_requests() == {"r"}
    assert backend.live_requests() == set()


def test_count_prompt_tokens() -> None:
    tok = RegexTokenizer()
    backend = ReplayBackend(_pool(), tokenizer=tok)
    assert backend.tokenizer is tok
    assert backend.count_prompt_tokens(PROBLEM) == tok.count(PROBLEM)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": PROBLEM}]
    assert backend.count_prompt_tokens(messages) == tok.count("Be brief.") + tok.count(PROBLEM)


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"seconds_per_token": -1.0}, "seconds_per_token"),
        ({"seconds_per_token": float("nan")}, "seconds_per_token"),
        ({"yield_every": 0}, "yield_every"),
        ({"reuse": "wrap"}, "reuse"),
    ],
)
def test_constructor_validates_arguments(kwargs: dict[str, object], argument: str) -> None:
    with pytest.raises(ValueError, match=argument):
        ReplayBackend(_pool(), **kwargs)  # type: ignore[arg-type]


def test_constructor_rejects_empty_pool() -> None:
    with pytest.raises(ValueError, match="pool"):
        ReplayBackend(TracePool(problems=[]))


async def test_synthetic_pool_shape_answers_and_tokenisation() -> None:
    backend = ReplayBackend.synthetic(6, 200, answers=["42", "17"], prompt="Q?")
    problem = backend.pool.by_id("synthetic")
    assert problem.answer == "42"
    assert len(problem.traces) == 6
    for i, trace in enumerate(problem.traces):
        expected = ["42", "17"][i % 2]
        assert trace.reference_answer == expected
        assert trace.text.endswith(f"\\boxed{{{expected}}}.")
        assert not trace.text.startswith(" ")
        # Pre-built token ids are exactly what the tokenizer gives for the text.
        ids = backend.trace_token_ids("synthetic", i)
        assert len(ids) == 200
        assert list(ids) == backend.tokenizer.encode(trace.text)
        words = trace.text.lower().split()
        assert {"so", "then", "therefore"} & set(w.strip(",.") for w in words)
    deltas = await _collect(backend.stream(_request("s", 3, prompt="Q?")))
    assert "".join(d.text for d in deltas) == problem.traces[3].text


def test_synthetic_is_deterministic_and_validates() -> None:
    a = ReplayBackend.synthetic(3, 50, seed=1)
    b = ReplayBackend.synthetic(3, 50, seed=1)
    assert [t.text for t in a.pool.problems[0].traces] == [
        t.text for t in b.pool.problems[0].traces
    ]
    with pytest.raises(ValueError, match="n_traces"):
        ReplayBackend.synthetic(0, 10)
    with pytest.raises(ValueError, match="answers"):
        ReplayBackend.synthetic(2, 10, answers=[])


def test_synthetic_builds_benchmark_scale_pools() -> None:
    backend = ReplayBackend.synthetic(512, 2000, answers=["1", "2", "3"])
    traces = backend.pool.problems[0].traces
    assert len(traces) == 512
    assert all(len(backend.trace_token_ids("synthetic", i)) == 2000 for i in (0, 255, 511))
    assert traces[511].reference_answer == "2"
