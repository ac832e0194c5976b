"""``DeepPruneController``: online greedy clustering of prefixes, pruning, finalisation, voting."""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from deepprune_lc.core.answers import AnswerRules, Ballot, group_votes, vote_settled
from deepprune_lc.core.config import ProbeClustering, PruningConfig
from deepprune_lc.core.controllers.actions import (
    Action,
    ClusterTrace,
    FailRun,
    FlagUnreliable,
    ParkTrace,
    ProbeTrace,
    ResumeTrace,
    ScorePairs,
)
from deepprune_lc.core.controllers.base import Controller
from deepprune_lc.core.controllers.states import Phase, Unreliability
from deepprune_lc.core.monitors import PrefixMonitor, ProbeDue, ProbeMonitor, Signal, TraceMonitor
from deepprune_lc.core.ports import PrefixPair
from deepprune_lc.core.result import ClusterReport, VoteGroup

__all__ = ["DeepPruneController"]


@dataclass(slots=True)
class Cluster:
    cluster_id: int
    founder: int
    members: list[int] = field(default_factory=list)  # founder first, then in joining order
    #: Probe clustering: the answer class the cluster stands for (None: the unknowns).
    probe_answer: str | None = None


@dataclass(slots=True)
class _PendingJudgement:
    request_id: int
    trace_ids: tuple[int, ...]
    #: Per pair, in pair order: (trace being clustered, target). A target >= 0 is an existing
    #: cluster id; a target < 0 is ``-(t + 1)`` for an earlier trace ``t`` of the same batch, which
    #: stands for the cluster ``t`` founds if it founds one.
    targets: tuple[tuple[int, int], ...]


