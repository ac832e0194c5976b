"""One test per rule of the DeepPrune controller (docs/method.md: the paper's rules and ours).

The controller is sans-IO, so every test is a short story told with plain data: a tiny harness feeds
it events (prefix reached, trace finished, judge answered, deadline) and records the actions it
returns; a fake judge answers each pair from a table saying which traces share a true answer.
Unless a test says otherwise, ``max_judge_batch=1`` (the paper's strictly one-at-a-time clustering).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable

import pytest

from deepprune_lc.core.answers import AnswerRules
from deepprune_lc.core.config import PruningConfig
from deepprune_lc.core.controllers import (
    AbortTrace,
    Action,
    ClusterTrace,
    DeepPruneController,
    FailRun,
    ParkTrace,
    ResumeTrace,
    RunDone,
    ScorePairs,
    StartTrace,
)
from deepprune_lc.core.monitors import PrefixMonitor
from deepprune_lc.core.ports import PrefixPair

SAME = 0.9  # fake judge: probability for two traces of the same true answer group
DIFF = 0.1  # ... and for two traces of different groups

EXACT = AnswerRules.exact()


def answer_text(answer: str | None) -> str:
    """A finished trace's text; ``None`` gives a trace without an extractable answer."""
    if answer is None:
        return "Hmm, I am not sure. I give up."
    return f"Let me think. So we add them... so the answer is \\boxed{{{answer}}}"


def prefix_of(trace_id: int) -> str:
    return f"prefix {trace_id}: wait, so ..."


class Story:
    """Drives one ``DeepPruneController`` and records every action it returns.

    ``groups`` maps trace id -> true answer group; the fake judge returns ``SAME`` for a pair of the
    same group and ``DIFF`` otherwise (or ``probability(a, b)`` when given).
    """

    def __init__(
        self,
        n: int,
        groups: dict[int, str] | str | None = None,
        *,
        rules: AnswerRules = EXACT,
        probability: Callable[[int, int], float] | None = None,
        **config: object,
    ) -> None:
        config.setdefault("max_judge_batch", 1)
        # These stories tell the paper's rules; robust finalisation has test_robust_finalisation.py.
        config.setdefault("finalisation", "paper")
        self.config = PruningConfig(n_traces=n, **config)  # type: ignore[arg-type]
        self.ctl = DeepPruneController(self.config, rules)
        if isinstance(groups, str):  # "AABAB": trace i is in group groups[i]
            groups = dict(enumerate(groups))
        self.groups = groups or {}
        self.probability = probability or self._same_group
        self.log: list[Action] = []
        self.requests: deque[ScorePairs] = deque()  # asked, not yet answered

    # -- the fake judge ---------------------------------------------------------------------------
    def _same_group(self, a: int, b: int) -> float:
        return SAME if self.groups.get(a, a) == self.groups.get(b, b) else DIFF

    # -- events -----------------------------------------------------------------------------------
    def _record(self, actions: list[Action]) -> list[Action]:
        self.log += actions
        self.requests.extend(a for a in actions if isinstance(a, ScorePairs))
        return actions

    def start(self) -> list[Action]:
        return self._record(self.ctl.start())

    def prefix(self, trace_id: int, text: str | None = None) -> list[Action]:
        return self._record(self.ctl.on_prefix(trace_id, text or prefix_of(trace_id)))

    def finish(self, trace_id: int, answer: str | None, reason: str = "stop") -> list[Action]:
        return self._record(self.ctl.on_finished(trace_id, answer_text(answer), reason))

    def finish_before_prefix(self, trace_id: int, answer: str | None) -> list[Action]:
        """What the driver does when a stream ends before its prefix completed."""
        text = answer_text(answer)
        actions = self._record(self.ctl.on_prefix(trace_id, text))
        return actions + self._record(self.ctl.on_finished(trace_id, text, "stop"))

    def request(self) -> ScorePairs:
        """The oldest unanswered judge request."""
        return self.requests[0]

    def judge(self, probabilities: list[float] | None = None) -> list[Action]:
        """Answer the oldest pending request (with the fake judge unless told the numbers)."""
        req = self.requests.popleft()
        if probabilities is None:
            probabilities = [self.probability(p.trace_a, p.trace_b) for p in req.pairs]
        return self._record(self.ctl.on_judged(req.request_id, probabilities))

    def fail_judge(self, reason: str = "judge exploded") -> list[Action]:
        req = self.requests.popleft()
        return self._record(self.ctl.on_judge_failed(req.request_id, reason))

    def deadline(self) -> list[Action]:
        return self._record(self.ctl.on_deadline())

    def arrive(self, *trace_ids: int) -> list[Action]:
        """Each trace reaches its prefix in turn and the judge answers before the next arrives."""
        actions: list[Action] = []
        for t in trace_ids:
            actions += self.prefix(t)
            while self.requests:
                actions += self.judge()
        return actions

    # -- reading the state ----------------------------------------------------------------------
    @property
    def statuses(self) -> list[str | None]:
        return list(self.ctl.statuses())

    def status(self, trace_id: int) -> str | None:
        return self.ctl.traces[trace_id].status

    def of_type(self, kind: type) -> list[Action]:
        return [a for a in self.log if isinstance(a, kind)]

    @property
    def voters(self) -> set[int]:
        return {t.trace_id for t in self.ctl.traces if t.voted}

    @property
    def members(self) -> list[list[int]]:
        return [list(c.members) for c in self.ctl.clusters]


