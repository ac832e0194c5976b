"""The baseline controllers: self-consistency (cons@N) and early-stopping self-consistency (ESC)."""

from __future__ import annotations

from deepprune_lc.core.answers import AnswerRules
from deepprune_lc.core.config import EarlyStoppingConfig
from deepprune_lc.core.controllers import (
    AbortTrace,
    Action,
    Controller,
    EarlyStoppingController,
    RunDone,
    SelfConsistencyController,
    StartTrace,
)

EXACT = AnswerRules.exact()


def text(answer: str | None) -> str:
    if answer is None:
        return "Hmm, I cannot decide."
    return f"So, after checking, the answer is \\boxed{{{answer}}}"


def finish(ctl: Controller, trace_id: int, answer: str | None) -> list[Action]:
    return ctl.on_finished(trace_id, text(answer), "stop")


def votes(ctl: Controller) -> list[tuple[str, float, list[int]]]:
    assert ctl.outcome is not None
    return [(v.answer, v.weight, v.trace_ids) for v in ctl.outcome.votes]


def esc(n: int, window: int, rules: AnswerRules = EXACT) -> EarlyStoppingController:
    return EarlyStoppingController(EarlyStoppingConfig(n_traces=n, window=window), rules)


# --------------------------------------------------------------------------------------------------
# Self-consistency


def test_self_consistency_runs_every_trace_and_the_majority_wins() -> None:
    ctl = SelfConsistencyController(5, EXACT)
    assert ctl.monitor(0) is None and not ctl.needs_judge
    assert ctl.start() == [StartTrace(t) for t in range(5)]
    assert ctl.statuses() == ["running"] * 5
    for t, answer in [(3, "8"), (0, "7"), (4, None), (1, "7")]:
        assert finish(ctl, t, answer) == []
    assert finish(ctl, 2, "7") == [RunDone()]
    assert ctl.statuses() == ["finished"] * 5
    assert votes(ctl) == [("7", 3.0, [0, 1, 2]), ("8", 1.0, [3])]
    assert ctl.outcome is not None
    assert (ctl.outcome.answer, ctl.outcome.winning_trace, ctl.outcome.fallback) == ("7", 0, None)
    assert [t.voted for t in ctl.traces] == [True, True, True, True, False]


def test_self_consistency_ignores_prefixes_and_judges() -> None:
    ctl = SelfConsistencyController(2, EXACT)
    ctl.start()
    assert ctl.on_prefix(0, "so") == []
    assert ctl.on_judged(1, [0.9]) == []
    assert ctl.on_judge_failed(1, "boom") == []
    assert ctl.cluster_reports() == []


def test_self_consistency_tie_goes_to_the_answer_that_finished_first() -> None:
    ctl = SelfConsistencyController(4, EXACT)
    ctl.start()
    finish(ctl, 2, "8")
    finish(ctl, 0, "7")
    finish(ctl, 1, "7")
    finish(ctl, 3, "8")
    assert ctl.outcome is not None
    assert (ctl.outcome.answer, ctl.outcome.winning_trace) == ("8", 2)


def test_self_consistency_groups_equivalent_math_answers() -> None:
    ctl = SelfConsistencyController(3, AnswerRules.math())
    ctl.start()
    finish(ctl, 0, "2")
    finish(ctl, 1, "\\frac{1}{2}")
    finish(ctl, 2, "0.5")
    assert ctl.outcome is not None and ctl.outcome.answer == "\\frac{1}{2}"
    assert votes(ctl)[0][1:] == (2.0, [1, 2])


def test_self_consistency_deadline_votes_over_the_finished_traces() -> None:
    ctl = SelfConsistencyController(3, EXACT)
    ctl.start()
    finish(ctl, 1, "4")
    assert ctl.on_deadline() == [AbortTrace(0, "deadline"), AbortTrace(2, "deadline"), RunDone()]
    assert ctl.statuses() == ["aborted", "finished", "aborted"]
    assert ctl.outcome is not None
    assert (ctl.outcome.answer, ctl.outcome.fallback) == ("4", "deadline")
    assert finish(ctl, 0, "5") == []  # a late finish after the run ended changes nothing
    assert ctl.statuses()[0] == "aborted"


def test_self_consistency_without_any_answer_reports_no_voter() -> None:
    ctl = SelfConsistencyController(2, EXACT)
    ctl.start()
    finish(ctl, 1, None)
    finish(ctl, 0, None)
    assert ctl.outcome is not None
    assert (ctl.outcome.answer, ctl.outcome.winning_trace, ctl.outcome.fallback) == (
        None,
        1,
        "no_voter",
    )


