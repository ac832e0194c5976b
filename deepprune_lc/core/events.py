"""Typed events a run emits, one per decision (never one per token).

Listeners receive them synchronously from the driver; ``DeepPrune.stream`` yields them; the LangChain
layer re-dispatches them as custom events under ``event.name``. Every event carries the run id and the
seconds since the run started, so a consumer can rebuild the timeline.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from deepprune_lc.core.result import DeepPruneResult

__all__ = [
    "ALL_EVENT_TYPES",
    "DeepPruneEvent",
    "EventListener",
    "JudgeScored",
    "JudgeUnreliable",
    "PrefixReached",
    "RunCompleted",
    "TraceAborted",
    "TraceClustered",
    "TraceFinished",
    "TraceParked",
    "TracePruned",
    "TraceResumed",
    "TraceStarted",
    "VoteCounted",
]


class DeepPruneEvent(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: ClassVar[str] = "deepprune.event"
    run_id: str
    elapsed_s: float

    def payload(self) -> dict[str, Any]:
        """JSON-ready data (what LangChain custom events and stream writers carry)."""
        return self.model_dump(mode="json")


class TraceStarted(DeepPruneEvent):
    name: ClassVar[str] = "deepprune.trace_started"
    trace_id: int
    resumed: bool = False
    resume_prefill_tokens: int = 0


class PrefixReached(DeepPruneEvent):
    """The trace produced the prefix the judge reads (or ended before it: ``ended_early``)."""

    name: ClassVar[str] = "deepprune.prefix_reached"
    trace_id: int
    prefix_tokens: int
    ended_early: bool = False


class JudgeScored(DeepPruneEvent):
    name: ClassVar[str] = "deepprune.judge_scored"
    trace_ids: list[int]
    pairs: int
    prefill_tokens: int
    seconds: float


class TraceClustered(DeepPruneEvent):
    """The clusterer placed the trace: it ``founded`` a new cluster or joined one with ``score``."""

    name: ClassVar[str] = "deepprune.trace_clustered"
    trace_id: int
    cluster_id: int
    founded: bool
    score: float | None = None
    cluster_size: int
    forced: bool = False  # joined because max_clusters was reached, not because score > tau


class TraceParked(DeepPruneEvent):
    """The trace was judged redundant and parked: decoding stops, its tokens are kept, and it may
    still be resumed as a finalist. ``tokens_decoded`` is the count when the park was decided."""

    name: ClassVar[str] = "deepprune.trace_parked"
    trace_id: int
    cluster_id: int
    tokens_decoded: int


class TracePruned(DeepPruneEvent):
    """The trace ended pruned: it was parked and the run finished without resuming it.

    Sent once its stream has really ended, so ``tokens_decoded`` is final: the terminal events
    (``TraceFinished``, ``TracePruned``, ``TraceAborted``) of a run add up to its decoded tokens.
    """

    name: ClassVar[str] = "deepprune.trace_pruned"
    trace_id: int
    cluster_id: int
    tokens_decoded: int


class TraceResumed(DeepPruneEvent):
    name: ClassVar[str] = "deepprune.trace_resumed"
    trace_id: int
    cluster_id: int
    resume_prefill_tokens: int


class TraceAborted(DeepPruneEvent):
    """The trace was stopped for good (``reason``); sent once its stream has ended, with the final
    ``tokens_decoded`` (tokens the engine delivered after the abort included)."""

    name: ClassVar[str] = "deepprune.trace_aborted"
    trace_id: int
    reason: str
    tokens_decoded: int


class TraceFinished(DeepPruneEvent):
    """The trace's stream ended on its own and the trace votes if it is a finalist."""

    name: ClassVar[str] = "deepprune.trace_finished"
    trace_id: int
    answer: str | None
    finish_reason: str
    tokens_decoded: int


class JudgeUnreliable(DeepPruneEvent):
    """The clustering is not trusted for this question (``reason``: 'all_singletons',
    'tied_clusters', 'finalists_split'), so more traces finish and vote. A graph can route on it."""

    name: ClassVar[str] = "deepprune.judge_unreliable"
    reason: str
    detail: str


class VoteCounted(DeepPruneEvent):
    name: ClassVar[str] = "deepprune.vote"
    answer: str | None
    votes: list[dict[str, Any]]
    fallback: str | None = None


class RunCompleted(DeepPruneEvent):
    name: ClassVar[str] = "deepprune.run_completed"
    result: DeepPruneResult


EventListener = Callable[[DeepPruneEvent], None]

ALL_EVENT_TYPES: tuple[type[DeepPruneEvent], ...] = (
    TraceStarted,
    PrefixReached,
    JudgeScored,
    TraceClustered,
    TraceParked,
    TracePruned,
    TraceResumed,
    TraceAborted,
    TraceFinished,
    JudgeUnreliable,
    VoteCounted,
    RunCompleted,
)
