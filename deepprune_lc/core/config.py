"""Validated configuration for a DeepPrune run.

Every knob is a pydantic model so that bad input fails early, at construction, with a message that
names the field (``n_traces: Input should be greater than or equal to 1``), instead of surfacing as an
obscure error deep inside a running engine.

Defaults follow the paper (Tu et al., 2025) except ``n_traces``: the paper samples 512 traces per
question on GPUs; our default of 16 is what a single CPU or a modest GPU finishes in reasonable time and
is where self-consistency has already collected most of its accuracy gain (Wang et al., 2023, fig. 4:
the curve flattens past ~16 sampled paths). Raise it on real hardware: DeepPrune's savings grow with N.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "DEFAULT_IDLE_TIMEOUT_S",
    "DEFAULT_JUDGE_TIMEOUT_S",
    "DEFAULT_REASONING_WORDS",
    "MAX_TOKENS_LIMIT",
    "EarlyStoppingConfig",
    "PrefixPolicy",
    "ProbeClustering",
    "PruningConfig",
    "ReasoningWordsPrefix",
    "RunConfig",
    "SamplingConfig",
    "TokensPrefix",
    "VoteSettling",
]

#: Default reasoning-word vocabulary. Case-insensitive, matched as whole words or short phrases.
#: These are the discourse markers that open a new reasoning step in chain-of-thought text; counting
#: them measures "how far the reasoning has gone" independently of how verbose each step is.
DEFAULT_REASONING_WORDS: tuple[str, ...] = (
    "wait",
    "but",
    "so",
    "thus",
    "therefore",
    "since",
    "because",
    "hmm",
    "alternatively",
    "let me",
    "let's",
    "let us",
    "check",
    "verify",
    "however",
    "hence",
    "now",
    "then",
    "first",
    "next",
    "finally",
    "actually",
    "consider",
    "recall",
    "notice",
    "note",
    "suppose",
    "assume",
    "if",
    "we need",
    "we get",
    "we have",
    "which means",
    "in other words",
    "substitute",
    "simplify",
    "solve",
    "step",
)


#: Default ``idle_timeout_s``: a trace that delivers nothing for this long has stalled. Generous, so
#: that a queued request on a busy engine is never mistaken for a stalled one; ``None`` disables it.
DEFAULT_IDLE_TIMEOUT_S = 600.0
#: Default ``judge_timeout_s``: one judge call (at most ``max_judge_batch`` traces' pairs) that takes
#: longer has hung. Generous for a model judge on a CPU; ``None`` disables it.
DEFAULT_JUDGE_TIMEOUT_S = 300.0
#: Largest ``max_tokens`` accepted: engines keep token counts in 32-bit integers (a larger value
#: overflows vLLM's request serialiser), and no model has a context this long anyway.
MAX_TOKENS_LIMIT = 2**31 - 1


class _Frozen(BaseModel):
    # allow_inf_nan=False: NaN passes no comparison, so ``gt``/``lt`` bounds would report it as
    # out of range ("Input should be less than 1"); inf would be an endless budget. Both are
    # rejected as "Input should be a finite number", naming the field and the value.
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class ReasoningWordsPrefix(_Frozen):
    """Prefix ends at the k-th reasoning word (the paper's chosen truncation, k = 25)."""

    kind: Literal["reasoning_words"] = "reasoning_words"
    k: int = Field(25, ge=1, description="Number of reasoning words that make the prefix.")
    vocabulary: tuple[str, ...] = Field(
        DEFAULT_REASONING_WORDS,
        min_length=1,
        description="Words or short phrases counted as reasoning words (case-insensitive).",
    )

    @model_validator(mode="after")
    def _words_not_blank(self) -> ReasoningWordsPrefix:
        blank = [w for w in self.vocabulary if not w.strip()]
        if blank:
            raise ValueError("vocabulary: reasoning words must be non-empty strings")
        return self


class TokensPrefix(_Frozen):
    """Prefix is the first k generated tokens (the paper's alternative truncation)."""

    kind: Literal["tokens"] = "tokens"
    k: int = Field(500, ge=1, description="Number of generated tokens that make the prefix.")


PrefixPolicy = Annotated[ReasoningWordsPrefix | TokensPrefix, Field(discriminator="kind")]


class VoteSettling(_Frozen):
    """When a vote is settled, so that the traces still running for it may stop.

    Settled means: the leading answer's lead over the runner-up is larger than the number of
    voters still running (they could not overturn it, or even tie it, whatever they answer) and at
    least ``min_margin``. With ``min_margin=1`` the answer is exactly the one letting every running
    voter finish would give; a larger margin asks for more evidence before a split vote counts as
    decided (a vote of 1 against 0 is not settled at ``min_margin=2``).
    """

    enabled: bool = True
    min_margin: int = Field(2, ge=1, description="Votes the leader must lead the runner-up by.")


class ProbeClustering(_Frozen):
    """Clustering by answer probes instead of pairwise judge calls (docs/method.md, "Probes").

    At ``at_tokens`` decoded tokens every trace is asked for its answer now (the backend's
    ``AnswerProbing``); traces whose probe answers are equivalent under the run's answer rules share
    a cluster, found with no judge call. A probe with no answer is ``unknown``: with
    ``unknown="separate"`` it never merges (the trace founds a cluster of its own), with
    ``"together"`` the unknowns form one cluster. ``reprobe_every`` (robust finalisation only;
    None turns it off) probes the running finalists again every so many tokens: a finalist whose
    last ``agree_stop`` probes all name one answer is committed to it. With
    ``settle_on="evidence"`` (the default) the vote is settled once the finished vote's leader has
    at least ``settle.min_margin`` finished votes and leads every other answer by that margin, each
    committed finalist counting as a vote for its answer; the uncommitted ones are not waited for
    (a running trace whose answer is unknown says no more than a parked one). With
    ``"running"``, only finalists committed to the leader are taken as unable to overturn the vote
    (and, ``count_committed``, as the leader's votes); every other running finalist is waited for.
    Defaults and the measurements behind them: docs/method.md, "Answer probes".
    """

    at_tokens: int = Field(
        500, ge=1, description="Decoded tokens at which a trace is probed and clustered."
    )
    unknown: Literal["separate", "together"] = "separate"
    reprobe_every: int | None = Field(
        500,
        ge=1,
        description="Tokens between later probes of running finalists (None: never probe again).",
    )
    agree_stop: int = Field(
        2,
        ge=1,
        description="Consecutive probes naming one answer that make a running finalist committed.",
    )
    settle_on: Literal["evidence", "running"] = Field(
        "evidence",
        description=(
            "'evidence': settled when the finished leader has min_margin finished votes and leads "
            "by min_margin with committed finalists counted as votes (uncommitted ones are not "
            "waited for); 'running': every finalist not committed to the leader is waited for."
        ),
    )
    count_committed: bool = Field(
        True,
        description=(
            "settle_on='running': count committed finalists as votes for the leader (settled when "
            "lead + committed > uncommitted running), not only as traces that cannot overturn it."
        ),
    )


class RunConfig(_Frozen):
    """What every parallel-sampling method shares: how many traces, the seed, the deadline.

    The baselines (``SelfConsistency``) take exactly this; ``PruningConfig`` and
    ``EarlyStoppingConfig`` extend it with their own settings.
    """

    n_traces: int = Field(16, ge=1, le=4096, description="Traces sampled in parallel (N).")
    seed: int = Field(0, ge=0, description="Seeds the run's RNG and every trace's sampling seed.")
    deadline_s: float | None = Field(
        None,
        gt=0,
        description=(
            "Wall-clock budget for the whole run. When it passes, running traces are aborted and "
            "the finished ones vote; the result is flagged with fallback='deadline'."
        ),
    )
    idle_timeout_s: float | None = Field(
        DEFAULT_IDLE_TIMEOUT_S,
        gt=0,
        description=(
            "A trace whose stream delivers nothing for this long has stalled: the run fails with a "
            "GenerationError naming it (with the partial result), even with no deadline. None "
            "disables the check."
        ),
    )


class PruningConfig(RunConfig):
    """How DeepPrune samples, clusters, prunes and votes.

    ``policy="majority"`` is the paper's MV variant (finish up to K2 traces of the largest cluster and
    majority-vote them); ``policy="diverse"`` is GC (one trace per cluster finishes; size-weighted vote).
    """

    prefix: PrefixPolicy = Field(default_factory=ReasoningWordsPrefix)
    threshold: float = Field(
        0.5, gt=0.0, lt=1.0, description="tau: join a cluster when its mean judge score is > tau."
    )
    cluster_sample: int = Field(
        10, ge=1, description="K1: members of a cluster compared with a new trace, at most."
    )
    max_clusters: int = Field(32, ge=1, description="K: clusters that may exist at once.")
    finalists: int = Field(
        20, ge=1, description="K2: traces of the winning cluster that finish and vote (MV)."
    )
    max_judge_batch: int = Field(
        16,
        ge=1,
        description=(
            "Traces clustered per judge request when several wait at once (1 = the paper's strictly "
            "one-at-a-time clustering; larger keeps a slow judge from falling behind the engine)."
        ),
    )
    policy: Literal["majority", "diverse"] = "majority"
    finalisation: Literal["robust", "paper"] = Field(
        "robust",
        description=(
            "'paper': the winning cluster's K2 finalists finish and only they vote (the paper's MV). "
            "'robust' (ours, docs/method.md): clusters tied for largest send their founders; every "
            "finished trace votes; a split vote resumes more traces until it is settled; a settled "
            "vote stops the finalists still running."
        ),
    )
    settle: VoteSettling = Field(
        default_factory=VoteSettling, description="When a robust finalisation's vote is settled."
    )
    max_extra_finalists: int | None = Field(
        None,
        ge=0,
        description=(
            "Robust finalisation: traces resumed beyond K2 when the vote splits (None: as many as "
            "there are parked traces)."
        ),
    )
    split_resume: Literal["needed", "doubling"] = Field(
        "doubling",
        description=(
            "Robust finalisation, when the finalists split: resume at least as many traces as "
            "have voted so far ('doubling': a hard question reaches its full vote in "
            "log2(N / K2) rounds), or only as many as could settle the vote ('needed': fewest "
            "tokens, but one round of a whole trace per missing vote)."
        ),
    )
    on_judge_error: Literal["fallback", "raise"] = "fallback"
    probe: ProbeClustering | None = Field(
        None,
        description=(
            "Cluster by answer probes (no pairwise judge calls); set by the 'probe' judge when "
            "left None. Needs a backend with AnswerProbing."
        ),
    )
    judge_timeout_s: float | None = Field(
        DEFAULT_JUDGE_TIMEOUT_S,
        gt=0,
        description=(
            "A judge call that has not answered after this long counts as a judge failure "
            "(on_judge_error decides what follows). None disables the check."
        ),
    )


class SamplingConfig(_Frozen):
    """Sampling parameters shared by every trace (each trace gets its own seed)."""

    temperature: float = Field(0.7, ge=0.0, le=5.0)
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    top_k: int = Field(-1, ge=-1, description="-1 disables top-k.")
    max_tokens: int | None = Field(
        None,
        ge=1,
        le=MAX_TOKENS_LIMIT,
        description=(
            "Tokens per trace at most, resumed tokens included. None: as far as the backend's "
            "context allows (an engine stops the trace at its context length, with finish reason "
            "'length'); a reasoning trace runs 3k-40k tokens, and a smaller cap cuts it before "
            "its answer."
        ),
    )
    stop: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _top_k_not_zero(self) -> SamplingConfig:
        if self.top_k == 0:
            raise ValueError("top_k: use -1 to disable top-k sampling (0 is not a valid value)")
        return self


class EarlyStoppingConfig(RunConfig):
    """Early-stopping self-consistency (ESC, Li et al., 2024): windows of w traces.

    ``n_traces`` is the upper bound on traces sampled.
    """

    window: int = Field(4, ge=1, description="Traces per window; stop once a window is unanimous.")
