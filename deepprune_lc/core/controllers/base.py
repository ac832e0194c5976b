"""The controller base: trace states, finish order, voting and terminal-state accounting.

``Controller`` implements the :class:`~deepprune_lc.core.controllers.protocol.ControllerProtocol`
that the driver depends on. Subclasses (the baselines, DeepPrune) decide *what* to do; this base
owns the bookkeeping every method shares, including the single place where a trace's status
changes (``_move``, checked against the transition table in ``states.py``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from deepprune_lc.core.answers import AnswerRules, Ballot, group_votes, vote_settled
from deepprune_lc.core.controllers.actions import (
    AbortTrace,
    Action,
    RunDone,
    StartTrace,
)
from deepprune_lc.core.controllers.states import (
    AbortReason,
    ControllerProtocolError,
    Fallback,
    Unreliability,
    transition,
)
from deepprune_lc.core.monitors import PrefixComplete, Signal, TraceMonitor
from deepprune_lc.core.result import TERMINAL_STATUSES, ClusterReport, TraceStatus, VoteGroup

__all__ = ["Controller", "Outcome", "TraceState", "TraceView"]


@dataclass(slots=True)
class TraceState:
    """What a controller knows of one trace. Change ``status`` only through ``Controller._move``."""

    trace_id: int
    status: TraceStatus | None = None  # None: not started yet
    cluster_id: int | None = None
    prefix: str | None = None
    answer: str | None = None
    finish_order: int | None = None
    finish_reason: str | None = None
    cluster_score: float | None = None
    resumed: bool = False
    voted: bool = False

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES


@dataclass(frozen=True, slots=True)
class TraceView:
    """A read-only snapshot of one trace's controller state, for the driver's reports."""

    status: TraceStatus | None
    cluster_id: int | None
    cluster_score: float | None
    answer: str | None
    resumed: bool
    voted: bool


@dataclass(frozen=True, slots=True)
class Outcome:
    answer: str | None
    winning_trace: int | None
    votes: tuple[VoteGroup, ...]
    fallback: Fallback | None
    judge_unreliable: Unreliability | None = None


class Controller:
    """Shared bookkeeping: trace states, finish order, voting, terminal-state accounting."""

    method: str = "base"

    def __init__(self, n_traces: int, rules: AnswerRules) -> None:
        self.n_traces = n_traces
        self.rules = rules
        self.traces = [TraceState(t) for t in range(n_traces)]
        self.done = False
        self.outcome: Outcome | None = None
        #: Why the method fell back (e.g. the judge's error), for the result's ``error`` field.
        self.fallback_detail: str | None = None
        #: The first reason the clustering was not trusted, if any (reported in the outcome).
        self.judge_unreliable: Unreliability | None = None
        self._finish_counter = 0

    # What the driver asks --------------------------------------------------------------------------
    @property
    def needs_judge(self) -> bool:
        """Whether the driver must have a judge to execute this controller's ``ScorePairs``."""
        return False

    def monitor(self, trace_id: int) -> TraceMonitor | None:
        """The monitor the driver should feed this trace's deltas to (None: no signals needed)."""
        self._state(trace_id)
        return None

    def answer_of(self, trace_id: int) -> str | None:
        """The trace's extracted final answer (None until it finished, or if it has none)."""
        return self._state(trace_id).answer

    def trace_view(self, trace_id: int) -> TraceView:
        state = self._state(trace_id)
        return TraceView(
            status=state.status,
            cluster_id=state.cluster_id,
            cluster_score=state.cluster_score,
            answer=state.answer,
            resumed=state.resumed,
            voted=state.voted,
        )

    # Events from the driver -----------------------------------------------------------------------
    def start(self) -> list[Action]:
        raise NotImplementedError

    def on_signal(self, trace_id: int, signal: Signal) -> list[Action]:
        """A signal from the trace's monitor. The base understands ``PrefixComplete``."""
        if isinstance(signal, PrefixComplete):
            return self.on_prefix(trace_id, signal.prefix)
        self._require_started(trace_id, type(signal).__name__)
        return []

    def on_prefix(self, trace_id: int, prefix: str) -> list[Action]:
        self._require_started(trace_id, "on_prefix")
        return []

    def on_finished(self, trace_id: int, text: str, finish_reason: str) -> list[Action]:
        """The trace's stream ended on its own (``stop`` or ``length``)."""
        state = self._require_started(trace_id, "on_finished")
        if state.terminal or self.done:
            # Raced with an abort we had already decided on: its tokens count, it does not vote.
            return []
        self._move(trace_id, "finished")
        state.finish_reason = finish_reason
        state.answer = self.rules.extract(text)
        state.finish_order = self._finish_counter
        self._finish_counter += 1
        return self._after_finish(trace_id)

    def on_judged(self, request_id: int, probabilities: Sequence[float]) -> list[Action]:
        return []

    def on_judge_failed(self, request_id: int, reason: str) -> list[Action]:
        return []

    def on_deadline(self) -> list[Action]:
        """Time is up: stop whatever runs, vote with what finished."""
        if self.done:
            return []
        actions = self._stop_all("deadline")
        actions += self._finish_run(self._deadline_ballots(), fallback="deadline")
        return actions

    def abort_all(self, reason: AbortReason) -> list[Action]:
        """The run failed or was cancelled: stop everything, keep what finished (no vote)."""
        if self.done:
            return []
        actions = self._stop_all(reason)
        self.done = True
        self.outcome = Outcome(None, None, (), fallback="error")
        return actions

    # Hooks for subclasses ---------------------------------------------------------------------------
    def _after_finish(self, trace_id: int) -> list[Action]:
        raise NotImplementedError

    def _deadline_ballots(self) -> list[Ballot]:
        return self._ballots(t.trace_id for t in self.traces if t.status == "finished")

    # Helpers ----------------------------------------------------------------------------------------
    def _state(self, trace_id: int) -> TraceState:
        if not isinstance(trace_id, int) or not 0 <= trace_id < self.n_traces:
            raise ControllerProtocolError(
                f"trace {trace_id!r}: no such trace (this run has traces 0..{self.n_traces - 1})"
            )
        return self.traces[trace_id]

    def _require_started(self, trace_id: int, event: str) -> TraceState:
        state = self._state(trace_id)
        if state.status is None:
            raise ControllerProtocolError(
                f"trace {trace_id}: {event} for a trace that was never started"
            )
        return state

    def _move(self, trace_id: int, status: TraceStatus) -> None:
        """The one place a trace's status changes; illegal moves raise ControllerProtocolError."""
        state = self.traces[trace_id]
        state.status = transition(trace_id, state.status, status)

    def _start(self, trace_ids: Sequence[int]) -> list[Action]:
        for t in trace_ids:
            self._move(t, "running")
        return [StartTrace(t) for t in trace_ids]

    def _abort(self, trace_id: int, reason: AbortReason) -> list[Action]:
        state = self.traces[trace_id]
        if state.status == "running":
            self._move(trace_id, "aborted")
            return [AbortTrace(trace_id, reason)]
        if state.status == "parked":
            self._move(trace_id, "pruned")
        # A trace that was never started (status None, e.g. ESC stopped early) stays unsampled.
        return []

    def _finished_ballots(self) -> list[Ballot]:
        """A ballot for every finished trace with an answer: a finished trace paid for its answer."""
        return self._ballots(t.trace_id for t in self.traces if t.status == "finished")

    def _settled_stop(self, min_margin: int) -> list[Action] | None:
        """If the vote over finished traces is settled against every running trace, stop those
        (``vote_settled``) and end the run; None while it is not settled."""
        running = [t.trace_id for t in self.traces if t.status == "running"]
        ballots = self._finished_ballots()
        votes = group_votes(ballots, self.rules.equivalent) if ballots else []
        if not vote_settled(votes, len(running), min_margin):
            return None
        actions: list[Action] = []
        for trace_id in running:
            actions += self._abort(trace_id, "vote_settled")
        return actions + self._finish_run(ballots)

    def _stop_all(self, reason: AbortReason) -> list[Action]:
        actions: list[Action] = []
        for state in self.traces:
            if not state.terminal:
                actions += self._abort(state.trace_id, reason)
        return actions

    def _ballots(
        self, trace_ids: Iterable[int], weights: dict[int, float] | None = None
    ) -> list[Ballot]:
        ballots = []
        for t in trace_ids:
            state = self.traces[t]
            if state.status == "finished" and state.answer is not None:
                weight = 1.0 if weights is None else weights[t]
                ballots.append(Ballot(t, state.answer, weight, state.finish_order or 0))
        return ballots

    def _finish_run(self, ballots: list[Ballot], fallback: Fallback | None = None) -> list[Action]:
        """Vote, settle every non-terminal trace, and end the run.

        With no ballot, fall back to every finished trace with an extractable answer, then to the
        earliest finished trace with no answer at all; both are flagged ``no_voter``.
        """
        actions = self._stop_all("finalised")  # parked members that were not resumed become pruned
        if not ballots:
            ballots = self._ballots(t.trace_id for t in self.traces if t.status == "finished")
            fallback = fallback or "no_voter"
        votes = tuple(group_votes(ballots, self.rules.equivalent)) if ballots else ()
        for ballot in ballots:
            self.traces[ballot.trace_id].voted = True
        if votes:
            top = votes[0]
            winner = min(top.trace_ids, key=lambda t: self.traces[t].finish_order or 0)
            self.outcome = Outcome(top.answer, winner, votes, fallback, self.judge_unreliable)
        else:
            finished = [t for t in self.traces if t.status == "finished"]
            first = min(finished, key=lambda s: s.finish_order or 0) if finished else None
            self.outcome = Outcome(
                None,
                first.trace_id if first else None,
                (),
                fallback or "no_voter",
                self.judge_unreliable,
            )
        self.done = True
        return [*actions, RunDone()]

    def statuses(self) -> list[TraceStatus | None]:
        return [t.status for t in self.traces]

    def cluster_reports(self) -> list[ClusterReport]:
        return []
