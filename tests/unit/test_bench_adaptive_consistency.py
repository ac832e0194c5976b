"""Adaptive-Consistency (Aggarwal et al., 2023): the Beta stopping rule and the controller."""

from __future__ import annotations

import asyncio
import math

import pytest
from pydantic import ValidationError

from deepprune_lc.backends.pool import PoolProblem, PoolTrace, TracePool
from deepprune_lc.backends.replay import ReplayBackend
from deepprune_lc.core.answers import AnswerRules
from deepprune_lc.core.config import SamplingConfig
from deepprune_lc.core.controllers import (
    AbortTrace,
    AdaptiveConsistencyConfig,
    AdaptiveConsistencyController,
    Controller,
    ControllerProtocol,
    ControllerProtocolError,
    RunDone,
    StartTrace,
)
from deepprune_lc.core.controllers.baselines import majority_confidence
from deepprune_lc.runtime import AdaptiveConsistency

EXACT = AnswerRules.exact()


def finish(ctl: Controller, trace_id: int, answer: str | None) -> list[object]:
    text = "no idea" if answer is None else f"so the answer is \\boxed{{{answer}}}"
    return list(ctl.on_finished(trace_id, text, "stop"))


def ac(n: int, batch: int = 1, confidence: float = 0.95) -> AdaptiveConsistencyController:
    config = AdaptiveConsistencyConfig(n_traces=n, batch=batch, confidence=confidence)
    return AdaptiveConsistencyController(config, EXACT)


@pytest.mark.parametrize(
    ("leader", "runner_up", "expected"),
    [(0, 0, 0.5), (1, 0, 0.75), (3, 0, 15 / 16), (4, 0, 31 / 32), (2, 1, 11 / 16), (5, 5, 0.5)],
)
def test_majority_confidence_is_the_beta_tail(leader: int, runner_up: int, expected: float) -> None:
    assert majority_confidence(leader, runner_up) == pytest.approx(expected)


def test_majority_confidence_matches_numerical_integration_of_the_beta_density() -> None:
    for a, b in [(6, 2), (9, 4), (3, 7)]:
        steps = 20_000

        def density(x: float, a: int = a, b: int = b) -> float:
            return x**a * (1 - x) ** b

        grid = [(i + 0.5) / steps for i in range(steps)]
        total = sum(density(x) for x in grid)
        upper = sum(density(x) for x in grid if x > 0.5)
        assert majority_confidence(a, b) == pytest.approx(upper / total, abs=1e-6)
    with pytest.raises(ValueError, match="vote counts"):
        majority_confidence(-1, 0)


def test_one_at_a_time_stops_after_four_agreeing_answers() -> None:
    ctl = ac(16)
    assert ctl.start() == [StartTrace(0)]
    for t in range(3):
        assert finish(ctl, t, "7") == [StartTrace(t + 1)]
    assert finish(ctl, 3, "7") == [RunDone()]
    assert ctl.outcome is not None and ctl.outcome.answer == "7"
    assert ctl.statuses()[:4] == ["finished"] * 4
    assert ctl.statuses()[4:] == [None] * 12  # never sampled
    assert ctl.confidences == pytest.approx([0.75, 7 / 8, 15 / 16, 31 / 32])


def test_a_split_vote_samples_more_and_a_missing_answer_casts_no_vote() -> None:
    ctl = ac(16)
    ctl.start()
    sequence = ["7", "8", None, "7", "7", "7", "7", "7"]
    for t, answer in enumerate(sequence[:-1]):
        assert finish(ctl, t, answer) == [StartTrace(t + 1)]
    # 5 votes for 7 against 1 for 8: P = 120/128 = 0.9375 < 0.95; 6 against 1: 247/256 = 0.965.
    assert ctl.confidences[-1] == pytest.approx(120 / 128)
    assert finish(ctl, 7, sequence[-1]) == [RunDone()]
    assert ctl.outcome is not None and ctl.outcome.answer == "7"
    assert ctl.confidences[-1] == pytest.approx(247 / 256)
    assert [v.weight for v in ctl.outcome.votes] == [6.0, 1.0]
    assert ctl.traces[2].status == "finished" and not ctl.traces[2].voted


def test_batches_decide_only_once_the_whole_batch_finished() -> None:
    ctl = ac(8, batch=4)
    assert ctl.start() == [StartTrace(t) for t in range(4)]
    assert finish(ctl, 2, "7") == []
    assert finish(ctl, 0, "7") == []
    assert finish(ctl, 1, "7") == []
    assert finish(ctl, 3, "7") == [RunDone()]
    ctl = ac(8, batch=4)
    ctl.start()
    for t, answer in enumerate(["7", "7", "8", "7"]):
        actions = finish(ctl, t, answer)
    assert actions == [StartTrace(t) for t in range(4, 8)]


def test_the_bound_on_traces_ends_the_run_unsettled() -> None:
    ctl = ac(3)
    ctl.start()
    finish(ctl, 0, "7")
    finish(ctl, 1, "8")
    assert finish(ctl, 2, "9") == [RunDone()]
    assert ctl.outcome is not None and ctl.outcome.answer == "7"  # earliest on a tie
    assert ctl.outcome.fallback is None


def test_config_rejects_bad_values_by_name() -> None:
    with pytest.raises(ValidationError, match="batch"):
        AdaptiveConsistencyConfig(batch=0)
    with pytest.raises(ValidationError, match="confidence"):
        AdaptiveConsistencyConfig(confidence=1.0)


def test_the_runner_replays_a_pool_and_stops_early() -> None:
    texts = ["we get \\boxed{4}"] * 5 + ["we get \\boxed{5}"] * 3
    pool = TracePool(
        problems=[
            PoolProblem(
                id="p", problem="2 + 2?", answer="4", traces=[PoolTrace(text=t) for t in texts]
            )
        ]
    )
    backend = ReplayBackend(pool, yield_every=1, reuse="error")
    runner = AdaptiveConsistency(
        backend,
        AdaptiveConsistencyConfig(n_traces=8),
        sampling=SamplingConfig(max_tokens=1000),
        answers="exact",
    )
    result = asyncio.run(runner.run("2 + 2?"))
    assert result.method == "adaptive_consistency"
    assert result.answer == "4"
    statuses = [t.status for t in result.traces]
    assert statuses.count("finished") == 4
    one = result.traces[0].tokens_decoded
    assert result.totals.decoded_tokens == 4 * one
    assert math.isclose(majority_confidence(4, 0), 31 / 32)


def test_it_is_a_controller_like_the_others_deadline_and_protocol_errors_included() -> None:
    ctl = ac(8, batch=2)
    assert isinstance(ctl, ControllerProtocol)
    ctl.start()
    with pytest.raises(ControllerProtocolError, match="never started"):
        finish(ctl, 5, "7")
    finish(ctl, 0, "7")
    actions = ctl.on_deadline()
    assert actions == [AbortTrace(1, "deadline"), RunDone()]
    assert ctl.outcome is not None
    assert (ctl.outcome.answer, ctl.outcome.fallback) == ("7", "deadline")
    assert ctl.statuses() == ["finished", "aborted"] + [None] * 6