def joined(trace_id: int, cluster_id: int, size: int, score: float = SAME) -> list[Action]:
    return [
        ClusterTrace(trace_id, cluster_id, False, score, size),
        ParkTrace(trace_id, cluster_id),
    ]


def founded(trace_id: int, cluster_id: int, score: float | None = DIFF) -> ClusterTrace:
    return ClusterTrace(trace_id, cluster_id, True, score, 1)


def score_request(request_id: int, trace_id: int, *others: int) -> ScorePairs:
    """A request clustering ``trace_id`` against ``others`` (singleton clusters: order is fixed)."""
    pairs = tuple(PrefixPair(trace_id, o, prefix_of(trace_id), prefix_of(o)) for o in others)
    return ScorePairs(request_id, (trace_id,), pairs)


# --------------------------------------------------------------------------------------------------
# Start


def test_start_starts_every_trace() -> None:
    story = Story(4)
    assert story.start() == [StartTrace(0), StartTrace(1), StartTrace(2), StartTrace(3)]
    assert story.statuses == ["running"] * 4
    assert isinstance(story.ctl.monitor(0), PrefixMonitor) and story.ctl.needs_judge


def test_single_trace_runs_alone_and_never_asks_the_judge() -> None:
    story = Story(1)
    assert story.start() == [StartTrace(0)]
    assert story.ctl.monitor(0) is None and not story.ctl.needs_judge
    assert story.prefix(0) == []  # even if a driver reports one, nothing is clustered
    assert story.finish(0, "7") == [RunDone()]
    assert story.of_type(ScorePairs) == []
    assert story.ctl.judge_pairs == 0
    outcome = story.ctl.outcome
    assert outcome is not None
    assert (outcome.answer, outcome.winning_trace, outcome.fallback) == ("7", 0, None)
    assert story.statuses == ["finished"]
    assert story.voters == {0}


# --------------------------------------------------------------------------------------------------
# Clustering


def test_first_prefix_founds_cluster_zero_without_a_judge_call() -> None:
    story = Story(3)
    story.start()
    assert story.prefix(2) == [ClusterTrace(2, 0, True, None, 1)]
    assert story.requests == deque()
    assert story.ctl.judge_pairs == 0
    assert story.status(2) == "running"
    assert story.members == [[2]]


def test_arrival_order_with_one_judge_request_in_flight() -> None:
    story = Story(5, "AABBC")
    story.start()
    assert story.prefix(3) == [founded(3, 0, None)]
    assert story.prefix(0) == [score_request(1, 0, 3)]
    # Two more prefixes arrive while request 1 is pending: queued, nothing is sent.
    assert story.prefix(4) == []
    assert story.prefix(2) == []
    # Answering request 1 clusters trace 0 (a new cluster), then sends the next in arrival order.
    assert story.judge() == [founded(0, 1), score_request(2, 4, 3, 0)]
    assert story.judge() == [founded(4, 2), score_request(3, 2, 3, 0, 4)]
    assert story.judge() == joined(2, 0, 2)
    assert story.members == [[3, 2], [0], [4]]
    assert [r.trace_ids for r in story.of_type(ScorePairs)] == [(0,), (4,), (2,)]


