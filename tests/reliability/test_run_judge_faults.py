"""A judge that fails in any way ends the run as self-consistency (flagged), or raises naming it.

Faults: the judge raises, hangs (``judge_timeout_s``), returns NaN, values outside [0, 1], the
wrong number of scores, a plain list instead of ``JudgeScores``, ``JudgeScores(None)``, or a NaN
token count. Before, the malformed answers failed the run as "internal error in the DeepPrune
driver" even with ``on_judge_error="fallback"``, a hung judge hung a run with no deadline, and no
message named the judge.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from reliability_faults import QUESTION, CallableJudge, HungJudge, synthetic_backend

from deepprune_lc import (
    DeepPrune,
    JudgeError,
    JudgeScores,
    PrefixPair,
    PruningConfig,
    TokensPrefix,
)


def _raise(pairs: Sequence[PrefixPair]) -> JudgeScores:
    raise RuntimeError("judge model crashed")


FAULTS: dict[str, tuple[Callable[[Sequence[PrefixPair]], Any], str]] = {
    "raises": (_raise, "raised RuntimeError('judge model crashed')"),
    "nan": (lambda p: JudgeScores([math.nan] * len(p)), "nan, not a probability"),
    "above_one": (lambda p: JudgeScores([1.5] * len(p)), "1.5, not a probability"),
    "negative": (lambda p: JudgeScores([-0.25] * len(p)), "-0.25, not a probability"),
    "inf": (lambda p: JudgeScores([math.inf] * len(p)), "inf, not a probability"),
    "too_few": (lambda p: JudgeScores([0.5] * (len(p) - 1)), "scores for"),
    "too_many": (lambda p: JudgeScores([0.5] * (len(p) + 3)), "scores for"),
    "plain_list": (lambda p: [0.5] * len(p), "returned list, not JudgeScores"),
    "none": (lambda p: JudgeScores(None), "probabilities=None"),  # type: ignore[arg-type]
    "strings": (lambda p: JudgeScores(["high"] * len(p)), "not a number"),
    "nan_prefill": (
        lambda p: JudgeScores([0.5] * len(p), prefill_tokens=math.nan),  # type: ignore[arg-type]
        "prefill_tokens=nan",
    ),
    "none_result": (lambda p: None, "returned NoneType"),
}


class SyncJudge:
    """A judge whose ``score`` is not async at all (a common mistake in a hand-written judge)."""

    def score(self, pairs: Sequence[PrefixPair]) -> JudgeScores:
        return JudgeScores([0.5] * len(pairs))


class RaisesAtOnce:
    """A judge whose ``score`` raises before returning an awaitable."""

    def score(self, pairs: Sequence[PrefixPair]) -> Any:
        raise ConnectionError("judge server refused the request")


@pytest.mark.parametrize(
    ("judge", "expected"),
    [
        (SyncJudge(), "judge SyncJudge raised TypeError"),
        (RaisesAtOnce(), "judge RaisesAtOnce raised ConnectionError"),
    ],
    ids=["not_async", "raises_at_once"],
)
async def test_a_judge_whose_score_call_itself_fails_falls_back(judge: Any, expected: str) -> None:
    backend = synthetic_backend()
    runner = DeepPrune(backend, judge, _config(), answers="exact")
    result = await asyncio.wait_for(runner.run(QUESTION), timeout=60)
    assert result.fallback == "judge_error"
    assert result.error is not None and expected in result.error
    assert backend.live_requests() == set()


def _config(**overrides: Any) -> PruningConfig:
    base: dict[str, Any] = {"n_traces": 8, "prefix": TokensPrefix(k=16), "finalists": 2}
    return PruningConfig(**(base | overrides))


@pytest.mark.parametrize("fault", sorted(FAULTS))
async def test_a_failing_judge_falls_back_to_self_consistency_and_says_so(fault: str) -> None:
    answer, expected = FAULTS[fault]
    backend = synthetic_backend()
    runner = DeepPrune(backend, CallableJudge(answer), _config(), answers="exact")
    result = await asyncio.wait_for(runner.run(QUESTION), timeout=60)
    assert result.fallback == "judge_error"
    assert result.answer in {"7", "12"}
    assert result.error is not None
    assert "CallableJudge" in result.error and expected in result.error
    assert "internal error" not in result.error
    assert all(t.status == "finished" for t in result.traces)  # every trace finished and voted
    assert backend.live_requests() == set()


@pytest.mark.parametrize("fault", sorted(FAULTS))
async def test_a_failing_judge_raises_naming_the_judge(fault: str) -> None:
    answer, expected = FAULTS[fault]
    backend = synthetic_backend()
    config = _config(on_judge_error="raise")
    runner = DeepPrune(backend, CallableJudge(answer), config, answers="exact")
    with pytest.raises(JudgeError) as caught:
        await asyncio.wait_for(runner.run(QUESTION), timeout=60)
    message = str(caught.value)
    assert "judge failed while clustering trace(s)" in message
    assert "CallableJudge" in message and expected in message
    partial = caught.value.partial_result
    assert partial is not None and partial.totals.decoded_tokens > 0
    assert backend.live_requests() == set()


async def test_a_hung_judge_times_out_and_the_run_falls_back() -> None:
    backend = synthetic_backend()
    judge = HungJudge()
    runner = DeepPrune(backend, judge, _config(judge_timeout_s=0.2), answers="exact")
    # No deadline: before judge_timeout_s this waited for the judge forever.
    result = await asyncio.wait_for(runner.run(QUESTION), timeout=60)
    assert judge.calls == 1
    assert result.fallback == "judge_error"
    assert result.error is not None
    assert "HungJudge did not answer within 0.2 s (judge_timeout_s)" in result.error
    assert result.answer in {"7", "12"}
    assert backend.live_requests() == set()


async def test_a_hung_judge_with_raise_fails_the_run_naming_it() -> None:
    backend = synthetic_backend()
    config = _config(judge_timeout_s=0.2, on_judge_error="raise")
    runner = DeepPrune(backend, HungJudge(), config, answers="exact")
    with pytest.raises(JudgeError, match=r"HungJudge did not answer within 0\.2 s"):
        await asyncio.wait_for(runner.run(QUESTION), timeout=60)
    assert backend.live_requests() == set()


async def test_a_deadline_that_meets_a_hung_judge_names_it_and_ends_promptly() -> None:
    backend = synthetic_backend()
    runner = DeepPrune(backend, HungJudge(), _config(deadline_s=0.5), answers="exact")
    result = await asyncio.wait_for(runner.run(QUESTION), timeout=60)
    assert result.fallback == "deadline"
    assert result.answer in {"7", "12"}  # the finished traces voted
    assert result.error is not None and "judge HungJudge" in result.error
    assert "without answering" in result.error
    # Before, shutdown waited a fixed 10 s for the hung judge call; now the call is cancelled.
    print(f"\ndeadline 0.5 s, hung judge: {result.totals.wall_time_s:.2f} s")
    assert result.totals.wall_time_s < 5.0
    assert backend.live_requests() == set()


def test_the_judge_timeout_has_a_documented_generous_default() -> None:
    from deepprune_lc.core.config import DEFAULT_JUDGE_TIMEOUT_S

    assert PruningConfig().judge_timeout_s == DEFAULT_JUDGE_TIMEOUT_S >= 60
    assert PruningConfig(judge_timeout_s=None).judge_timeout_s is None
    with pytest.raises(ValueError, match="judge_timeout_s"):
        PruningConfig(judge_timeout_s=0)