def test_self_consistency_abort_all_ends_without_a_vote() -> None:
    ctl = SelfConsistencyController(2, EXACT)
    ctl.start()
    finish(ctl, 0, "1")
    assert ctl.abort_all("cancelled") == [AbortTrace(1, "cancelled")]
    assert ctl.done and ctl.outcome is not None
    assert (ctl.outcome.answer, ctl.outcome.fallback) == (None, "error")
    assert ctl.abort_all("again") == []


# --------------------------------------------------------------------------------------------------
# Early-stopping self-consistency


def test_esc_stops_at_the_first_unanimous_window() -> None:
    ctl = esc(10, 4)
    assert ctl.monitor(0) is None and not ctl.needs_judge
    assert ctl.start() == [StartTrace(t) for t in range(4)]
    assert ctl.statuses() == ["running"] * 4 + [None] * 6
    for t in (2, 0, 3):
        assert finish(ctl, t, "7") == []
    assert finish(ctl, 1, "7") == [RunDone()]
    assert ctl.statuses() == ["finished"] * 4 + [None] * 6  # later windows never sampled
    assert votes(ctl) == [("7", 4.0, [2, 0, 3, 1])]
    assert ctl.outcome is not None and ctl.outcome.fallback is None


def test_esc_opens_the_next_window_when_a_window_disagrees() -> None:
    ctl = esc(10, 4)
    ctl.start()
    finish(ctl, 0, "7")
    finish(ctl, 1, "8")
    finish(ctl, 2, "7")
    assert finish(ctl, 3, "7") == [StartTrace(t) for t in range(4, 8)]
    assert ctl.statuses()[4:] == ["running"] * 4 + [None] * 2
    for t in (4, 5, 6):
        assert finish(ctl, t, "7") == []
    assert finish(ctl, 7, "7") == [RunDone()]
    # Every sampled trace votes, not only the unanimous window.
    assert votes(ctl) == [("7", 7.0, [0, 2, 3, 4, 5, 6, 7]), ("8", 1.0, [1])]
    assert ctl.statuses()[8:] == [None, None]


def test_esc_window_with_a_missing_answer_is_not_unanimous() -> None:
    ctl = esc(4, 2)
    ctl.start()
    finish(ctl, 0, "7")
    assert finish(ctl, 1, None) == [StartTrace(2), StartTrace(3)]


def test_esc_uses_answer_equivalence() -> None:
    ctl = esc(6, 2, AnswerRules.math())
    ctl.start()
    finish(ctl, 0, "0.5")
    assert finish(ctl, 1, "\\frac{1}{2}") == [RunDone()]
    assert ctl.outcome is not None and ctl.outcome.answer == "0.5"


def test_esc_stops_at_n_even_without_agreement() -> None:
    ctl = esc(6, 4)
    ctl.start()
    for t, answer in enumerate(["1", "2", "1", "1"]):
        finish(ctl, t, answer)
    assert ctl.statuses()[4:] == ["running", "running"]  # the last window is cut to N
    finish(ctl, 4, "3")
    assert finish(ctl, 5, "1") == [RunDone()]
    assert ctl.statuses() == ["finished"] * 6
    assert votes(ctl) == [("1", 4.0, [0, 2, 3, 5]), ("2", 1.0, [1]), ("3", 1.0, [4])]


def test_esc_window_larger_than_n_is_one_window() -> None:
    ctl = esc(3, 8)
    assert ctl.start() == [StartTrace(0), StartTrace(1), StartTrace(2)]
    finish(ctl, 0, "1")
    finish(ctl, 1, "2")
    assert finish(ctl, 2, "2") == [RunDone()]
    assert ctl.outcome is not None and ctl.outcome.answer == "2"


def test_esc_deadline_leaves_unsampled_traces_unstarted() -> None:
    ctl = esc(9, 3)
    ctl.start()
    for t, answer in enumerate(["1", "2", "3"]):
        finish(ctl, t, answer)
    finish(ctl, 4, "2")
    assert ctl.on_deadline() == [AbortTrace(3, "deadline"), AbortTrace(5, "deadline"), RunDone()]
    assert ctl.statuses() == ["finished"] * 3 + ["aborted", "finished", "aborted"] + [None] * 3
    assert ctl.outcome is not None
    assert (ctl.outcome.answer, ctl.outcome.fallback) == ("2", "deadline")