def test_a_second_prefix_report_for_the_same_trace_is_ignored() -> None:
    story = Story(3)
    story.start()
    story.prefix(0)
    story.prefix(1)
    assert story.prefix(1, "another prefix") == []
    story.judge()
    assert story.requests == deque()


def test_score_is_the_mean_over_at_most_k1_members_drawn_from_the_cluster() -> None:
    # Cluster 0 grows to 5 members, then trace 6 is compared with only K1 = 2 of them.
    story = Story(12, "AAAAABB", cluster_sample=2, max_clusters=4)
    story.start()
    story.arrive(0, 1, 2, 3, 4, 5)
    assert story.members == [[0, 1, 2, 3, 4], [5]]
    story.prefix(6)
    request = story.request()
    by_cluster = [p.trace_b for p in request.pairs]
    assert len(request.pairs) <= story.config.max_clusters * story.config.cluster_sample
    assert len(request.pairs) == 3  # 2 drawn from cluster 0, 1 from the singleton cluster 1
    assert len(set(by_cluster[:2])) == 2 and set(by_cluster[:2]) <= {0, 1, 2, 3, 4}
    assert by_cluster[2] == 5
    assert all(p.trace_a == 6 and p.prefix_a == prefix_of(6) for p in request.pairs)
    assert all(p.prefix_b == prefix_of(p.trace_b) for p in request.pairs)
    # mean(1.0, 0.2) = 0.6 > tau for cluster 0 beats 0.55 for cluster 1
    assert story.judge([1.0, 0.2, 0.55]) == joined(6, 0, 6, score=pytest.approx(0.6))


def test_with_clusters_no_larger_than_k1_every_member_is_compared() -> None:
    story = Story(10, "AAABB", cluster_sample=3)
    story.start()
    story.arrive(0, 1, 2, 3)
    assert story.members == [[0, 1, 2], [3]]
    story.prefix(4)
    pairs = story.request().pairs
    assert sorted(p.trace_b for p in pairs) == [0, 1, 2, 3]
    assert story.ctl.judge_pairs == 1 + 2 + 3 + 4  # traces 1, 2, 3 and 4 were scored


def test_a_score_equal_to_the_threshold_does_not_join() -> None:
    story = Story(4, threshold=0.5)
    story.start()
    story.arrive(0)
    story.prefix(1)
    assert story.judge([0.5]) == [founded(1, 1, 0.5)]
    assert story.status(1) == "running"
    story.prefix(2)
    assert story.judge([math.nextafter(0.5, 1.0), 0.0]) == joined(
        2, 0, 2, score=math.nextafter(0.5, 1.0)
    )


def test_join_parks_the_trace_and_found_keeps_it_running() -> None:
    story = Story(5, "AABCC")
    story.start()
    story.arrive(0, 1, 2)
    assert story.status(0) == "running"  # founder of cluster 0
    assert story.status(1) == "parked"  # joined cluster 0
    assert story.status(2) == "running"  # founder of cluster 1
    assert story.of_type(ParkTrace) == [ParkTrace(1, 0)]
    assert story.ctl.traces[1].cluster_score == SAME
    assert story.ctl.traces[1].cluster_id == 0


def test_k_cap_forces_a_dissimilar_trace_into_the_most_similar_cluster() -> None:
    story = Story(8, max_clusters=2)
    story.start()
    story.arrive(0, 1)
    assert story.members == [[0], [1]]
    story.prefix(2)
    assert story.request().pairs == score_request(1, 2, 0, 1).pairs
    assert story.judge([0.2, 0.3]) == [
        ClusterTrace(2, 1, False, 0.3, 2, forced=True),
        ParkTrace(2, 1),
    ]
    assert len(story.ctl.clusters) == 2
    assert story.status(2) == "parked"


def test_k_cap_tie_between_clusters_goes_to_the_older_cluster() -> None:
    story = Story(8, max_clusters=2)
    story.start()
    story.arrive(0, 1)
    story.prefix(2)
    assert story.judge([0.3, 0.3]) == [
        ClusterTrace(2, 0, False, 0.3, 2, forced=True),
        ParkTrace(2, 0),
    ]


def test_best_score_tie_above_threshold_goes_to_the_older_cluster() -> None:
    story = Story(8)
    story.start()
    story.arrive(0, 1)
    story.prefix(2)
    assert story.judge([0.8, 0.8]) == joined(2, 0, 2, score=0.8)


