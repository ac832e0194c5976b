"""The baselines DeepPrune is measured against, in the same shape: cons@N and ESC."""

from __future__ import annotations

from deepprune_lc.core.answers import AnswerRules
from deepprune_lc.core.config import EarlyStoppingConfig
from deepprune_lc.core.controllers.actions import (
    Action,
)
from deepprune_lc.core.controllers.base import Controller

__all__ = ["EarlyStoppingController", "SelfConsistencyController"]


class SelfConsistencyController(Controller):
    """cons@N: every trace finishes, plain majority vote over equivalent answers."""

    method = "self_consistency"

    def start(self) -> list[Action]:
        return self._start(range(self.n_traces))

    def _after_finish(self, trace_id: int) -> list[Action]:
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
