"""``ProbeJudge``: traces are alike when their answer probes name equivalent answers.

Why a judge that reads no reasoning: a thinking model asked "final answer now?" part-way through a
trace (an answer probe, ``core.ports.AnswerProbing``) says where the trace is heading, and two
traces whose probes agree are likely to end alike. Grouping by probe answer needs no model call
per pair: answers fall into equivalence classes under the run's answer rules, so a trace joins
the cluster of its class directly. Given to ``DeepPrune``, this judge switches the controller to
that fast path (``PruningConfig.probe``, from this judge's ``probe_clustering`` settings): at
``at_tokens`` the driver probes each trace and places it with no ``score`` call at all.

``score`` exists so that the judge is a ``Judge`` like any other (``JudgeConformanceTests``) and can
stand in where pairs are scored: each prefix is read as a probe's output, its answer extracted by
the answer rules (``\\boxed{...}``, what a probe reply becomes), and a pair scores 1.0 when both
answers are equivalent, 0.0 when they differ. A prefix with no answer is unknown: with
``unknown="separate"`` it matches nothing, with ``"together"`` it matches other unknowns.
Stateless: shared instances and concurrent runs cannot interfere.
"""

from __future__ import annotations

from collections.abc import Sequence

from deepprune_lc.core.answers import AnswerRules
from deepprune_lc.core.config import ProbeClustering
from deepprune_lc.core.ports import JudgeScores, PrefixPair

__all__ = ["ProbeJudge"]


class ProbeJudge:
    """Probe-answer clustering as a judge (see the module docstring)."""

    def __init__(
        self,
        settings: ProbeClustering | None = None,
        *,
        answers: AnswerRules | str | None = None,
    ) -> None:
        if settings is not None and not isinstance(settings, ProbeClustering):
            raise ValueError(f"settings: expected a ProbeClustering, got {type(settings).__name__}")
        #: What the driver hands the controller: probe clustering with these settings.
        self.probe_clustering = settings if settings is not None else ProbeClustering()
        self.rules = AnswerRules.resolve(answers)

    def __repr__(self) -> str:
        return f"ProbeJudge({self.probe_clustering!r}, answers={self.rules.name!r})"

    def _same(self, a: str | None, b: str | None) -> bool:
        if a is None or b is None:
            return a is None and b is None and self.probe_clustering.unknown == "together"
        return a == b or bool(self.rules.equivalent(a, b))

    async def score(self, pairs: Sequence[PrefixPair]) -> JudgeScores:
        """1.0 for pairs whose probe answers are equivalent, else 0.0; nothing is prefilled."""
        extract = self.rules.extract
        cache: dict[str, str | None] = {}

        def answer(prefix: str) -> str | None:
            if prefix not in cache:
                cache[prefix] = extract(prefix)
            return cache[prefix]

        return JudgeScores(
            [1.0 if self._same(answer(p.prefix_a), answer(p.prefix_b)) else 0.0 for p in pairs]
        )