def test_batched_clustering_at_the_k_cap_matches_one_at_a_time() -> None:
    def clusters(batch: int) -> list[list[int]]:
        story = Story(6, "AAABBC", max_clusters=2, max_judge_batch=batch)
        story.start()
        story.prefix(0)  # founds cluster 0
        story.prefix(1)  # request for trace 1 in flight...
        for t in (2, 3, 4):  # ...while 2, 3 and 4 queue up (one batch when batch >= 3)
            story.prefix(t)
        while story.requests:
            story.judge()
        return story.members

    # One at a time: 1 and 2 join cluster 0, 3 founds cluster 1 (the K-th), 4 joins it.
    assert clusters(1) == [[0, 1, 2], [3, 4]]
    assert clusters(3) == clusters(1)


def test_queued_prefixes_are_batched_in_arrival_order() -> None:
    story = Story(6, "AAABBC", max_judge_batch=4)
    story.start()
    story.prefix(0)
    story.prefix(5)
    for t in (3, 1, 4):
        assert story.prefix(t) == []
    story.judge()
    assert story.request().trace_ids == (3, 1, 4)
    story.judge()
    assert story.members == [[0, 1], [5], [3, 4]]
    assert story.of_type(ParkTrace) == [ParkTrace(1, 0), ParkTrace(4, 2)]


# --------------------------------------------------------------------------------------------------
# Majority finalisation (MV)


def test_majority_finalises_as_soon_as_the_winner_is_certain() -> None:
    # Groups: 0-4 answer "7" (A), 5 and 6 are loners. K2 = 3: the founder plus 2 resumed members.
    story = Story(7, "AAAAABC", finalists=3)
    story.start()
    story.arrive(0, 5, 1, 2)
    assert story.members == [[0, 1, 2], [5]]
    # 3 > 1 + 3 unclustered (3, 4, 6): not certain yet; nothing has been aborted.
    assert story.of_type(AbortTrace) == []
    story.prefix(3)
    story.prefix(4)  # queued behind trace 3's request
    actions = story.judge()
    # 4 > 1 + 2 unclustered: certain. Unclustered traces, then losing founders, are stopped; two of
    # the three parked members of the winner are resumed.
    resumed = [a.trace_id for a in actions if isinstance(a, ResumeTrace)]
    assert len(resumed) == 2 and set(resumed) <= {1, 2, 3}
    assert actions == [
        *joined(3, 0, 4),
        AbortTrace(4, "winner_certain"),
        AbortTrace(6, "winner_certain"),
        AbortTrace(5, "losing_cluster"),
        *(ResumeTrace(t, 0) for t in resumed),
    ]
    assert story.requests == deque()  # trace 4's queued clustering was dropped
    (left_parked,) = {1, 2, 3} - set(resumed)
    assert story.status(left_parked) == "parked"
    assert story.status(0) == "running"  # the winner's founder kept running
    assert all(story.status(t) == "running" for t in resumed)
    assert all(story.ctl.traces[t].resumed for t in resumed)
    # The run ends only when every finalist is terminal.
    assert story.finish(resumed[0], "7") == []
    assert story.finish(0, "7") == []
    assert story.finish(resumed[1], "8") == [RunDone()]
    assert story.status(left_parked) == "pruned"
    assert story.statuses.count("aborted") == 3
    outcome = story.ctl.outcome
    assert outcome is not None and outcome.answer == "7" and outcome.fallback is None
    assert outcome.winning_trace == resumed[0]  # earliest finisher of the winning group
    assert story.voters == {0, *resumed}
    assert sorted(t for v in outcome.votes for t in v.trace_ids) == sorted([0, *resumed])
    assert [(v.answer, v.weight) for v in outcome.votes] == [("7", 2.0), ("8", 1.0)]


def test_finalists_are_founder_plus_at_most_k2_minus_one_resumed_members() -> None:
    story = Story(6, "AAAAAA", finalists=2)
    story.start()
    actions = story.arrive(0, 1, 2, 3)
    # 4 members vs 0 + 2 unclustered: certain; only K2 - 1 = 1 of 3 parked members is resumed.
    resumed = [a for a in actions if isinstance(a, ResumeTrace)]
    assert len(resumed) == 1 and resumed[0].trace_id in {1, 2, 3}
    assert actions[-3:] == [
        AbortTrace(4, "winner_certain"),
        AbortTrace(5, "winner_certain"),
        *resumed,
    ]
    story.finish(resumed[0].trace_id, "7")
    assert story.finish(0, "7") == [RunDone()]
    assert story.statuses.count("pruned") == 2
    assert story.voters == {0, resumed[0].trace_id}


