"""Trace states and the one table of legal transitions between them.

Every controller changes a trace's status through :func:`transition` and nowhere else, so an event
that does not fit the trace's state (a trace that "finished" without ever being started, a resume of
a trace that was never parked) raises :class:`ControllerProtocolError` at the point where it
happened, instead of being silently absorbed into a wrong vote.

The legal moves::

    (not started) --start--> running --park--> parked --resume--> running
    running --finish--> finished        running --abort--> aborted
    parked  --finish--> finished   (its stream ended before the park reached the engine)
    parked  --prune-->  pruned     (the run ended without resuming it)

``finished``, ``aborted`` and ``pruned`` are terminal.
"""

from __future__ import annotations

from typing import Literal

from deepprune_lc.core.result import TERMINAL_STATUSES, TraceStatus

__all__ = [
    "TRANSITIONS",
    "AbortReason",
    "ControllerProtocolError",
    "Fallback",
    "Phase",
    "TraceStatus",
    "Unreliability",
    "is_terminal",
    "transition",
]

#: Phases of the DeepPrune controller: clustering arriving traces, finishing the chosen finalists,
#: or (after a judge error) letting running traces finish with no more pruning.
Phase = Literal["sampling", "finalising", "fallback"]

#: Why a trace was stopped for good.
AbortReason = Literal[
    "winner_certain",  # it was never clustered, and the winning cluster can no longer change
    "losing_cluster",  # it belongs to a cluster that lost
    "deadline",  # the run's deadline passed
    "finalised",  # the vote was final (e.g. a parked member that was not resumed)
    "vote_settled",  # a finalist still running when the vote was already settled
    "error",  # the run failed
    "cancelled",  # the caller cancelled the run
]

#: Why the judge's clustering was not trusted (``DeepPruneResult.judge_unreliable``):
#: every trace founded its own cluster, several clusters tied for largest, or the finalists split.
Unreliability = Literal["all_singletons", "tied_clusters", "finalists_split"]

#: Why the vote was not the method's normal vote (``DeepPruneResult.fallback``).
Fallback = Literal["deadline", "no_voter", "judge_error", "error"]

#: status before -> statuses it may move to. ``None`` is a trace that has not been started.
TRANSITIONS: dict[TraceStatus | None, frozenset[TraceStatus]] = {
    None: frozenset({"running"}),
    "running": frozenset({"parked", "finished", "aborted"}),
    "parked": frozenset({"running", "finished", "pruned"}),
    "finished": frozenset(),
    "aborted": frozenset(),
    "pruned": frozenset(),
}


class ControllerProtocolError(RuntimeError):
    """An event or a transition that the trace's current state does not allow.

    It means the driver (or a test driving a controller by hand) reported something impossible,
    e.g. ``on_finished`` for a trace that was never started: a bug to surface, not a run to go on.
    """


def is_terminal(status: TraceStatus | None) -> bool:
    return status in TERMINAL_STATUSES


def transition(trace_id: int, current: TraceStatus | None, new: TraceStatus) -> TraceStatus:
    """``new`` if the table allows ``current -> new``; otherwise raise naming the trace and move."""
    if new not in TRANSITIONS[current]:
        before = "not started" if current is None else current
        raise ControllerProtocolError(
            f"trace {trace_id}: illegal transition {before} -> {new} "
            f"(allowed from {before}: {sorted(TRANSITIONS[current]) or 'none, it is terminal'})"
        )
    return new
