"""Actions: what a controller asks the driver to do. Frozen and slotted; compared by value in tests."""

from __future__ import annotations

from dataclasses import dataclass

from deepprune_lc.core.controllers.states import AbortReason, Unreliability
from deepprune_lc.core.ports import PrefixPair

__all__ = [
    "AbortTrace",
    "Action",
    "ClusterTrace",
    "FailRun",
    "FlagUnreliable",
    "ParkTrace",
    "ProbeTrace",
    "ResumeTrace",
    "RunDone",
    "ScorePairs",
    "StartTrace",
]


@dataclass(frozen=True, slots=True)
class StartTrace:
    trace_id: int


@dataclass(frozen=True, slots=True)
class ScorePairs:
    """Ask the judge about ``pairs``; answer with ``on_judged(request_id, probabilities)``.

    ``trace_ids`` are the traces being clustered by this request, in arrival order.
    """

    request_id: int
    trace_ids: tuple[int, ...]
    pairs: tuple[PrefixPair, ...]


@dataclass(frozen=True, slots=True)
class ProbeTrace:
    """Ask the running trace for its answer now (``AnswerProbing.probe``); answer with
    ``on_probed``. ``at_tokens``: the trace's decoded tokens when the probe was due."""

    trace_id: int
    at_tokens: int


@dataclass(frozen=True, slots=True)
class ClusterTrace:
    """Informational: the trace was placed in a cluster (the driver records and reports it)."""

    trace_id: int
    cluster_id: int
    founded: bool
    score: float | None
    cluster_size: int
    forced: bool = False


@dataclass(frozen=True, slots=True)
class ParkTrace:
    """Stop decoding the trace but keep its tokens: it may be resumed as a finalist."""

    trace_id: int
    cluster_id: int


@dataclass(frozen=True, slots=True)
class ResumeTrace:
    """Continue a parked trace from exactly the tokens it had produced."""

    trace_id: int
    cluster_id: int


@dataclass(frozen=True, slots=True)
class AbortTrace:
    """Stop the trace for good; it will not vote."""

    trace_id: int
    reason: AbortReason


@dataclass(frozen=True, slots=True)
class FailRun:
    """The run cannot continue (e.g. judge error with ``on_judge_error="raise"``)."""

    reason: str


@dataclass(frozen=True, slots=True)
class FlagUnreliable:
    """Informational: the clustering cannot be trusted for this question (see ``Unreliability``);
    finalisation compensates by letting more traces vote. Reported as ``deepprune.judge_unreliable``."""

    reason: Unreliability
    detail: str


@dataclass(frozen=True, slots=True)
class RunDone:
    """Every trace is in a terminal state and the vote is final: see ``controller.outcome``."""


Action = (
    StartTrace
    | ScorePairs
    | ProbeTrace
    | ClusterTrace
    | ParkTrace
    | ResumeTrace
    | AbortTrace
    | FailRun
    | FlagUnreliable
    | RunDone
)