def test_k2_of_one_lets_only_the_founder_finish() -> None:
    story = Story(3, "AAA", finalists=1)
    story.start()
    actions = story.arrive(0, 1)  # 2 vs 0 + 1 unclustered: certain
    assert actions[-1] == AbortTrace(2, "winner_certain")
    assert not any(isinstance(a, ResumeTrace) for a in actions)
    assert story.finish(0, "7") == [RunDone()]
    assert story.statuses == ["finished", "pruned", "aborted"]
    assert story.voters == {0}


def test_finalises_once_every_trace_is_clustered_tie_goes_to_the_older_cluster() -> None:
    story = Story(4, "BABA", finalists=2)
    story.start()
    story.arrive(0, 1, 2)
    assert story.of_type(AbortTrace) == []  # 2 vs 1 + 1 unclustered: not certain
    story.prefix(3)
    actions = story.judge()
    # Two clusters of two: the older one (cluster 0, founded by trace 0) wins.
    assert actions == [
        *joined(3, 1, 2),
        AbortTrace(1, "losing_cluster"),
        ResumeTrace(2, 0),
    ]
    story.finish(2, "b")
    assert story.finish(0, "b") == [RunDone()]
    assert story.statuses == ["finished", "aborted", "finished", "pruned"]
    outcome = story.ctl.outcome
    assert outcome is not None and outcome.answer == "b"


def test_trace_that_finishes_before_its_prefix_is_clustered_and_stays_finished() -> None:
    story = Story(3, "AAB")
    story.start()
    story.arrive(0)
    actions = story.finish_before_prefix(1, "7")
    assert [type(a) for a in actions] == [ScorePairs]
    assert story.request().pairs == (PrefixPair(1, 0, answer_text("7"), prefix_of(0)),)
    assert story.status(1) == "finished"
    actions = story.judge()
    # Joined, but not parked: it has already finished. 2 > 0 + 1: the winner is certain.
    assert actions == [
        ClusterTrace(1, 0, False, SAME, 2),
        AbortTrace(2, "winner_certain"),
    ]
    assert story.status(1) == "finished"
    assert story.finish(0, "7") == [RunDone()]
    assert story.voters == {0, 1}  # a finished member of the winner is a finalist
    outcome = story.ctl.outcome
    assert outcome is not None and outcome.votes[0].trace_ids == [1, 0]


def test_trace_that_finishes_before_its_prefix_can_found_a_cluster() -> None:
    story = Story(3, "ABB", finalists=2)
    story.start()
    story.finish_before_prefix(1, "5")
    assert story.log[-1] == founded(1, 0, None)
    story.arrive(0)  # founds cluster 1
    story.arrive(2)  # joins cluster 0 (trace 1's): 2 vs 1, all clustered
    assert story.members == [[1, 2], [0]]
    assert story.of_type(ResumeTrace) == [ResumeTrace(2, 0)]
    assert story.of_type(AbortTrace) == [AbortTrace(0, "losing_cluster")]
    assert story.finish(2, "5") == [RunDone()]
    outcome = story.ctl.outcome
    assert outcome is not None and outcome.answer == "5" and story.voters == {1, 2}


def test_parked_trace_that_finishes_anyway_becomes_finished() -> None:
    story = Story(5, "AAABC")
    story.start()
    story.arrive(0, 1)
    assert story.status(1) == "parked"
    # Its stream ended on its own before the park reached the engine.
    assert story.finish(1, "7") == []
    assert story.status(1) == "finished"
    assert not story.ctl.traces[1].resumed


def test_finish_of_an_aborted_trace_is_ignored() -> None:
    story = Story(4, "AAAB", finalists=1)
    story.start()
    story.arrive(0, 3, 1, 2)
    assert story.status(3) == "aborted"  # losing founder
    assert story.finish(3, "9") == []
    assert story.status(3) == "aborted"
    assert story.ctl.traces[3].answer is None
    story.finish(0, "7")
    outcome = story.ctl.outcome
    assert outcome is not None and [v.answer for v in outcome.votes] == ["7"]
    assert 3 not in story.voters