class DeepPruneController(Controller):
    """Online greedy clustering of trace prefixes, pruning, finalisation and voting.

    Phases: ``sampling`` (traces are clustered in arrival order), then ``finalising`` (``majority``:
    the winner's finalists run; ``diverse``: every founder runs), or ``fallback`` after a judge error
    (no more pruning; running traces finish; plain majority vote).
    """

    method = "deepprune"

    def __init__(
        self, config: PruningConfig, rules: AnswerRules, rng: random.Random | None = None
    ) -> None:
        super().__init__(config.n_traces, rules)
        self.config = config
        self.rng = rng if rng is not None else random.Random(config.seed)
        self.clusters: list[Cluster] = []
        self.phase: Phase = "sampling"
        self.judge_pairs = 0
        self._queue: deque[int] = deque()  # traces with a prefix, waiting to be clustered
        self._pending: _PendingJudgement | None = None
        self._request_counter = 0
        self._clustered = 0
        self._finalists: set[int] = set()
        self._leading: list[int] = []
        self._extra_left: int | None = None
        #: Probe clustering (``PruningConfig.probe``; the runner sets it for the ``probe`` judge).
        self.probe: ProbeClustering | None = config.probe
        self.probes_answered = 0
        self._recent_probes: dict[int, deque[str | None]] = {}
        #: Per finalist, the offset its last noted probe answer was observed at (``on_probed``).
        self._observed_at: dict[int, int] = {}
        self._same_cache: dict[tuple[str, str], bool] = {}

    # -- what the driver asks ----------------------------------------------------------------------
    @property
    def needs_judge(self) -> bool:
        # One trace needs no judge: it simply runs (docs/method.md: ``n_traces=1`` runs one trace).
        return self.n_traces > 1 and self.probe is None

    @property
    def needs_probes(self) -> bool:
        """Whether the driver's backend must answer probes (``AnswerProbing``)."""
        return self.n_traces > 1 and self.probe is not None

    def monitor(self, trace_id: int) -> TraceMonitor | None:
        """Every trace is watched until its prefix is complete (unless there is nothing to judge);
        with probe clustering, until its probe is due (and on, every ``reprobe_every`` tokens)."""
        self._state(trace_id)
        if self.n_traces == 1:
            return None
        probe = self.probe
        if probe is None:
            return PrefixMonitor(self.config.prefix)
        if probe.reprobe_every is None or not self._robust():
            return ProbeMonitor(probe.at_tokens, first_at=probe.at_tokens, once=True)
        return ProbeMonitor(probe.reprobe_every, first_at=probe.at_tokens)

    # -- events ----------------------------------------------------------------------------------
    def start(self) -> list[Action]:
        return self._start(range(self.n_traces))

    def on_signal(self, trace_id: int, signal: Signal) -> list[Action]:
        if not isinstance(signal, ProbeDue):
            return super().on_signal(trace_id, signal)
        state = self._require_started(trace_id, "ProbeDue")
        if self.done or self.probe is None or state.status != "running":
            return []
        if self.phase == "sampling" and state.cluster_id is None:
            return [ProbeTrace(trace_id, signal.tokens)]
        if (
            self.phase == "finalising"
            and self.probe.reprobe_every is not None
            and self._robust()
            and trace_id in self._finalists
        ):
            return [ProbeTrace(trace_id, signal.tokens)]
        return []

    def on_probed(
        self,
        trace_id: int,
        *,
        text: str = "",
        answer: str | None = None,
        unknown: bool = False,
        observed_at: int | None = None,
    ) -> list[Action]:
        """The trace's probe answered (``ProbeReply``'s fields): cluster it by its answer class
        while sampling; while finalising, note it for the agreement stop. ``observed_at``: the
        decoded tokens the answer was observed at; a reply observed at the same offset as the
        previous one noted for the trace (a recording asked again before its next recorded probe,
        or past its last) repeats that observation and adds nothing to the agreement count."""
        state = self._require_started(trace_id, "on_probed")
        if self.done or self.probe is None:
            return []
        self.probes_answered += 1
        resolved: str | None = None
        if not unknown:
            resolved = answer if answer is not None else self.rules.extract("\\boxed{" + text)
        if self.phase == "sampling" and state.cluster_id is None and not state.terminal:
            return self._place_by_probe(trace_id, resolved) + self._maybe_finalise()
        if self.phase == "finalising" and state.status == "running":
            if observed_at is not None:
                if self._observed_at.get(trace_id) == observed_at:
                    return []  # the same observation again: no new evidence
                self._observed_at[trace_id] = observed_at
            recent = self._recent_probes.setdefault(trace_id, deque(maxlen=self.probe.agree_stop))
            recent.append(resolved)
            return self._maybe_finish_finalising()
        return []

    def on_probe_failed(self, trace_id: int, reason: str) -> list[Action]:
        """A probe raised: as a judge error (``on_judge_error``), since it is the judge's input."""
        self._require_started(trace_id, "on_probe_failed")
        if self.done or self.phase != "sampling":
            return []  # a later probe only served the agreement stop: the run goes on without it
        if self.config.on_judge_error == "raise":
            return [FailRun(f"probe of trace {trace_id} failed: {reason}")]
        self.phase = "fallback"
        self.fallback_detail = f"probe of trace {trace_id} failed: {reason}"
        self._queue.clear()
        return self._maybe_finish_fallback()

    def _same(self, a: str, b: str) -> bool:
        """Equivalent answers under the run's rules, cached (probe answers repeat a lot)."""
        if a == b:
            return True
        key = (a, b) if a < b else (b, a)
        same = self._same_cache.get(key)
        if same is None:
            same = self._same_cache[key] = bool(self.rules.equivalent(a, b))
        return same

    def _place_by_probe(self, trace_id: int, answer: str | None) -> list[Action]:
        """Join the cluster of the trace's answer class (no judge call), else found one; at K
        clusters a trace with a new class joins the largest (bounded diversity, as forced joins)."""
        assert self.probe is not None
        for cluster in self.clusters:
            known = cluster.probe_answer
            if answer is None:
                if known is None and self.probe.unknown == "together":
                    return self._join(trace_id, cluster.cluster_id, 1.0, forced=False)
            elif known is not None and self._same(known, answer):
                return self._join(trace_id, cluster.cluster_id, 1.0, forced=False)
        if len(self.clusters) < self.config.max_clusters:
            actions = self._found(trace_id, None)
            self.clusters[-1].probe_answer = answer
            return actions
        return self._join(trace_id, self._winner().cluster_id, 0.0, forced=True)

    def _probes_agree(self) -> list[Action] | None:
        """The probe-aware settled vote (``ProbeClustering.reprobe_every``, ``settle_on``).

        A running finalist whose last ``agree_stop`` probes all name one answer is *committed* to
        it. ``settle_on="evidence"``: the finished vote's leader needs ``settle.min_margin``
        finished votes of its own (a short trace that ends on a value the others only pass
        through is not confirmed by their probes alone) and a lead of ``min_margin`` over every
        other answer, each committed finalist counting as a vote for its answer; uncommitted
        finalists are not waited for. ``"running"``: only finalists committed to the leader are
        taken as unable to overturn the vote; the rest are waited for as ``vote_settled`` says.
        When settled the running finalists stop and the finished traces vote; None otherwise.
        """
        probe = self.probe
        if probe is None or probe.reprobe_every is None or not self.config.settle.enabled:
            return None
        running = [t.trace_id for t in self.traces if t.status == "running"]
        if not running:
            return None
        ballots = self._finished_ballots()
        votes = group_votes(ballots, self._same) if ballots else []
        if not votes:
            return None
        margin = self.config.settle.min_margin
        committed = [a for t in running if (a := self._committed_answer(t)) is not None]
        if probe.settle_on == "evidence":
            settled = self._evidence_settled(votes, committed, margin)
        else:
            leader = votes[0].answer
            to_leader = sum(1 for a in committed if self._same(leader, a))
            if not to_leader:
                return None
            uncommitted = len(running) - to_leader
            if probe.count_committed:
                # Committed finalists count as the leader's votes (as Parallel-Probe's probe vote).
                lead = votes[0].weight - (votes[1].weight if len(votes) > 1 else 0.0)
                settled = lead + to_leader > uncommitted and lead >= margin
            else:
                settled = vote_settled(votes, uncommitted, margin)
        if not settled:
            return None
        actions: list[Action] = []
        for trace_id in running:
            actions += self._abort(trace_id, "vote_settled")
        return actions + self._finish_run(ballots)

    def _committed_answer(self, trace_id: int) -> str | None:
        """The answer a running finalist's last ``agree_stop`` probes all name, if they do."""
        assert self.probe is not None
        recent = self._recent_probes.get(trace_id)
        if recent is None or len(recent) < self.probe.agree_stop:
            return None
        first = recent[0]
        if first is None or not all(a is not None and self._same(first, a) for a in recent):
            return None
        return first

    def _evidence_settled(
        self, votes: Sequence[VoteGroup], committed: Sequence[str], margin: int
    ) -> bool:
        """``settle_on="evidence"``: the finished leader has ``margin`` finished votes and leads
        every other answer by ``margin`` once each committed finalist is counted as a vote."""
        if votes[0].weight < margin:
            return False
        answers = [v.answer for v in votes]
        evidence = [v.weight for v in votes]
        for answer in committed:
            home = next((i for i, a in enumerate(answers) if self._same(a, answer)), None)
            if home is None:
                answers.append(answer)
                evidence.append(1.0)
            else:
                evidence[home] += 1.0
        return all(evidence[0] - other >= margin for other in evidence[1:])

    def on_prefix(self, trace_id: int, prefix: str) -> list[Action]:
        state = self._require_started(trace_id, "on_prefix")
        if self.done or self.n_traces == 1 or self.phase != "sampling" or state.prefix is not None:
            return []
        state.prefix = prefix
        self._queue.append(trace_id)
        return self._pump()

    def on_judged(self, request_id: int, probabilities: Sequence[float]) -> list[Action]:
        pending = self._pending_for(request_id)
        if pending is None:
            return []  # the run moved on (finalised, fell back or ended) while the judge worked
        problem = self._invalid_scores(pending, probabilities)
        if problem is not None:
            return self.on_judge_failed(request_id, problem)
        self._pending = None
        per_trace: dict[int, dict[int, list[float]]] = {t: {} for t in pending.trace_ids}
        for (trace_id, target), p in zip(pending.targets, probabilities, strict=True):
            per_trace[trace_id].setdefault(target, []).append(float(p))
        founded_in_batch: dict[int, int] = {}  # batch trace -> the cluster it founded
        actions: list[Action] = []
        for trace_id in pending.trace_ids:
            if self.phase != "sampling":
                break  # finalised mid-batch: the rest were aborted as unclustered
            scores: dict[int, list[float]] = {}
            for target, ps in per_trace[trace_id].items():
                cluster_id = target if target >= 0 else founded_in_batch.get(-target - 1)
                if cluster_id is not None:
                    scores.setdefault(cluster_id, []).extend(ps)
            n_clusters = len(self.clusters)
            actions += self._place(trace_id, scores)
            if len(self.clusters) > n_clusters:
                founded_in_batch[trace_id] = self.clusters[-1].cluster_id
            actions += self._maybe_finalise()
        return actions + self._pump()

    def _place(self, trace_id: int, scores: dict[int, list[float]]) -> list[Action]:
        """Join the best-scoring cluster if its mean score is > tau, else found (or forced join)."""
        if not scores:  # nothing to compare with (first trace of the run)
            return self._found(trace_id, None)
        # Best mean score; ties go to the older cluster (lower id).
        best_id, best = max(
            ((cid, sum(ps) / len(ps)) for cid, ps in scores.items()), key=lambda x: (x[1], -x[0])
        )
        if best > self.config.threshold:
            return self._join(trace_id, best_id, best, forced=False)
        if len(self.clusters) < self.config.max_clusters:
            return self._found(trace_id, best)
        return self._join(trace_id, best_id, best, forced=True)

    def on_judge_failed(self, request_id: int, reason: str) -> list[Action]:
        pending = self._pending_for(request_id)
        if pending is None:
            return []
        self._pending = None
        if self.config.on_judge_error == "raise":
            traces = ", ".join(map(str, pending.trace_ids))
            return [FailRun(f"judge failed while clustering trace(s) {traces}: {reason}")]
        # Fallback: stop pruning. Traces that are running finish; parked ones stay pruned.
        self.phase = "fallback"
        self.fallback_detail = reason
        self._queue.clear()
        return self._maybe_finish_fallback()

    def _pending_for(self, request_id: int) -> _PendingJudgement | None:
        """The request ``request_id`` answers, or None if it is stale (the run moved on)."""
        pending = self._pending
        if self.done or pending is None or pending.request_id != request_id:
            return None
        return pending if self.phase == "sampling" else None

    # -- clustering --------------------------------------------------------------------------------
    def _pump(self) -> list[Action]:
        """Send the queued traces, in arrival order, to the judge: one request in flight at a time.

        Up to ``max_judge_batch`` queued traces go in one request. Each is compared with at most K1
        members drawn from every existing cluster and, while clusters may still be founded, with
        every earlier trace of its batch (each of which may found one), so a batched trace is
        weighed against the same clusters as one at a time, and pairs per trace stay <= K * K1.
        What batching changes: members that join a cluster during the batch are not in that
        batch's samples. With ``max_judge_batch=1`` this is exactly the paper's one-at-a-time
        greedy clustering.
        """
        if self._pending is not None or not self._queue or self.phase != "sampling":
            return []
        actions: list[Action] = []
        if not self.clusters:  # the first trace founds cluster 0 without asking anyone
            actions += self._found(self._queue.popleft(), None)
            actions += self._maybe_finalise()
            if not self._queue or self.phase != "sampling":
                return actions
        k1 = self.config.cluster_sample
        may_found = max(0, self.config.max_clusters - len(self.clusters))
        # While clusters may still be founded, each batched trace is also compared with every
        # earlier trace of its batch; capping the batch at may_found * K1 + 1 keeps the pairs per
        # trace <= existing * K1 + (K - existing) * K1 = K * K1.
        limit = self.config.max_judge_batch
        if may_found:
            limit = min(limit, may_found * k1 + 1)
        batch: list[int] = []
        while self._queue and len(batch) < limit:
            batch.append(self._queue.popleft())
        samples = [
            (c.cluster_id, self.rng.sample(c.members, min(k1, len(c.members))))
            for c in self.clusters
        ]
        pairs: list[PrefixPair] = []
        targets: list[tuple[int, int]] = []
        for position, trace_id in enumerate(batch):
            prefix = self.traces[trace_id].prefix or ""
            for cluster_id, members in samples:
                for member in members:
                    pairs.append(
                        PrefixPair(trace_id, member, prefix, self.traces[member].prefix or "")
                    )
                    targets.append((trace_id, cluster_id))
            if may_found:
                for earlier in batch[:position]:
                    pairs.append(
                        PrefixPair(trace_id, earlier, prefix, self.traces[earlier].prefix or "")
                    )
                    targets.append((trace_id, -earlier - 1))
        self._request_counter += 1
        self._pending = _PendingJudgement(self._request_counter, tuple(batch), tuple(targets))
        self.judge_pairs += len(pairs)
        actions.append(ScorePairs(self._request_counter, tuple(batch), tuple(pairs)))
        return actions

    def _found(self, trace_id: int, score: float | None) -> list[Action]:
        cluster = Cluster(len(self.clusters), trace_id, [trace_id])
        self.clusters.append(cluster)
        state = self.traces[trace_id]
        state.cluster_id, state.cluster_score = cluster.cluster_id, score
        self._clustered += 1
        return [ClusterTrace(trace_id, cluster.cluster_id, True, score, 1)]

    def _join(self, trace_id: int, cluster_id: int, score: float, *, forced: bool) -> list[Action]:
        cluster = self.clusters[cluster_id]
        cluster.members.append(trace_id)
        state = self.traces[trace_id]
        state.cluster_id, state.cluster_score = cluster_id, score
        self._clustered += 1
        actions: list[Action] = [
            ClusterTrace(trace_id, cluster_id, False, score, len(cluster.members), forced)
        ]
        if state.status == "running":
            self._move(trace_id, "parked")
            actions.append(ParkTrace(trace_id, cluster_id))
        return actions

    def _unclustered(self) -> int:
        return self.n_traces - self._clustered

    def _winner(self) -> Cluster:
        # Largest cluster; ties go to the older one.
        return max(self.clusters, key=lambda c: (len(c.members), -c.cluster_id))

    # -- finalisation ------------------------------------------------------------------------------
    def _maybe_finalise(self) -> list[Action]:
        if self.phase != "sampling" or not self.clusters:
            return []
        unclustered = self._unclustered()
        if self.config.policy == "diverse":
            return self._finalise_diverse() if unclustered == 0 else []
        sizes = sorted((len(c.members) for c in self.clusters), reverse=True)
        second = sizes[1] if len(sizes) > 1 else 0
        if unclustered == 0 or sizes[0] > second + unclustered:
            return self._finalise_majority()
        return []

    def _stop_unclustered(self) -> list[Action]:
        self._queue.clear()
        self._pending = None
        actions: list[Action] = []
        for state in self.traces:
            if state.cluster_id is None and not state.terminal:
                actions += self._abort(state.trace_id, "winner_certain")
        return actions

    def _finalise_majority(self) -> list[Action]:
        if self.config.finalisation == "robust":
            return self._finalise_robust()
        self.phase = "finalising"
        winner = self._winner()
        actions = self._stop_unclustered()
        for cluster in self.clusters:
            if cluster is not winner:
                for member in cluster.members:
                    actions += self._abort(member, "losing_cluster")
        # Finalists: the founder, members already finished, then resumed parked members (K2 total).
        budget = self.config.finalists
        finalists = [winner.founder]
        finalists += [m for m in winner.members[1:] if self.traces[m].status == "finished"][
            : max(0, budget - 1)
        ]
        parked = [m for m in winner.members[1:] if self.traces[m].status == "parked"]
        room = max(0, budget - len(finalists))
        for member in self.rng.sample(parked, min(room, len(parked))):
            state = self.traces[member]
            self._move(member, "running")
            state.resumed = True
            finalists.append(member)
            actions.append(ResumeTrace(member, winner.cluster_id))
        self._finalists = set(finalists)
        return actions + self._maybe_finish_finalising()

    # -- robust finalisation (ours; docs/method.md) ----------------------------------------------
    def _finalise_robust(self) -> list[Action]:
        """Finalise so that a weak judge costs tokens, not accuracy.

        The largest cluster's founder and up to K2 - 1 members finish, as in the paper; clusters
        tied for largest each send their founder instead (oldest first, K2 in all). Every other
        running trace is parked, not aborted, so it can still be resumed. Every finished trace
        votes. When the finalists are done and the vote is not settled (they split), more traces
        are resumed (see ``_resume_more``) until it is, or nothing is left to run.
        """
        self.phase = "finalising"
        actions = self._stop_unclustered()
        top = max(len(c.members) for c in self.clusters)
        leading = [c for c in self.clusters if len(c.members) == top]  # oldest first
        if top == 1 and len(self.clusters) > 1:
            actions += self._flag("all_singletons", f"{len(self.clusters)} clusters of one trace")
        elif len(leading) > 1:
            actions += self._flag("tied_clusters", f"{len(leading)} clusters tied at {top} traces")
        self._leading = [c.cluster_id for c in leading]
        budget = self.config.finalists
        if len(leading) == 1:
            winner = leading[0]
            finalists = [winner.founder]
            finalists += [m for m in winner.members[1:] if self.traces[m].status == "finished"][
                : max(0, budget - 1)
            ]
            parked = [m for m in winner.members[1:] if self.traces[m].status == "parked"]
            room = max(0, budget - len(finalists))
            to_resume = self.rng.sample(parked, min(room, len(parked)))
        else:
            finalists = [c.founder for c in leading][: max(budget, 1)]
            to_resume = [t for t in finalists if self.traces[t].status == "parked"]
        self._finalists = set(finalists)
        for trace_id in to_resume:
            actions += self._resume(trace_id)
        for state in self.traces:  # everything else waits, parked, in case the vote splits
            if state.status == "running" and state.trace_id not in self._finalists:
                self._move(state.trace_id, "parked")
                actions.append(ParkTrace(state.trace_id, state.cluster_id or 0))
        self._extra_left = self.config.max_extra_finalists
        return actions + self._maybe_finish_finalising()

    def _resume(self, trace_id: int) -> list[Action]:
        state = self.traces[trace_id]
        self._move(trace_id, "running")
        state.resumed = True
        self._finalists.add(trace_id)
        return [ResumeTrace(trace_id, state.cluster_id or 0)]

    def _flag(self, reason: Unreliability, detail: str) -> list[Action]:
        if self.judge_unreliable is None:
            self.judge_unreliable = reason
        return [FlagUnreliable(reason, detail)]

    def _resume_candidates(self) -> list[int]:
        """Parked traces in the order a split vote resumes them: members of the leading
        cluster(s), then founders of the others (largest first), then their members."""
        leading = set(self._leading)
        by_size = sorted(
            (c for c in self.clusters if c.cluster_id not in leading),
            key=lambda c: (-len(c.members), c.cluster_id),
        )
        order = [m for c in self.clusters if c.cluster_id in leading for m in c.members[1:]]
        order += [c.founder for c in by_size]
        order += [m for c in by_size for m in c.members[1:]]
        return [t for t in order if self.traces[t].status == "parked"]

    def _resume_more(self) -> list[Action]:
        """The finalists split: resume as many traces as could settle the vote, if any are left."""
        ballots = self._finished_ballots()
        votes = group_votes(ballots, self.rules.equivalent) if ballots else []
        lead = votes[0].weight - (votes[1].weight if len(votes) > 1 else 0.0) if votes else 0.0
        need = max(1, math.ceil(self.config.settle.min_margin - lead))
        if self.config.split_resume == "doubling":
            need = max(need, len(ballots))
        if self._extra_left is not None:
            need = min(need, self._extra_left)
        candidates = self._resume_candidates()[:need]
        actions: list[Action] = []
        if len(votes) > 1:
            actions += self._flag(
                "finalists_split", f"vote {[v.weight for v in votes]} not settled"
            )
        if self._extra_left is not None:
            self._extra_left -= len(candidates)
        for trace_id in candidates:
            actions += self._resume(trace_id)
        return actions

    def _maybe_finish_robust(self) -> list[Action]:
        agreed = self._probes_agree()
        if agreed is not None:
            return agreed
        settle = self.config.settle
        if settle.enabled:
            stopped = self._settled_stop(settle.min_margin)
            if stopped is not None:
                return stopped
        if any(self.traces[t].status == "running" for t in self._finalists):
            return []
        more = self._resume_more() if settle.enabled else []
        if any(isinstance(a, ResumeTrace) for a in more):
            return more
        return more + self._finish_run(self._finished_ballots())  # nothing left to run

    def _finalise_diverse(self) -> list[Action]:
        self.phase = "finalising"
        self._finalists = {c.founder for c in self.clusters}
        return self._maybe_finish_finalising()

    def _maybe_finish_finalising(self) -> list[Action]:
        if self._robust():
            return self._maybe_finish_robust()
        if not all(self.traces[t].terminal for t in self._finalists):
            return []
        return self._finish_run(self._final_ballots())

    def _final_ballots(self) -> list[Ballot]:
        if self.config.policy == "diverse":
            # One voice per cluster, weighted by its size: the founder, or failing that the
            # earliest-finished member with an answer.
            ballots = []
            for cluster in self.clusters:
                voters = self._ballots(cluster.members)
                if voters:
                    voice = next((b for b in voters if b.trace_id == cluster.founder), None)
                    voice = voice or min(voters, key=lambda b: b.finish_order)
                    ballots.append(
                        Ballot(
                            voice.trace_id, voice.answer, len(cluster.members), voice.finish_order
                        )
                    )
            return ballots
        ballots = self._ballots(sorted(self._finalists))
        ballots.sort(key=lambda b: b.finish_order)
        return ballots[: self.config.finalists]

    def _robust(self) -> bool:
        return self.config.finalisation == "robust" and self.config.policy == "majority"

    def _deadline_ballots(self) -> list[Ballot]:
        if self._robust():
            return self._finished_ballots()
        if self.phase == "finalising":
            return self._final_ballots()
        return super()._deadline_ballots()

    # -- finishing ---------------------------------------------------------------------------------
    def _after_finish(self, trace_id: int) -> list[Action]:
        if self.n_traces == 1:
            return self._finish_run(self._ballots([trace_id]))
        state = self.traces[trace_id]
        if self.probe is not None and self.phase == "sampling" and state.cluster_id is None:
            # It ended before its probe was due: its final answer is its class.
            return self._place_by_probe(trace_id, state.answer) + self._maybe_finalise()
        if self.phase == "finalising":
            return self._maybe_finish_finalising()
        if self.phase == "fallback":
            return self._maybe_finish_fallback()
        return []

    def _maybe_finish_fallback(self) -> list[Action]:
        if any(t.status == "running" for t in self.traces):
            return []
        ballots = self._ballots(t.trace_id for t in self.traces if t.status == "finished")
        return self._finish_run(ballots, fallback="judge_error")

    # -- validation and reports ----------------------------------------------------------------------
    @staticmethod
    def _invalid_scores(pending: _PendingJudgement, probabilities: Sequence[float]) -> str | None:
        if len(probabilities) != len(pending.targets):
            return f"judge returned {len(probabilities)} scores for {len(pending.targets)} pairs"
        for p in probabilities:
            try:
                value = float(p)
            except (TypeError, ValueError):
                return f"judge returned {p!r}, not a number"
            if math.isnan(value) or not 0.0 <= value <= 1.0:
                return f"judge returned {p!r}, not a probability in [0, 1]"
        return None

    def cluster_reports(self) -> list[ClusterReport]:
        return [
            ClusterReport(cluster_id=c.cluster_id, founder=c.founder, members=list(c.members))
            for c in self.clusters
        ]
