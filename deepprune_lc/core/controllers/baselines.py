"""The baselines DeepPrune is measured against, in the same shape: cons@N and ESC."""

from __future__ import annotations

from deepprune_lc.core.answers import AnswerRules
from deepprune_lc.core.config import EarlyStoppingConfig, VoteSettling
from deepprune_lc.core.controllers.actions import (
    Action,
)
from deepprune_lc.core.controllers.base import Controller

__all__ = ["EarlyStoppingController", "SelfConsistencyController"]


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