def test_finish_after_the_run_is_done_is_ignored() -> None:
    story = Story(3, "AAA", finalists=1)
    story.start()
    story.arrive(0, 1, 2)
    story.finish(0, "7")
    assert story.ctl.done
    assert story.finish(1, "8") == []  # pruned member racing the end of the run
    assert story.status(1) == "pruned"


# --------------------------------------------------------------------------------------------------
# Diverse (GC)


def test_diverse_runs_every_founder_and_weights_votes_by_cluster_size() -> None:
    story = Story(6, "AABACB", policy="diverse")
    story.start()
    story.arrive(0, 1, 2, 3, 4)  # clusters: A {0, 1, 3}, B {2}, C {4}
    # Under MV the winner would be certain by now (3 > 1 + 1); GC never finalises early.
    assert story.of_type(AbortTrace) == []
    assert story.members == [[0, 1, 3], [2], [4]]
    story.finish(2, "8")
    story.prefix(5)
    assert story.judge() == joined(5, 1, 2)  # B {2, 5}; every trace is clustered now
    assert story.of_type(ResumeTrace) == []
    assert story.finish(4, "9") == []
    assert story.finish(0, "7") == [RunDone()]
    assert story.statuses == ["finished", "pruned", "finished", "pruned", "finished", "pruned"]
    outcome = story.ctl.outcome
    assert outcome is not None and outcome.fallback is None
    assert outcome.answer == "7" and outcome.winning_trace == 0
    assert [(v.answer, v.weight, v.trace_ids) for v in outcome.votes] == [
        ("7", 3.0, [0]),
        ("8", 2.0, [2]),
        ("9", 1.0, [4]),
    ]
    assert story.voters == {0, 2, 4}


def test_diverse_founder_without_answer_is_replaced_by_a_finished_member() -> None:
    story = Story(3, "AAB", policy="diverse")
    story.start()
    story.arrive(0, 1)
    story.finish(1, "7")  # parked member raced to the end
    story.arrive(2)
    story.finish(2, "8")
    assert story.finish(0, None) == [RunDone()]
    outcome = story.ctl.outcome
    assert outcome is not None
    assert [(v.answer, v.weight, v.trace_ids) for v in outcome.votes] == [
        ("7", 2.0, [1]),
        ("8", 1.0, [2]),
    ]


# --------------------------------------------------------------------------------------------------
# Judge errors


def test_judge_error_with_fallback_stops_clustering_and_votes_plainly() -> None:
    story = Story(5, "AABBC")
    story.start()
    story.arrive(0, 1)
    story.prefix(2)
    story.prefix(3)  # queued
    assert story.fail_judge("connection reset") == []
    assert story.ctl.phase == "fallback"
    assert story.ctl.fallback_detail == "connection reset"
    assert story.prefix(4) == []  # no more clustering
    assert story.requests == deque()
    assert story.statuses == ["running", "parked", "running", "running", "running"]
    story.finish(0, "7")
    story.finish(2, "8")
    assert story.finish(3, "8") == []
    assert story.finish(4, "7") == [RunDone()]  # nothing runs any more (trace 1 is parked)
    assert story.statuses == ["finished", "pruned", "finished", "finished", "finished"]
    outcome = story.ctl.outcome
    assert outcome is not None and outcome.fallback == "judge_error"
    # 7 (traces 0, 4) vs 8 (traces 2, 3): tie, 7 finished first.
    assert [(v.answer, v.weight) for v in outcome.votes] == [("7", 2.0), ("8", 2.0)]
    assert outcome.answer == "7"


def test_judge_error_with_fallback_and_nothing_running_ends_at_once() -> None:
    story = Story(2, "AB")
    story.start()
    story.arrive(0)
    story.finish(0, "7")
    story.finish_before_prefix(1, "8")
    assert story.fail_judge() == [RunDone()]
    outcome = story.ctl.outcome
    assert outcome is not None and outcome.fallback == "judge_error"
    assert outcome.answer == "7"


def test_judge_error_with_raise_fails_the_run() -> None:
    story = Story(3, on_judge_error="raise")
    story.start()
    story.arrive(0)
    story.prefix(1)
    (action,) = story.fail_judge("timeout")
    assert isinstance(action, FailRun)
    assert "timeout" in action.reason and "1" in action.reason
    # The driver then aborts everything; the run ends without a vote.
    assert story.ctl.abort_all("error") == [
        AbortTrace(0, "error"),
        AbortTrace(1, "error"),
        AbortTrace(2, "error"),
    ]
    outcome = story.ctl.outcome
    assert outcome is not None and outcome.fallback == "error" and outcome.answer is None


