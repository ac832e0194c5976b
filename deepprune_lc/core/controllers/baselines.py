"""The baselines DeepPrune is measured against, in the same shape: cons@N, ESC and
Adaptive-Consistency."""

from __future__ import annotations

import math

from pydantic import Field

from deepprune_lc.core.answers import AnswerRules, group_votes
from deepprune_lc.core.config import EarlyStoppingConfig, RunConfig, VoteSettling
from deepprune_lc.core.controllers.actions import (
    Action,
)
from deepprune_lc.core.controllers.base import Controller

__all__ = [
    "AdaptiveConsistencyConfig",
    "AdaptiveConsistencyController",
    "EarlyStoppingController",
    "SelfConsistencyController",
    "majority_confidence",
]


class SelfConsistencyController(Controller):
    """cons@N: every trace finishes, plain majority vote over equivalent answers.

    With ``settle`` (the settled-vote stop as a baseline of its own), all N traces start together
    and the ones still running stop once the vote over those finished is settled, so the stop's
    effect is measured apart from any judge.
    """

    method = "self_consistency"

    def __init__(
        self, n_traces: int, rules: AnswerRules, settle: VoteSettling | None = None
    ) -> None:
        super().__init__(n_traces, rules)
        self.settle = settle if settle is not None and settle.enabled else None
        if self.settle is not None:
            self.method = "self_consistency_settled"

    def start(self) -> list[Action]:
        return self._start(range(self.n_traces))

    def _after_finish(self, trace_id: int) -> list[Action]:
        if self.settle is not None:
            stopped = self._settled_stop(self.settle.min_margin)
            if stopped is not None:
                return stopped
        if all(t.terminal for t in self.traces):
            return self._finish_run(self._ballots(range(self.n_traces)))
        return []


class EarlyStoppingController(Controller):
    """ESC: sample windows of ``w`` traces; stop as soon as one whole window agrees."""

    method = "esc"

    def __init__(self, config: EarlyStoppingConfig, rules: AnswerRules) -> None:
        super().__init__(config.n_traces, rules)
        self.window_size = config.window
        self.window = range(0)

    def _start_window(self) -> list[Action]:
        first = self.window.stop
        self.window = range(first, min(first + self.window_size, self.n_traces))
        return self._start(self.window)

    def start(self) -> list[Action]:
        return self._start_window()

    def _after_finish(self, trace_id: int) -> list[Action]:
        window = self.window
        if not all(self.traces[t].terminal for t in window):
            return []
        answers = [self.traces[t].answer for t in window]
        given = [a for a in answers if a is not None]
        unanimous = len(given) == len(answers) and all(
            self.rules.equivalent(given[0], a) for a in given[1:]
        )
        if unanimous or window.stop >= self.n_traces:
            return self._finish_run(self._ballots(range(window.stop)))
        return self._start_window()


class AdaptiveConsistencyConfig(RunConfig):
    """Adaptive-Consistency (Aggarwal et al., 2023): sample in small batches until the majority is
    settled with probability ``confidence``.

    ``n_traces`` is the upper bound on traces sampled. The paper samples one trace at a time
    (``batch=1``), which is the cheapest in tokens and the slowest in sequential steps; a larger
    batch trades tokens for latency on a batching engine.
    """

    batch: int = Field(1, ge=1, description="Traces sampled per step; decide once a step is done.")
    confidence: float = Field(
        0.95,
        gt=0.0,
        lt=1.0,
        description="Stop once P(the leading answer is the majority) is at least this.",
    )


def majority_confidence(leader: int, runner_up: int) -> float:
    """P(p > 1/2) for p ~ Beta(leader + 1, runner_up + 1): the paper's Beta stopping criterion.

    The leading answer's share of the two top answers has a uniform prior; after ``leader`` and
    ``runner_up`` votes its posterior is that Beta. For integer counts the tail is exact:
    P(p > 1/2) = P(Binomial(leader + runner_up + 1, 1/2) <= leader), so no numerical integration
    (and no SciPy) is needed. 4 votes against 0 give 31/32 = 0.969, the first unanimous count past
    the default 0.95.
    """
    if leader < 0 or runner_up < 0:
        raise ValueError(f"vote counts must be >= 0, got {leader} and {runner_up}")
    n = leader + runner_up + 1
    tail: int = sum(math.comb(n, k) for k in range(leader + 1))
    return tail / float(2**n)


class AdaptiveConsistencyController(Controller):
    """Adaptive-Consistency: batches of ``batch`` traces; after each completed batch, stop when the
    Beta posterior says the leading answer is the majority with probability >= ``confidence``.

    Every finished trace with an answer counts (a trace with no extractable answer costs tokens and
    casts no vote); the vote at the end is over every trace sampled. Reaching ``n_traces`` ends the
    run whatever the confidence.
    """

    method = "adaptive_consistency"

    def __init__(self, config: AdaptiveConsistencyConfig, rules: AnswerRules) -> None:
        super().__init__(config.n_traces, rules)
        self.batch = config.batch
        self.confidence = config.confidence
        self.window = range(0)
        #: The posterior after each completed batch, in order (why the run stopped when it did).
        self.confidences: list[float] = []

    def _start_batch(self) -> list[Action]:
        first = self.window.stop
        self.window = range(first, min(first + self.batch, self.n_traces))
        return self._start(self.window)

    def start(self) -> list[Action]:
        return self._start_batch()

    def _after_finish(self, trace_id: int) -> list[Action]:
        if not all(self.traces[t].terminal for t in self.window):
            return []
        ballots = self._ballots(range(self.window.stop))
        weights = [int(v.weight) for v in group_votes(ballots, self.rules.equivalent)]
        leader = weights[0] if weights else 0
        runner_up = weights[1] if len(weights) > 1 else 0
        confidence = majority_confidence(leader, runner_up)
        self.confidences.append(confidence)
        if confidence >= self.confidence or self.window.stop >= self.n_traces:
            return self._finish_run(ballots)
        return self._start_batch()
