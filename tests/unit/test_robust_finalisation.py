"""Robust finalisation (ours, docs/method.md): a weak judge costs tokens, not accuracy.

Told as stories with plain data, like the paper's rules in test_controller_rules.py.
"""

from __future__ import annotations

import pytest

from deepprune_lc.core.answers import AnswerRules, Ballot, group_votes, vote_settled
from deepprune_lc.core.config import VoteSettling
from deepprune_lc.core.controllers import (
    AbortTrace,
    FlagUnreliable,
    ParkTrace,
    ResumeTrace,
    RunDone,
    SelfConsistencyController,
    StartTrace,
)
from tests.unit.test_controller_rules import EXACT, Story, answer_text


def robust(n: int, groups: str | None = None, **config: object) -> Story:
    config["finalisation"] = "robust"  # the default, but Story tells the paper's rules otherwise
    return Story(n, groups, **config)


def test_vote_settled_needs_a_lead_the_running_voters_cannot_overturn() -> None:
    votes = group_votes([Ballot(0, "7"), Ballot(1, "7"), Ballot(2, "3")], EXACT.equivalent)
    assert not vote_settled(votes, still_running=1)  # 2 vs 1 with one running: could tie
    assert vote_settled(votes, still_running=0)  # 2 vs 1, nothing running: settled at margin 1
    assert not vote_settled(votes, still_running=0, min_margin=2)
    assert not vote_settled([], still_running=0)


def test_a_settled_vote_stops_the_finalists_still_running() -> None:
    # One cluster (the judge merges everything): once 4 of 6 are in it the winner is certain, the
    # 2 unclustered traces are aborted, and the founder + 3 resumed members are the finalists.
    story = robust(6, "AAAAAA", finalists=5, settle=VoteSettling(min_margin=2))
    story.start()
    story.arrive(0, 1, 2, 3, 4, 5)
    resumed = [a.trace_id for a in story.of_type(ResumeTrace)]
    assert sorted(resumed) == [1, 2, 3]
    assert story.finish(0, "7") == []  # 1 vs 0 with 3 running
    assert story.finish(resumed[0], "7") == []  # 2 vs 0 with 2 running: could still tie
    actions = story.finish(resumed[1], "7")  # 3 vs 0 with 1 running: settled
    assert actions[0] == AbortTrace(resumed[2], "vote_settled")
    assert actions[-1] == RunDone()
    assert story.ctl.outcome is not None and story.ctl.outcome.answer == "7"
    assert story.voters == {0, *resumed[:2]}


def test_clusters_tied_for_largest_each_send_their_founder() -> None:
    # A weak judge: every trace founds its own cluster (8 singletons, tied).
    story = robust(4, "ABCD", finalists=4)
    story.start()
    actions = story.arrive(0, 1, 2, 3)
    flags = [a for a in actions if isinstance(a, FlagUnreliable)]
    assert [f.reason for f in flags] == ["all_singletons"]
    assert not story.of_type(AbortTrace)  # nobody was stopped for losing a tie
    for t in range(4):
        assert story.status(t) == "running"  # every founder finishes
    story.finish(0, "7")
    story.finish(1, "7")
    story.finish(2, "5")
    assert story.finish(3, "7")[-1] == RunDone()
    assert story.ctl.outcome is not None and story.ctl.outcome.answer == "7"
    assert story.voters == {0, 1, 2, 3}
    assert story.ctl.outcome.judge_unreliable == "all_singletons"


def test_a_split_vote_resumes_more_traces_until_it_is_settled() -> None:
    # The judge wrongly merges everything: one cluster of 6, K2 = 2 finalists who disagree.
    story = robust(6, "AAAAAA", finalists=2, settle=VoteSettling(min_margin=2))
    story.start()
    story.arrive(0, 1, 2, 3, 4, 5)
    (first,) = [a.trace_id for a in story.of_type(ResumeTrace)]
    story.finish(0, "7")
    actions = story.finish(first, "3")  # 1 vs 1: split
    assert FlagUnreliable("finalists_split", "vote [1.0, 1.0] not settled") in actions
    more = [a.trace_id for a in actions if isinstance(a, ResumeTrace)]
    assert len(more) == 2  # a lead of 2 needs at least two more votes
    story.finish(more[0], "7")
    assert story.finish(more[1], "7")[-1] == RunDone()  # 3 vs 1, nothing running
    outcome = story.ctl.outcome
    assert outcome is not None and outcome.answer == "7"
    assert outcome.judge_unreliable == "finalists_split"


def test_doubling_resumes_as_many_traces_as_have_voted() -> None:
    # One cluster (11 of 20 make it certain: 10 parked), K2 = 2, finalists that keep splitting.
    story = robust(20, "A" * 20, finalists=2, settle=VoteSettling(min_margin=2))
    story.start()
    story.arrive(*range(20))
    (first,) = [a.trace_id for a in story.of_type(ResumeTrace)]
    story.finish(0, "7")
    round_two = [a.trace_id for a in story.finish(first, "3") if isinstance(a, ResumeTrace)]
    assert len(round_two) == 2  # two have voted: two more
    story.finish(round_two[0], "7")
    round_three = [
        a.trace_id for a in story.finish(round_two[1], "3") if isinstance(a, ResumeTrace)
    ]
    assert len(round_three) == 4  # four have voted (2 vs 2): four more, not the two it lacks
    for trace_id in round_three[:3]:
        story.finish(trace_id, "7")  # 5 vs 2 with one running: settled
    assert story.ctl.outcome is not None and story.ctl.outcome.answer == "7"
    assert story.status(round_three[3]) == "aborted"  # stopped by the settled vote