@pytest.mark.parametrize(
    "probabilities",
    [[0.9, 0.9], [], [float("nan")], [1.5], [-0.1], [float("inf")], ["high"]],
    ids=["too-many", "too-few", "nan", "above-one", "negative", "inf", "not-a-number"],
)
@pytest.mark.parametrize("policy", ["fallback", "raise"])
def test_invalid_judge_output_is_a_judge_error(probabilities: list[float], policy: str) -> None:
    story = Story(3, on_judge_error=policy)
    story.start()
    story.arrive(0)
    story.prefix(1)
    actions = story.judge(probabilities)
    if policy == "raise":
        assert len(actions) == 1 and isinstance(actions[0], FailRun)
    else:
        assert actions == []
        assert story.ctl.phase == "fallback"
        assert story.ctl.fallback_detail
    assert story.ctl.clusters[0].members == [0]
    assert story.ctl.traces[1].cluster_id is None


def test_stale_judge_answer_is_ignored() -> None:
    story = Story(6, "AAAAAB", finalists=1)
    story.start()
    story.arrive(0, 1, 2)
    story.prefix(3)
    current = story.request()
    assert story.ctl.on_judged(current.request_id + 99, [0.9]) == []  # unknown request id
    assert story.ctl.on_judge_failed(current.request_id + 99, "late") == []
    story.judge()  # 4 vs 0 + 2 unclustered: finalised, trace 4 and 5 aborted
    assert story.ctl.phase == "finalising"
    story.prefix(4)  # ignored after finalisation
    assert story.requests == deque()
    # The request for trace 3 was answered; pretend a duplicate of it (and a failure) come late.
    assert story.ctl.on_judged(current.request_id, [0.1]) == []
    assert story.ctl.on_judge_failed(current.request_id, "late") == []
    assert story.ctl.traces[3].cluster_id == 0


def test_judge_answer_for_a_failed_request_is_ignored() -> None:
    story = Story(4)
    story.start()
    story.arrive(0)
    story.prefix(1)
    failed = story.request()
    story.fail_judge()
    assert story.ctl.phase == "fallback"
    assert story.ctl.on_judged(failed.request_id, [SAME]) == []
    assert story.ctl.on_judge_failed(failed.request_id, "again") == []
    assert story.ctl.traces[1].cluster_id is None


# --------------------------------------------------------------------------------------------------
# Deadline and fallbacks


def test_deadline_aborts_running_traces_and_votes_over_finished_ones() -> None:
    story = Story(5, "AABCA")
    story.start()
    story.arrive(0, 1, 2)
    story.finish(0, "7")
    story.finish(2, "8")
    story.prefix(3)  # pending with the judge
    assert story.deadline() == [
        AbortTrace(3, "deadline"),
        AbortTrace(4, "deadline"),
        RunDone(),
    ]
    assert story.statuses == ["finished", "pruned", "finished", "aborted", "aborted"]
    outcome = story.ctl.outcome
    assert outcome is not None and outcome.fallback == "deadline"
    assert [(v.answer, v.weight) for v in outcome.votes] == [("7", 1.0), ("8", 1.0)]
    assert outcome.answer == "7"
    assert story.deadline() == []  # once is enough


def test_deadline_while_finalising_counts_only_finalists() -> None:
    story = Story(4, "AAAB", finalists=2)
    story.start()
    story.arrive(0, 3)
    story.finish(3, "9")  # a losing founder that finished before it could be aborted
    story.arrive(1, 2)
    (resumed,) = story.of_type(ResumeTrace)
    story.finish(resumed.trace_id, "7")
    assert story.deadline() == [AbortTrace(0, "deadline"), RunDone()]
    outcome = story.ctl.outcome
    assert outcome is not None and outcome.fallback == "deadline" and outcome.answer == "7"
    assert story.voters == {resumed.trace_id}


def test_deadline_with_nothing_finished_has_no_answer() -> None:
    story = Story(2)
    story.start()
    assert story.deadline() == [AbortTrace(0, "deadline"), AbortTrace(1, "deadline"), RunDone()]
    outcome = story.ctl.outcome
    assert outcome is not None
    assert (outcome.answer, outcome.winning_trace, outcome.fallback) == (None, None, "deadline")


