"""Property tests for ``DeepPruneController``: random runs driven by a simulated driver.

Hypothesis draws a configuration (N, K, K1, K2, tau, policy, judge-error policy, judge batch size)
and a scenario (each trace's true answer group and answer, whether it ends before its prefix,
how noisy and how unreliable the judge is, whether a deadline fires). A simulator then plays the
driver: it reacts to every action the way ``deepprune_lc.runtime.driver`` does (a started trace streams, a
parked or aborted one falls silent, a resumed one streams again, a scoring request is answered
later) and delivers the possible events in a random, seeded order until the run ends. Whatever the
interleaving, the invariants of the method must hold.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from deepprune_lc.core.answers import AnswerRules, vote_settled
from deepprune_lc.core.config import PruningConfig, VoteSettling
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

EXACT = AnswerRules.exact()
TERMINAL = {"finished", "pruned", "aborted"}


@dataclass(frozen=True)
class Scenario:
    n: int
    max_clusters: int
    cluster_sample: int
    finalists: int
    threshold: float
    policy: str
    finalisation: str
    min_margin: int
    max_extra: int | None
    split_resume: str
    on_judge_error: str
    max_judge_batch: int
    seed: int
    groups: tuple[int, ...]  # true answer group of each trace
    answers: tuple[str | None, ...]  # the answer each trace ends with (None: none extractable)
    early: tuple[bool, ...]  # the trace ends before its prefix completes
    judge_noise: float  # chance a pair gets a uniformly random probability
    judge_failure: float  # chance a request fails or returns garbage
    judge_speed: float  # how likely the judge answers next, relative to a trace's progress
    deadline_step: int | None  # the deadline fires once this many events were delivered
    sim_seed: int  # orders the events

    def config(self) -> PruningConfig:
        return PruningConfig(
            n_traces=self.n,
            max_clusters=self.max_clusters,
            cluster_sample=self.cluster_sample,
            finalists=self.finalists,
            threshold=self.threshold,
            policy=self.policy,  # type: ignore[arg-type]
            finalisation=self.finalisation,  # type: ignore[arg-type]
            settle=VoteSettling(min_margin=self.min_margin),
            max_extra_finalists=self.max_extra,
            split_resume=self.split_resume,  # type: ignore[arg-type]
            on_judge_error=self.on_judge_error,  # type: ignore[arg-type]
            max_judge_batch=self.max_judge_batch,
            seed=self.seed,
        )


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    n = draw(st.integers(1, 24))
    n_groups = draw(st.integers(1, 5))
    groups = tuple(draw(st.lists(st.integers(0, n_groups - 1), min_size=n, max_size=n)))
    no_answer = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    early_rate = draw(st.sampled_from([0, 1, 3]))  # in tenths: traces ending before their prefix
    answers = tuple(
        None if missing and draw(st.integers(0, 3)) == 0 else str(group)
        for group, missing in zip(groups, no_answer, strict=True)
    )
    return Scenario(
        n=n,
        max_clusters=draw(st.integers(1, 6)),
        cluster_sample=draw(st.integers(1, 4)),
        finalists=draw(st.integers(1, 6)),
        threshold=draw(st.sampled_from([0.25, 0.5, 0.5, 0.75, 0.9])),
        policy=draw(st.sampled_from(["majority", "majority", "diverse"])),
        finalisation=draw(st.sampled_from(["paper", "robust"])),
        min_margin=draw(st.integers(1, 3)),
        max_extra=draw(st.none() | st.integers(0, 4)),
        split_resume=draw(st.sampled_from(["needed", "doubling"])),
        on_judge_error=draw(st.sampled_from(["fallback", "fallback", "raise"])),
        max_judge_batch=draw(st.sampled_from([1, 1, 2, 4, 16])),
        seed=draw(st.integers(0, 3)),
        groups=groups,
        answers=answers,
        early=tuple(
            roll < early_rate for roll in draw(st.lists(st.integers(0, 9), min_size=n, max_size=n))
        ),
        judge_noise=draw(st.sampled_from([0.0, 0.1, 0.5])),
        judge_failure=draw(st.sampled_from([0.0, 0.0, 0.0, 0.05, 0.3])),
        judge_speed=draw(st.sampled_from([0.5, 3.0, 20.0])),
        deadline_step=draw(st.none() | st.none() | st.none() | st.integers(0, 60)),
        sim_seed=draw(st.integers(0, 2**32 - 1)),
    )


def trace_text(answer: str | None) -> str:
    if answer is None:
        return "Hmm, so I am not sure. I give up."
    return f"Wait, let me check. So the answer is \\boxed{{{answer}}}"


@dataclass
class Run:
    """What a simulated run did, for the invariants."""

    ctl: DeepPruneController
    log: list[Action] = field(default_factory=list)
    ended: str | None = None  # "done" (RunDone) or "failed" (FailRun then abort_all)
    pairs_per_trace: Counter[int] = field(default_factory=Counter)
    judge_failures: int = 0
    steps: int = 0


def simulate(sc: Scenario) -> Run:
    """Play the driver for one scenario until the run ends; fail if it can no longer progress."""
    ctl = DeepPruneController(sc.config(), EXACT)
    run = Run(ctl)
    rng = random.Random(sc.sim_seed)
    # Driver-side view of each trace: idle, pre (streaming, prefix not reached), post (streaming,
    # prefix reported), parked, aborted, finished (on_finished delivered).
    sim = ["idle"] * sc.n
    reached = [False] * sc.n
    raced = [False] * sc.n  # a stopped trace may deliver one late on_finished (engine race)
    requests: list[ScorePairs] = []

    def apply(actions: list[Action]) -> None:
        failed = False
        for action in actions:
            assert run.ended is None, f"{action} after the run ended"
            run.log.append(action)
            if isinstance(action, StartTrace):
                assert sim[action.trace_id] == "idle"
                sim[action.trace_id] = "pre"
            elif isinstance(action, ScorePairs):
                assert action.trace_ids, "a request clusters at least one trace"
                for t in action.trace_ids:
                    assert reached[t], f"trace {t} scored before it reached its prefix"
                    assert ctl.traces[t].prefix is not None
                for pair in action.pairs:
                    assert pair.trace_a in action.trace_ids
                    assert pair.trace_b != pair.trace_a
                    assert reached[pair.trace_b]
                    run.pairs_per_trace[pair.trace_a] += 1
                requests.append(action)
            elif isinstance(action, ClusterTrace):
                assert 0 <= action.cluster_id < sc.max_clusters
            elif isinstance(action, ParkTrace):
                assert sim[action.trace_id] == "post", f"park of {sim[action.trace_id]} trace"
                sim[action.trace_id] = "parked"
            elif isinstance(action, AbortTrace):
                assert sim[action.trace_id] in ("pre", "post"), (
                    f"abort of {sim[action.trace_id]} trace {action.trace_id}"
                )
                sim[action.trace_id] = "aborted"
            elif isinstance(action, ResumeTrace):
                assert sim[action.trace_id] == "parked", (
                    f"resume of {sim[action.trace_id]} trace {action.trace_id}"
                )
                sim[action.trace_id] = "post"
            elif isinstance(action, FailRun):
                assert sc.on_judge_error == "raise"
                failed = True
            elif isinstance(action, RunDone):
                run.ended = "done"
        if failed and run.ended is None:
            apply(ctl.abort_all("error"))  # what the driver does on FailRun
            run.ended = "failed"
        for state in ctl.traces:  # parked traces are pruned silently
            if state.status == "pruned":
                sim[state.trace_id] = "pruned"

    def finish(t: int) -> None:
        text = trace_text(sc.answers[t])
        if sim[t] == "pre" and ctl.needs_judge:
            # Ended before its prefix completed: the driver reports the whole text as prefix.
            reached[t] = True
            apply(ctl.on_prefix(t, text))
        if run.ended is not None:
            return
        accepted = ctl.traces[t].status in ("running", "parked")
        apply(ctl.on_finished(t, text, "stop"))
        if accepted:
            sim[t] = "finished"

    def reach_prefix(t: int) -> None:
        reached[t] = True
        sim[t] = "post"
        apply(ctl.on_prefix(t, f"prefix of trace {t} (group {sc.groups[t]})"))

    def answer(request: ScorePairs) -> None:
        requests.remove(request)
        if rng.random() < sc.judge_failure:
            run.judge_failures += 1
            garbage = rng.choice(["fail", "nan", "high", "short"])
            if garbage == "fail":
                apply(ctl.on_judge_failed(request.request_id, "simulated failure"))
            elif garbage == "nan":
                apply(ctl.on_judged(request.request_id, [math.nan] * len(request.pairs)))
            elif garbage == "high":
                apply(ctl.on_judged(request.request_id, [1.5] * len(request.pairs)))
            else:
                apply(ctl.on_judged(request.request_id, [0.5] * (len(request.pairs) + 1)))
            return
        probabilities = []
        for pair in request.pairs:
            roll = rng.random()
            if roll < sc.judge_noise:
                p = rng.random()
            elif roll < sc.judge_noise + 0.05:
                p = sc.threshold  # exactly tau: does not join
            elif sc.groups[pair.trace_a] == sc.groups[pair.trace_b]:
                p = rng.uniform(max(sc.threshold, 0.6), 1.0)
            else:
                p = rng.uniform(0.0, min(sc.threshold, 0.4))
            probabilities.append(p)
        apply(ctl.on_judged(request.request_id, probabilities))

    def race(t: int) -> None:
        raced[t] = True
        accepted = ctl.traces[t].status == "parked"
        apply(ctl.on_finished(t, trace_text(sc.answers[t]), "stop"))
        if accepted:
            sim[t] = "finished"

    apply(ctl.start())
    while run.ended is None:
        events: list[tuple[float, object]] = []
        for t in range(sc.n):
            if sim[t] == "pre" and ctl.needs_judge and not sc.early[t]:
                events.append((1.0, lambda t=t: reach_prefix(t)))
            elif sim[t] == "pre":
                events.append((1.0, lambda t=t: finish(t)))
            elif sim[t] == "post":  # the rest of a trace is longer than its prefix
                events.append((0.3, lambda t=t: finish(t)))
            elif sim[t] in ("parked", "aborted") and not raced[t]:
                events.append((0.01, lambda t=t: race(t)))
        for request in requests:
            events.append((sc.judge_speed, lambda r=request: answer(r)))
        if sc.deadline_step is not None and run.steps >= sc.deadline_step:
            events.append((1.0, lambda: apply(ctl.on_deadline())))
        assert events, f"stuck: statuses {ctl.statuses()}, sim {sim}, phase {ctl.phase}"
        weights = [w for w, _ in events]
        (chosen,) = rng.choices([e for _, e in events], weights=weights)
        chosen()  # type: ignore[operator]
        check_finalisation_timing(sc, ctl)
        run.steps += 1
        assert run.steps < 50 * sc.n + 500, "the run does not converge"
    return run


def check_finalisation_timing(sc: Scenario, ctl: DeepPruneController) -> None:
    """Finalisation starts exactly when the rules say: as soon as the winner is certain (MV), or
    once every trace is clustered."""
    if not ctl.clusters or ctl.phase == "fallback" or (ctl.done and ctl.phase == "sampling"):
        return  # nothing clustered yet, judge fallback, or deadline / failure
    clustered = sum(len(c.members) for c in ctl.clusters)
    unclustered = sc.n - clustered
    sizes = [*sorted((len(c.members) for c in ctl.clusters), reverse=True), 0]
    if sc.policy == "majority":
        due = unclustered == 0 or sizes[0] > sizes[1] + unclustered
    else:
        due = unclustered == 0
    assert due == (ctl.phase == "finalising"), (ctl.phase, sizes, unclustered)


def check_invariants(sc: Scenario, run: Run) -> None:
    ctl = run.ctl
    statuses = ctl.statuses()
    outcome = ctl.outcome
    # Every trace ends in exactly one terminal status; the run ended the way the rules allow.
    assert all(s in TERMINAL for s in statuses), statuses
    assert ctl.done and outcome is not None
    run_done = sum(isinstance(a, RunDone) for a in run.log)
    if run.ended == "done":
        assert run_done == 1 and isinstance(run.log[-1], RunDone)
    else:
        assert run.ended == "failed" and run_done == 0
        assert outcome.fallback == "error" and sc.on_judge_error == "raise"
        assert run.judge_failures > 0
    if outcome.fallback == "judge_error":
        assert sc.on_judge_error == "fallback" and run.judge_failures > 0
    # Clusters: at most K, every trace clustered at most once, memberships consistent.
    clusters = ctl.clusters
    assert len(clusters) <= sc.max_clusters
    clustered = Counter(a.trace_id for a in run.log if isinstance(a, ClusterTrace))
    assert all(count == 1 for count in clustered.values())
    members = [m for c in clusters for m in c.members]
    assert sorted(members) == sorted(clustered)
    for c in clusters:
        assert c.members[0] == c.founder
        assert all(ctl.traces[m].cluster_id == c.cluster_id for m in c.members)
        if not (sc.finalisation == "robust" and sc.policy == "majority"):
            assert ctl.traces[c.founder].status != "pruned"  # founders are never parked
    if sc.n == 1:
        assert not clusters and not any(isinstance(a, ScorePairs) for a in run.log)
    # Judge budget: at most K * K1 pairs per clustered trace; the count matches what was asked.
    limit = sc.max_clusters * sc.cluster_sample
    assert all(n <= limit for n in run.pairs_per_trace.values()), run.pairs_per_trace
    assert ctl.judge_pairs == sum(run.pairs_per_trace.values())
    # Parking and resuming.
    parked = {a.trace_id for a in run.log if isinstance(a, ParkTrace)}
    resumed = [a.trace_id for a in run.log if isinstance(a, ResumeTrace)]
    assert len(resumed) == len(set(resumed)) and set(resumed) <= parked
    assert all(ctl.traces[t].cluster_id is not None for t in parked)
    robust = sc.finalisation == "robust" and sc.policy == "majority"
    if resumed:
        assert sc.policy == "majority"
        if not robust:
            assert len(resumed) + 1 <= sc.finalists
            (_winner_id,) = {ctl.traces[t].cluster_id for t in resumed}  # all from the winner
        elif sc.max_extra is not None:
            assert len(resumed) + 1 <= sc.finalists + sc.max_extra
    # An aborted trace stays aborted whatever it reports later; a parked one ends pruned, or
    # finished if it raced its park; a trace never stopped by the controller finishes.
    aborted = {a.trace_id for a in run.log if isinstance(a, AbortTrace)}
    assert all(ctl.traces[t].status == "aborted" for t in aborted)
    for t in parked - set(resumed) - aborted:
        assert ctl.traces[t].status in ("pruned", "finished")
    for t in set(range(sc.n)) - parked - aborted:
        assert ctl.traces[t].status == "finished"
    # Votes: only finished traces with an answer vote; the vote table lists exactly them.
    voters = {t.trace_id for t in ctl.traces if t.voted}
    assert all(ctl.traces[t].status == "finished" and ctl.traces[t].answer for t in voters)
    assert sorted(t for v in outcome.votes for t in v.trace_ids) == sorted(voters)
    if outcome.votes:
        assert outcome.answer == outcome.votes[0].answer
        assert outcome.winning_trace in outcome.votes[0].trace_ids
    else:
        assert outcome.answer is None
    if robust and outcome.fallback is None and sc.n > 1:
        assert run.ended == "done"
        # Every finished trace with an answer votes: a finished trace paid for its answer.
        finished = {t.trace_id for t in ctl.traces if t.status == "finished" and t.answer}
        assert voters == finished
        for a in run.log:
            if isinstance(a, AbortTrace):
                assert a.reason in ("winner_certain", "vote_settled"), a
                if a.reason == "winner_certain":
                    assert a.trace_id not in members
        # A run ends with a settled vote, or with nothing left it could have resumed.
        settled = vote_settled(list(outcome.votes), 0, sc.min_margin)
        budget_spent = sc.max_extra is not None and ctl._extra_left == 0  # extra resumes used up
        nothing_left = not any(ctl.traces[t].status == "pruned" for t in members)
        assert settled or nothing_left or budget_spent or sc.finalists >= sc.n, (
            outcome.votes,
            statuses,
        )
        if ctl.judge_unreliable == "finalists_split":
            assert len(outcome.votes) >= 1
    elif outcome.fallback is None and sc.n > 1:
        assert run.ended == "done"
        winner = max(clusters, key=lambda c: (len(c.members), -c.cluster_id))
        if sc.policy == "majority":
            assert voters <= set(winner.members)
            assert len(voters) <= sc.finalists
            assert all(ctl.traces[t].cluster_id == winner.cluster_id for t in resumed)
            # Finalisation stopped every non-finalist at once, for the documented reason.
            for a in run.log:
                if isinstance(a, AbortTrace):
                    assert a.reason in ("winner_certain", "losing_cluster"), a
                    if a.reason == "losing_cluster":
                        assert ctl.traces[a.trace_id].cluster_id != winner.cluster_id
                        assert any(a.trace_id == c.founder for c in clusters)
                    else:
                        assert a.trace_id not in members
        else:
            voice_clusters = [ctl.traces[t].cluster_id for t in voters]
            assert len(voice_clusters) == len(set(voice_clusters))
            sizes = {c.cluster_id: len(c.members) for c in clusters}
            assert sum(v.weight for v in outcome.votes) == sum(
                sizes[c]
                for c in voice_clusters  # type: ignore[index]
            )
            assert all(ctl.traces[c.founder].status != "aborted" for c in clusters)
        assert len(clustered) == sc.n or sc.policy == "majority"


@settings(max_examples=200, deadline=None)
@given(sc=scenarios())
def test_random_runs_keep_every_invariant(sc: Scenario) -> None:
    run = simulate(sc)
    check_invariants(sc, run)
    # Same seed, same scenario: the same actions, in the same order, and the same outcome.
    again = simulate(sc)
    assert repr(again.log) == repr(run.log)
    assert again.ctl.outcome == run.ctl.outcome
    assert again.ctl.statuses() == run.ctl.statuses()


@st.composite
def clustering_orders(draw: st.DrawFn) -> tuple[tuple[int, ...], tuple[int, ...], str, int]:
    n = draw(st.integers(2, 16))
    groups = tuple(draw(st.lists(st.integers(0, 3), min_size=n, max_size=n)))
    order = tuple(draw(st.permutations(range(n))))
    return groups, order, draw(st.sampled_from(["majority", "diverse"])), draw(st.integers(2, 8))


def cluster_in_order(
    groups: tuple[int, ...], order: tuple[int, ...], policy: str, batch: int, answer_every: int
) -> list[list[int]]:
    """Deliver the prefixes in ``order`` with a judge that answers after every ``answer_every``
    arrivals (so requests batch up); return the clusters."""
    n = len(groups)
    config = PruningConfig(
        n_traces=n,
        max_clusters=n,
        cluster_sample=n,
        policy=policy,  # type: ignore[arg-type]
        max_judge_batch=batch,
    )
    ctl = DeepPruneController(config, EXACT)
    ctl.start()
    requests: list[ScorePairs] = []

    def take(actions: list[Action]) -> None:
        requests.extend(a for a in actions if isinstance(a, ScorePairs))

    def judge() -> None:
        while requests:
            r = requests.pop(0)
            take(
                ctl.on_judged(
                    r.request_id,
                    [0.9 if groups[p.trace_a] == groups[p.trace_b] else 0.1 for p in r.pairs],
                )
            )

    for i, t in enumerate(order):
        take(ctl.on_prefix(t, f"p{t}"))
        if (i + 1) % answer_every == 0:
            judge()
    judge()
    return [list(c.members) for c in ctl.clusters]


@settings(max_examples=100, deadline=None)
@given(case=clustering_orders(), answer_every=st.integers(1, 6))
def test_batched_clustering_matches_one_at_a_time_when_k_is_not_reached(
    case: tuple[tuple[int, ...], tuple[int, ...], str, int], answer_every: int
) -> None:
    groups, order, policy, batch = case
    sequential = cluster_in_order(groups, order, policy, 1, answer_every)
    batched = cluster_in_order(groups, order, policy, batch, answer_every)
    assert batched == sequential
    # With K and K1 never binding and a judge that reads true groups, clusters are the groups.
    for members in sequential:
        assert len({groups[m] for m in members}) == 1
