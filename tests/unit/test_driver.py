"""The driver end to end on the replay backend: results, events, failures, cancellation, deadlines."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
from pydantic import ValidationError

from deepprune_lc import (
    DeepPrune,
    DeepPruneError,
    GenerationError,
    JudgeError,
    LexicalJudge,
    PruningConfig,
    ReplayBackend,
    SamplingConfig,
    SelfConsistency,
    TokensPrefix,
    TraceDelta,
    TraceRequest,
)
from deepprune_lc.backends.pool import PoolProblem, PoolTrace, TracePool
from deepprune_lc.core.events import (
    RunCompleted,
    TraceClustered,
    TraceParked,
    TracePruned,
    TraceResumed,
)
from deepprune_lc.testing import ConstantJudge, FailingJudge

QUESTION = "What is 6 times 7?"


def _trace(answer: str, variant: int) -> str:
    steps = " ".join(
        f"Step {i}: so we multiply and then check the value {variant}." for i in range(12)
    )
    return f"First, let me think. {steps} Therefore the answer is \\boxed{{{answer}}}."


@pytest.fixture
def pool() -> TracePool:
    answers = ["42", "42", "42", "41", "42", "42", "40", "42"]
    traces = [PoolTrace(text=_trace(a, i)) for i, a in enumerate(answers)]
    return TracePool(problems=[PoolProblem(id="q", problem=QUESTION, answer="42", traces=traces)])


@pytest.fixture
def backend(pool: TracePool) -> ReplayBackend:
    return ReplayBackend(pool, yield_every=1)


class FailingBackend:
    """Fault injection: trace ``bad`` raises after ``after`` tokens (a real engine cannot be made to)."""

    def __init__(self, inner: ReplayBackend, bad: int, after: int) -> None:
        self.inner, self.bad, self.after = inner, bad, after

    async def stream(self, request: TraceRequest) -> AsyncIterator[TraceDelta]:
        count = 0
        async with contextlib.aclosing(self.inner.stream(request)) as deltas:
            async for delta in deltas:
                if request.trace_index == self.bad and count >= self.after:
                    raise ConnectionError("engine died")
                count += 1
                yield delta

    async def abort(self, request_id: str) -> None:
        await self.inner.abort(request_id)

    def count_prompt_tokens(self, prompt: object) -> int:
        return 0


class DeafBackend(FailingBackend):
    """Fault injection: ignores abort calls entirely."""

    async def stream(self, request: TraceRequest) -> AsyncIterator[TraceDelta]:
        async with contextlib.aclosing(self.inner.stream(request)) as deltas:
            async for delta in deltas:
                yield delta

    async def abort(self, request_id: str) -> None:
        return None


def _full_ids(backend: ReplayBackend, trace: int) -> tuple[int, ...]:
    return backend.trace_token_ids("q", trace)


# --- configuration and input -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "kwargs", "field"),
    [
        (PruningConfig, {"n_traces": 0}, "n_traces"),
        (PruningConfig, {"threshold": 1.5}, "threshold"),
        (PruningConfig, {"policy": "best"}, "policy"),
        (PruningConfig, {"on_judge_error": "ignore"}, "on_judge_error"),
        (PruningConfig, {"prefix": {"kind": "sentences", "k": 3}}, "prefix"),
        (PruningConfig, {"deadline_s": -1}, "deadline_s"),
        (PruningConfig, {"surprise": 1}, "surprise"),
        (SamplingConfig, {"top_k": 0}, "top_k"),
        (SamplingConfig, {"temperature": -0.1}, "temperature"),
        (TokensPrefix, {"k": 0}, "k"),
    ],
)
def test_invalid_config_names_the_field(model: type, kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        model(**kwargs)
    assert field in str(caught.value)


@pytest.mark.parametrize("prompt", ["", "   ", [], [{"role": "user", "content": "  "}]])
async def test_empty_prompt_is_rejected_before_any_work(
    backend: ReplayBackend, prompt: object
) -> None:
    with pytest.raises(ValueError, match="prompt"):
        await DeepPrune(backend, LexicalJudge()).run(prompt)  # type: ignore[arg-type]
    assert backend.live_requests() == set()


def test_objects_that_are_not_ports_are_rejected(backend: ReplayBackend) -> None:
    with pytest.raises(TypeError, match="backend"):
        DeepPrune(object(), LexicalJudge())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="judge"):
        DeepPrune(backend, object())  # type: ignore[arg-type]


# --- normal runs -------------------------------------------------------------------------------------


async def test_run_answers_and_reports_every_trace(backend: ReplayBackend) -> None:
    # The paper's MV finalisation: at most K2 finalists vote (robust finalisation has its own tests).
    config = PruningConfig(n_traces=8, prefix=TokensPrefix(k=16), finalists=3, finalisation="paper")
    result = await DeepPrune(backend, LexicalJudge(), config).run(QUESTION)
    assert result.answer == "42"
    assert result.text is not None and result.text.endswith("\\boxed{42}.")
    assert len(result.traces) == 8
    assert {t.status for t in result.traces} <= {"finished", "pruned", "aborted"}
    assert sum(t.tokens_decoded for t in result.traces) == result.totals.decoded_tokens
    assert sum(1 for t in result.traces if t.voted) <= 3
    full = sum(len(_full_ids(backend, i)) for i in range(8))
    assert result.totals.decoded_tokens < full  # something was pruned
    assert result.totals.judge_calls > 0
    assert backend.live_requests() == set()


async def test_parked_traces_resume_token_exact(backend: ReplayBackend) -> None:
    """Everything joins one cluster, then every member is resumed: texts come out whole.

    Once the cluster holds 5 of 8 traces the winner is certain, so the 3 traces not yet clustered
    are aborted; every clustered trace finishes with exactly its recorded tokens.
    """
    config = PruningConfig(
        n_traces=8, prefix=TokensPrefix(k=8), finalists=8, max_judge_batch=1, finalisation="paper"
    )
    events: list[object] = []
    result = await DeepPrune(
        backend, ConstantJudge(1.0, prefill_tokens_per_pair=10), config, answers="exact"
    ).run(QUESTION, listeners=[events.append])
    parked = {e.trace_id for e in events if isinstance(e, TraceParked)}
    resumed = {e.trace_id for e in events if isinstance(e, TraceResumed)}
    assert parked and parked == resumed
    assert not any(isinstance(e, TracePruned) for e in events)  # every parked trace resumed
    assert len(result.clusters) == 1
    members = set(result.clusters[0].members)
    for report in result.traces:
        if report.trace_id not in members:
            assert report.status == "aborted"
            continue
        assert report.status == "finished"
        assert report.tokens_decoded == len(_full_ids(backend, report.trace_id))
        if report.trace_id in resumed:
            assert report.resumed and report.tokens_prefilled_on_resume > 0
    # The vote saw exactly the recorded answers of the members.
    assert sum(v.weight for v in result.votes) == len(members) == 5
    assert result.totals.judge_prefill_tokens == 10 * result.totals.judge_pairs


async def test_events_tell_the_whole_story(backend: ReplayBackend) -> None:
    config = PruningConfig(n_traces=8, prefix=TokensPrefix(k=16), finalists=2)
    events = [e async for e in DeepPrune(backend, LexicalJudge(), config).stream(QUESTION)]
    names = [e.name for e in events]
    assert names[-1] == "deepprune.run_completed"
    assert names.count("deepprune.trace_started") == 8
    assert "deepprune.trace_clustered" in names and "deepprune.vote" in names
    clustered = [e for e in events if isinstance(e, TraceClustered)]
    assert clustered[0].founded and clustered[0].cluster_id == 0
    times = [e.elapsed_s for e in events]
    assert times == sorted(times)
    final = events[-1]
    assert isinstance(final, RunCompleted) and final.result.answer == "42"


async def test_same_seed_same_run(backend: ReplayBackend) -> None:
    config = PruningConfig(n_traces=8, prefix=TokensPrefix(k=16), finalists=3, seed=7)
    first = await DeepPrune(backend, LexicalJudge(), config).run(QUESTION)
    second = await DeepPrune(backend, LexicalJudge(), config).run(QUESTION)
    strip = {"clustered_at_s"}
    assert [t.model_dump(exclude=strip) for t in first.traces] == [
        t.model_dump(exclude=strip) for t in second.traces
    ]
    assert first.votes == second.votes and first.clusters == second.clusters


async def test_single_trace_needs_no_judge(backend: ReplayBackend) -> None:
    judge = ConstantJudge(1.0)
    result = await DeepPrune(backend, judge, PruningConfig(n_traces=1)).run(QUESTION)
    assert result.answer == "42" and judge.calls == 0 and result.clusters == []


async def test_self_consistency_runs_through_the_same_driver(backend: ReplayBackend) -> None:
    result = await SelfConsistency(backend, 8).run(QUESTION)
    assert result.method == "self_consistency"
    assert (result.votes[0].answer, result.votes[0].weight) == ("42", 6)
    assert result.totals.token_savings == pytest.approx(0.0)


async def test_one_instance_serves_concurrent_runs(backend: ReplayBackend) -> None:
    deepprune = DeepPrune(
        backend, LexicalJudge(), PruningConfig(n_traces=8, prefix=TokensPrefix(k=16))
    )
    results = await asyncio.gather(*(deepprune.run(QUESTION) for _ in range(4)))
    assert {r.answer for r in results} == {"42"}
    assert backend.live_requests() == set()


# --- failures ----------------------------------------------------------------------------------------


async def test_backend_failure_mid_stream_keeps_the_partial_result(backend: ReplayBackend) -> None:
    failing = FailingBackend(backend, bad=3, after=5)
    config = PruningConfig(n_traces=8, prefix=TokensPrefix(k=40))
    with pytest.raises(GenerationError, match="trace 3 failed mid-stream") as caught:
        await DeepPrune(failing, LexicalJudge(), config).run(QUESTION)  # type: ignore[arg-type]
    partial = caught.value.partial_result
    assert partial is not None and partial.fallback == "error"
    assert isinstance(caught.value.__cause__, ConnectionError)
    by_id = {t.trace_id: t for t in partial.traces}
    assert by_id[3].tokens_decoded == 5
    assert all(t.status in {"aborted", "pruned", "finished"} for t in partial.traces)
    assert partial.totals.decoded_tokens == sum(t.tokens_decoded for t in partial.traces) > 5
    assert backend.live_requests() == set()


async def test_judge_error_falls_back_to_plain_majority(backend: ReplayBackend) -> None:
    config = PruningConfig(n_traces=8, prefix=TokensPrefix(k=16))
    result = await DeepPrune(backend, FailingJudge(), config).run(QUESTION)
    assert result.fallback == "judge_error"
    assert result.error is not None and "unreachable" in result.error
    assert result.answer == "42"
    assert backend.live_requests() == set()


async def test_judge_error_can_raise(backend: ReplayBackend) -> None:
    config = PruningConfig(n_traces=8, prefix=TokensPrefix(k=16), on_judge_error="raise")
    with pytest.raises(JudgeError, match="unreachable") as caught:
        await DeepPrune(backend, FailingJudge(), config).run(QUESTION)
    assert caught.value.partial_result is not None
    assert backend.live_requests() == set()


async def test_deadline_votes_with_what_finished(pool: TracePool) -> None:
    slow = ReplayBackend(pool, seconds_per_token=0.002)
    config = PruningConfig(n_traces=8, prefix=TokensPrefix(k=10_000), deadline_s=0.05)
    result = await DeepPrune(slow, LexicalJudge(), config).run(QUESTION)
    assert result.fallback in {"deadline"}
    assert all(t.status == "aborted" for t in result.traces)
    assert result.totals.decoded_tokens > 0
    assert slow.live_requests() == set()


async def test_cancelling_the_run_aborts_every_request(pool: TracePool) -> None:
    slow = ReplayBackend(pool, seconds_per_token=0.001)
    task = asyncio.ensure_future(
        DeepPrune(slow, LexicalJudge(), PruningConfig(n_traces=8)).run(QUESTION)
    )
    await asyncio.sleep(0.02)
    assert slow.live_requests()  # really running
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert slow.live_requests() == set()


async def test_closing_the_event_stream_early_aborts_the_run(pool: TracePool) -> None:
    slow = ReplayBackend(pool, seconds_per_token=0.001)
    stream = DeepPrune(slow, LexicalJudge(), PruningConfig(n_traces=8)).stream(QUESTION)
    async for event in stream:
        if event.name == "deepprune.trace_started":
            break
    await stream.aclose()  # type: ignore[attr-defined]
    assert slow.live_requests() == set()


async def test_backend_that_ignores_abort_is_closed_by_the_driver(backend: ReplayBackend) -> None:
    deaf = DeafBackend(backend, bad=-1, after=0)
    config = PruningConfig(n_traces=8, prefix=TokensPrefix(k=8), finalists=1)
    result = await DeepPrune(deaf, ConstantJudge(1.0), config).run(QUESTION)  # type: ignore[arg-type]
    stopped = [t for t in result.traces if t.status in {"pruned", "aborted"}]
    assert stopped
    from deepprune_lc.runtime.driver import ABORT_SLACK_TOKENS

    assert all(t.tokens_after_abort <= ABORT_SLACK_TOKENS + 1 for t in stopped)
    assert backend.live_requests() == set()


def test_errors_carry_partial_results() -> None:
    error = DeepPruneError("boom")
    assert error.partial_result is None
