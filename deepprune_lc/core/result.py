"""What a run reports: the answer, the vote, the clusters, and what every trace cost.

These models are the contract with users (``DeepPruneResult``), with LangChain
(``response_metadata["deepprune"]`` is ``summary()``), and with the benchmarks.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

# typing_extensions, not typing: before Python 3.12 pydantic accepts only its TypedDict, and the
# schemas that embed RunSummary (graph states, API models) are built with pydantic (which depends
# on typing_extensions).
from typing_extensions import TypedDict

__all__ = [
    "TERMINAL_STATUSES",
    "ClusterReport",
    "DeepPruneResult",
    "RunSummary",
    "RunTotals",
    "SummaryVote",
    "TraceReport",
    "TraceStatus",
    "VoteGroup",
]

TraceStatus = Literal["running", "parked", "finished", "pruned", "aborted"]
#: Statuses a trace can end a run in. ``parked`` and ``running`` only exist mid-run.
TERMINAL_STATUSES: frozenset[str] = frozenset({"finished", "pruned", "aborted"})


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class VoteGroup(_Model):
    """One group of equivalent answers and the weight behind it."""

    answer: str = Field(description="Representative answer: the group's earliest-finished one.")
    weight: float = Field(description="Votes (or cluster sizes, for the diverse policy).")
    trace_ids: list[int]
    first_finish: int = Field(description="Finish order of the group's earliest trace (tie-break).")


class ClusterReport(_Model):
    cluster_id: int
    founder: int
    members: list[int] = Field(description="Every trace in the cluster, founder first.")

    @property
    def size(self) -> int:
        return len(self.members)


class TraceReport(_Model):
    trace_id: int
    status: TraceStatus
    cluster_id: int | None = None
    tokens_decoded: int = 0
    tokens_prefilled_on_resume: int = 0
    tokens_after_abort: int = Field(
        0, description="Tokens that arrived after the park/abort call (engine slack)."
    )
    prefix_tokens: int | None = Field(None, description="Tokens in the prefix the judge read.")
    clustered_at_s: float | None = Field(None, description="Seconds after start it was clustered.")
    cluster_score: float | None = None
    finish_reason: str | None = None
    answer: str | None = None
    resumed: bool = False
    voted: bool = False


class RunTotals(_Model):
    n_traces: int
    prompt_tokens: int = 0
    decoded_tokens: int = 0
    resume_prefill_tokens: int = 0
    estimated_full_tokens: float | None = Field(
        None,
        description="Tokens full cons@N would decode: N x mean length of the finished traces.",
    )
    token_savings: float | None = Field(
        None, description="1 - decoded_tokens / estimated_full_tokens."
    )
    judge_calls: int = 0
    judge_pairs: int = 0
    judge_prefill_tokens: int = 0
    judge_time_s: float = 0.0
    probe_calls: int = Field(0, description="Answer probes asked of running traces.")
    probe_prefill_tokens: int = Field(0, description="Tokens the probes prefilled (0 on replay).")
    probe_decoded_tokens: int = Field(0, description="Tokens the probes decoded (0 on replay).")
    probe_time_s: float = 0.0
    wall_time_s: float = 0.0
    latency_tokens: int | None = Field(
        None,
        description=(
            "Decode steps from the start to the moment the answer was decided (the critical path): "
            "every trace advances one token per step; a resumed trace continues from the step it "
            "was resumed at; what ran after the decision is not waited for (docs/method.md)."
        ),
    )
    length_capped: int = Field(
        0, description="Traces that ended on the token budget (finish_reason 'length')."
    )


class SummaryVote(TypedDict):
    """One answer group of ``RunSummary.votes``."""

    answer: str
    weight: float


class RunSummary(TypedDict):
    """``DeepPruneResult.summary()``: the JSON-ready digest of a run.

    It is ``AIMessage.response_metadata["deepprune"]``, what graph states store, and what
    functions that judge a run (vote support, clarifying questions) read, so its keys are typed.
    """

    method: str
    policy: str | None
    answer: str | None
    votes: list[SummaryVote]
    #: The size of each cluster.
    clusters: list[int]
    #: How many traces ended in each status (``finished``, ``pruned``, ``aborted``).
    trace_status: dict[str, int]
    decoded_tokens: int
    estimated_full_tokens: float | None
    token_savings: float | None
    judge_calls: int
    judge_pairs: int
    judge_prefill_tokens: int
    #: Answer probes asked (the probe judge's cost is counted beside the judge's).
    probe_calls: int
    wall_time_s: float
    #: Decode steps to the answer (the critical path; ``RunTotals.latency_tokens``).
    latency_tokens: int | None
    #: Traces cut by the token budget.
    length_capped: int
    fallback: str | None
    #: Why the clustering was not trusted (finalisation let more traces vote), or None.
    judge_unreliable: str | None


class DeepPruneResult(_Model):
    """Everything a run decided and measured (see docs/method.md for the rules behind each field)."""

    method: str = Field(description="'deepprune', 'self_consistency' or 'esc'.")
    policy: str | None = None
    answer: str | None
    text: str | None = Field(None, description="Full text of the trace that carries the answer.")
    winning_trace: int | None = None
    votes: list[VoteGroup] = Field(default_factory=list)
    clusters: list[ClusterReport] = Field(default_factory=list)
    traces: list[TraceReport] = Field(default_factory=list)
    totals: RunTotals
    fallback: str | None = Field(
        None,
        description=(
            "Set when the run could not follow the normal rules: 'judge_error', 'deadline', "
            "'no_voter' (no finalist had an extractable answer), 'error'."
        ),
    )
    error: str | None = None
    judge_unreliable: str | None = Field(
        None,
        description=(
            "Set when the judge's clustering was not trusted and more traces were let vote: "
            "'all_singletons', 'tied_clusters' or 'finalists_split' (robust finalisation)."
        ),
    )

    def summary(self) -> RunSummary:
        """A compact, JSON-ready digest for logs, LangSmith metadata and ``response_metadata``."""
        counts: dict[str, int] = {}
        for trace in self.traces:
            counts[trace.status] = counts.get(trace.status, 0) + 1
        return {
            "method": self.method,
            "policy": self.policy,
            "answer": self.answer,
            "votes": [{"answer": v.answer, "weight": v.weight} for v in self.votes],
            "clusters": [c.size for c in self.clusters],
            "trace_status": counts,
            "decoded_tokens": self.totals.decoded_tokens,
            "estimated_full_tokens": self.totals.estimated_full_tokens,
            "token_savings": self.totals.token_savings,
            "judge_calls": self.totals.judge_calls,
            "judge_pairs": self.totals.judge_pairs,
            "judge_prefill_tokens": self.totals.judge_prefill_tokens,
            "probe_calls": self.totals.probe_calls,
            "wall_time_s": round(self.totals.wall_time_s, 4),
            "latency_tokens": self.totals.latency_tokens,
            "length_capped": self.totals.length_capped,
            "fallback": self.fallback,
            "judge_unreliable": self.judge_unreliable,
        }