def test_judge_answer_after_the_deadline_is_ignored() -> None:
    story = Story(3, "AAB")
    story.start()
    story.arrive(0)
    story.finish(0, "7")
    story.prefix(1)
    story.deadline()
    before = story.ctl.outcome
    assert story.judge() == []
    assert story.ctl.outcome == before
    assert story.ctl.outcome is not None and story.ctl.outcome.fallback == "deadline"


def test_prefix_after_the_deadline_is_ignored() -> None:
    story = Story(3)
    story.start()
    story.arrive(0)
    story.deadline()
    assert story.prefix(1) == []


def test_judge_failure_after_abort_all_is_ignored() -> None:
    story = Story(3)
    story.start()
    story.arrive(0)
    story.prefix(1)
    story.ctl.abort_all("error")
    assert story.fail_judge("cancelled") == []
    assert story.ctl.outcome is not None and story.ctl.outcome.fallback == "error"


def test_no_finalist_with_an_answer_falls_back_to_any_finished_trace() -> None:
    story = Story(3, "AAB", finalists=2)
    story.start()
    story.arrive(0, 2)
    story.finish(2, "5")  # founder of the (future) losing cluster
    story.arrive(1)  # 2 vs 1: all clustered, cluster 0 wins; trace 1 resumed
    assert story.of_type(ResumeTrace) == [ResumeTrace(1, 0)]
    story.finish(1, None)
    assert story.finish(0, None) == [RunDone()]
    outcome = story.ctl.outcome
    assert outcome is not None
    assert (outcome.answer, outcome.winning_trace, outcome.fallback) == ("5", 2, "no_voter")
    assert story.voters == {2}


def test_no_answer_anywhere_reports_the_first_finished_trace() -> None:
    story = Story(2, "AA")
    story.start()
    story.arrive(0, 1)
    story.finish(1, None)
    assert story.finish(0, None) == [RunDone()]
    outcome = story.ctl.outcome
    assert outcome is not None
    assert (outcome.answer, outcome.winning_trace, outcome.fallback) == (None, 1, "no_voter")
    assert outcome.votes == ()


# --------------------------------------------------------------------------------------------------
# Voting


def test_vote_tie_goes_to_the_group_that_finished_first() -> None:
    story = Story(7, "AAAABBB", finalists=4)
    story.start()
    story.arrive(0, 4, 1, 5, 2, 6, 3)  # 4 vs 3 once every trace is clustered
    assert {a.trace_id for a in story.of_type(ResumeTrace)} == {1, 2, 3}
    story.finish(2, "7")
    story.finish(0, "8")
    story.finish(3, "8")
    assert story.finish(1, "7") == [RunDone()]
    outcome = story.ctl.outcome
    assert outcome is not None
    assert [(v.answer, v.weight, v.first_finish) for v in outcome.votes] == [
        ("7", 2.0, 0),
        ("8", 2.0, 1),
    ]
    assert (outcome.answer, outcome.winning_trace) == ("7", 2)


def test_votes_group_equivalent_math_answers() -> None:
    story = Story(4, "AAAB", finalists=3, rules=AnswerRules.math())
    story.start()
    story.arrive(0, 3, 1, 2)
    story.finish(0, "0.5")
    story.finish(1, "\\frac{1}{2}")
    assert story.finish(2, "2") == [RunDone()]
    outcome = story.ctl.outcome
    assert outcome is not None and outcome.answer == "0.5"
    assert [(v.weight, sorted(v.trace_ids)) for v in outcome.votes] == [(2.0, [0, 1]), (1.0, [2])]


# --------------------------------------------------------------------------------------------------
# Reproducibility


def run_story(seed: int) -> list[Action]:
    """A run with random choices: K1 < cluster sizes and more parked members than K2 - 1."""
    story = Story(12, "AAAAAAAABBCC", seed=seed, cluster_sample=2, finalists=3)
    story.start()
    story.arrive(0, 8, 1, 2, 3, 4, 10, 5, 6)
    for t in [t for t in range(12) if story.status(t) == "running"]:
        story.finish(t, "7")
    assert story.ctl.done
    return story.log


def test_same_seed_gives_the_same_actions() -> None:
    assert run_story(3) == run_story(3)


def test_different_seeds_may_compare_and_resume_different_members() -> None:
    logs = {repr(run_story(seed)) for seed in range(10)}
    assert len(logs) > 1