def test_needed_resumes_only_the_votes_a_split_lacks() -> None:
    story = robust(
        12, "A" * 12, finalists=2, settle=VoteSettling(min_margin=2), split_resume="needed"
    )
    story.start()
    story.arrive(*range(12))
    (first,) = [a.trace_id for a in story.of_type(ResumeTrace)]
    story.finish(0, "7")
    story.finish(first, "7")  # 2 vs 0: settled, nothing more
    assert story.ctl.outcome is not None and story.ctl.outcome.answer == "7"
    story = robust(
        12, "A" * 12, finalists=4, settle=VoteSettling(min_margin=2), split_resume="needed"
    )
    story.start()
    story.arrive(*range(12))
    finalists = [0, *(a.trace_id for a in story.of_type(ResumeTrace))]
    story.finish(finalists[0], "7")
    story.finish(finalists[1], "7")
    story.finish(finalists[2], "7")
    more = [a.trace_id for a in story.finish(finalists[3], "3") if isinstance(a, ResumeTrace)]
    assert more == []  # 3 vs 1 with nothing running: settled at margin 2


def test_a_split_that_cannot_settle_ends_when_everything_has_run() -> None:
    # 2 of 3 in one cluster make it certain: trace 2 is aborted unclustered, trace 1 parked.
    story = robust(3, "AAA", finalists=1, settle=VoteSettling(min_margin=2))
    story.start()
    story.arrive(0, 1, 2)
    assert story.finish(0, "7") == [ResumeTrace(1, 0)]  # a lead of 1 < 2: one more is resumed
    actions = story.finish(1, "3")  # 1 vs 1 and nothing left to resume
    assert actions[0] == FlagUnreliable("finalists_split", "vote [1.0, 1.0] not settled")
    assert actions[-1] == RunDone()
    outcome = story.ctl.outcome
    assert outcome is not None and outcome.answer == "7"  # the tie goes to the earliest finish
    assert outcome.judge_unreliable == "finalists_split"
    assert story.voters == {0, 1}


def test_the_extra_budget_caps_the_resumes() -> None:
    story = robust(6, "AAAAAA", finalists=1, max_extra_finalists=1)
    story.start()
    story.arrive(0, 1, 2, 3, 4, 5)
    story.finish(0, "7")
    (extra,) = [a.trace_id for a in story.of_type(ResumeTrace)]
    assert story.finish(extra, "3")[-1] == RunDone()  # budget spent: vote with what ran
    assert len(story.of_type(ResumeTrace)) == 1


def test_every_finished_trace_votes_and_losers_are_parked_not_aborted() -> None:
    # Trace 3 (group B) finishes early, before its cluster loses: it paid for its answer.
    story = robust(5, "AAABA", finalists=2, settle=VoteSettling(min_margin=1))
    story.start()
    story.finish_before_prefix(3, "3")
    story.arrive(0, 1, 2)
    story.arrive(4)
    assert story.status(3) == "finished"
    story.finish(0, "7")
    (resumed,) = [a.trace_id for a in story.of_type(ResumeTrace)]
    assert story.finish(resumed, "7")[-1] == RunDone()  # 2 vs 1, nothing running
    assert 3 in story.voters
    assert story.ctl.outcome is not None and story.ctl.outcome.answer == "7"


def test_paper_finalisation_is_unchanged_by_the_new_settings() -> None:
    story = Story(4, "ABCD", finalists=4, finalisation="paper")
    story.start()
    story.arrive(0, 1, 2, 3)
    # 4 tied singletons: the oldest founder wins, the others are aborted as losing clusters.
    assert {a.trace_id for a in story.of_type(AbortTrace)} == {1, 2, 3}
    assert not story.of_type(FlagUnreliable)


@pytest.mark.parametrize("margin", [1, 2])
def test_self_consistency_with_the_settled_stop(margin: int) -> None:
    ctl = SelfConsistencyController(5, AnswerRules.exact(), settle=VoteSettling(min_margin=margin))
    assert ctl.start() == [StartTrace(t) for t in range(5)]
    assert ctl.on_finished(0, answer_text("4"), "stop") == []
    assert ctl.on_finished(1, answer_text("4"), "stop") == []
    actions = ctl.on_finished(2, answer_text("4"), "stop")  # 3 vs 0 with 2 running: settled
    assert actions[:2] == [AbortTrace(3, "vote_settled"), AbortTrace(4, "vote_settled")]
    assert actions[-1] == RunDone()
    assert ctl.outcome is not None and ctl.outcome.answer == "4"
    assert ctl.method == "self_consistency_settled"


def test_parked_means_resumable_at_finalisation() -> None:
    story = robust(4, "AABB", finalists=1)
    story.start()
    story.arrive(0, 1, 2, 3)
    parks = story.of_type(ParkTrace)
    assert any(p.trace_id == 2 for p in parks)  # the losing founder waits, parked
