"""No run waits unbounded: stalled streams, aborts that never return, deadlines that meet both.

Before: with no deadline a stalled stream hung the run forever; with a deadline shutdown waited a
fixed 10 s for streams that ignored their abort; and an ``abort()`` that never returned was awaited
without a timeout, so a run with a 1 s deadline never ended.
"""

from __future__ import annotations

import asyncio
import logging

import pytest
from reliability_faults import (
    QUESTION,
    AbortNeverReturns,
    StallingBackend,
    leftover_tasks,
    synthetic_backend,
)

from deepprune_lc import (
    DeepPrune,
    DeepPruneReasoner,
    DeepPruneTimeoutError,
    GenerationError,
    LexicalJudge,
    PruningConfig,
    SelfConsistency,
    TokensPrefix,
)


def _config(**overrides: object) -> PruningConfig:
    base: dict[str, object] = {"n_traces": 8, "prefix": TokensPrefix(k=16), "finalists": 2}
    return PruningConfig.model_validate(base | overrides)


async def test_a_stalled_stream_ends_the_run_without_a_deadline() -> None:
    backend = StallingBackend(synthetic_backend(), stall=[3])
    runner = SelfConsistency(backend, 8, answers="exact", idle_timeout_s=0.3)
    with pytest.raises(GenerationError, match=r"trace 3 stalled") as caught:
        await asyncio.wait_for(runner.run(QUESTION), timeout=60)
    assert caught.value.partial_result is not None
    wall = caught.value.partial_result.totals.wall_time_s
    print(f"\nno deadline, idle_timeout_s=0.3, one stalled stream: ends after {wall:.2f} s")
    assert "idle_timeout_s=0.3" in str(caught.value)
    partial = caught.value.partial_result
    assert partial is not None
    assert [t.tokens_decoded for t in partial.traces if t.trace_id == 3] == [5]
    assert sum(t.status == "finished" for t in partial.traces) == 7  # the others' work survives
    assert backend.live_requests() == set()
    assert await leftover_tasks() == set()


async def test_a_stalled_stream_ends_a_deepprune_run_too() -> None:
    backend = StallingBackend(synthetic_backend(), stall=[0, 5])
    runner = DeepPrune(backend, LexicalJudge(), _config(idle_timeout_s=0.3), answers="exact")
    with pytest.raises(GenerationError, match=r"stalled: its stream delivered nothing"):
        await asyncio.wait_for(runner.run(QUESTION), timeout=60)
    assert backend.live_requests() == set()


def test_the_idle_timeout_has_a_documented_generous_default() -> None:
    from deepprune_lc.core.config import DEFAULT_IDLE_TIMEOUT_S

    assert PruningConfig().idle_timeout_s == DEFAULT_IDLE_TIMEOUT_S >= 300
    assert PruningConfig(idle_timeout_s=None).idle_timeout_s is None


async def test_a_deadline_ends_promptly_when_streams_ignore_their_abort() -> None:
    backend = StallingBackend(synthetic_backend(), stall=[1, 3])
    runner = SelfConsistency(backend, 8, answers="exact", deadline_s=0.5, idle_timeout_s=None)
    result = await asyncio.wait_for(runner.run(QUESTION), timeout=60)
    assert result.fallback == "deadline"
    assert result.answer == "7"  # the six that finished voted: 7 (even) four times, 12 twice
    # The grace is a share of the deadline (0.25 s here), not a fixed 10 s.
    print(f"\ndeadline 0.5 s, two streams ignore their abort: {result.totals.wall_time_s:.2f} s")
    assert result.totals.wall_time_s < 4.0
    assert backend.live_requests() == set()
    assert await leftover_tasks() == set()


async def test_an_abort_that_never_returns_still_lets_the_run_end_and_is_named(
    caplog: pytest.LogCaptureFixture,
) -> None:
    backend = AbortNeverReturns(synthetic_backend(), stall=[2])
    runner = SelfConsistency(backend, 8, answers="exact", deadline_s=0.5, idle_timeout_s=None)
    with caplog.at_level(logging.WARNING, logger="deepprune_lc.runtime.driver"):
        result = await asyncio.wait_for(runner.run(QUESTION), timeout=60)
    assert result.fallback == "deadline" and result.answer is not None
    assert result.error is not None
    assert "did not confirm aborting" in result.error and "-t2-1" in result.error
    assert "may still run" in result.error and "may still run" in caplog.text
    print(f"\ndeadline 0.5 s, an abort that never returns: {result.totals.wall_time_s:.2f} s")
    assert result.totals.wall_time_s < 4.0
    assert await leftover_tasks() == set()


async def test_nothing_finished_by_the_deadline_is_a_typed_timeout_on_the_chat_model() -> None:
    backend = StallingBackend(synthetic_backend(), stall=range(8), after=2)
    model = DeepPruneReasoner(
        backend=backend, judge=LexicalJudge(), pruning=_config(deadline_s=0.5), answers="exact"
    )
    with pytest.raises(DeepPruneTimeoutError) as caught:
        await asyncio.wait_for(model.ainvoke(QUESTION), timeout=60)
    assert isinstance(caught.value, TimeoutError)
    partial = caught.value.partial_result
    assert partial is not None and partial.totals.decoded_tokens == 16
    assert partial.totals.wall_time_s < 4.0
    assert backend.live_requests() == set()


async def test_a_run_that_meets_its_deadline_returns_the_best_answer_so_far_flagged() -> None:
    backend = StallingBackend(synthetic_backend(), stall=[1, 3, 5, 7])  # the 12s never finish
    runner = DeepPrune(backend, LexicalJudge(), _config(deadline_s=0.5), answers="exact")
    result = await asyncio.wait_for(runner.run(QUESTION), timeout=60)
    assert result.fallback == "deadline" and result.answer == "7"
    assert result.totals.wall_time_s < 4.0
    assert backend.live_requests() == set()
