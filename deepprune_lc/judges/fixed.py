"""Judges that do not read their input: ``ConstantJudge`` and ``RandomJudge``, the baselines.

``ConstantJudge`` gives every pair the same probability, without reading it.

Why ship a judge that ignores its input: it is the baseline every real judge is compared with, and
the tool that takes the judge out of a measurement.

* ``ConstantJudge(1.0)``: every trace joins the first cluster ("everything is one answer"), so
  DeepPrune keeps only as many traces as the finalists need and prunes the rest blindly; what
  accuracy survives that is what pruning without judgement gives.
* ``ConstantJudge(0.0)``: no two traces are ever merged; every trace founds its own cluster until
  the cluster cap is reached (the driver's worst case for judge calls, with no judge latency).
* Benchmarks of the driver's own cost use it so that the judge costs nothing and answers at once.

``prefill_tokens_per_pair`` lets a test or a cost model pretend the judge read that many tokens per
pair, so judge-cost accounting can be checked without a model.

``RandomJudge(seed)`` scores every pair uniformly at random (a seeded hash of the pair, so runs
repeat and a pair's score does not depend on its batch): the judge that
knows nothing, against which a real judge must show that its clusters beat chance, and with which
finalisation must keep self-consistency's accuracy (a weak judge costs tokens, not accuracy).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

from deepprune_lc.core.ports import JudgeScores, PrefixPair

__all__ = ["ConstantJudge", "RandomJudge"]


class ConstantJudge:
    """Scores every pair with ``probability``; reports ``prefill_tokens_per_pair`` per pair read.

    ``calls`` and ``pairs_scored`` count the batches and pairs it was asked about, so a benchmark
    or a test can tell whether (and how much) the judge was consulted.
    """

    def __init__(self, probability: float, *, prefill_tokens_per_pair: int = 0) -> None:
        if isinstance(probability, bool) or not isinstance(probability, int | float):
            raise ValueError(f"probability: must be a number in [0, 1], got {probability!r}")
        if not math.isfinite(probability) or not 0.0 <= probability <= 1.0:
            raise ValueError(f"probability: must be in [0, 1], got {probability!r}")
        if (
            isinstance(prefill_tokens_per_pair, bool)
            or not isinstance(prefill_tokens_per_pair, int)
            or prefill_tokens_per_pair < 0
        ):
            raise ValueError(
                f"prefill_tokens_per_pair: must be an integer >= 0, got {prefill_tokens_per_pair!r}"
            )
        self.probability = float(probability)
        self.prefill_tokens_per_pair = prefill_tokens_per_pair
        self.calls = 0
        self.pairs_scored = 0

    def __repr__(self) -> str:
        extra = (
            f", prefill_tokens_per_pair={self.prefill_tokens_per_pair}"
            if self.prefill_tokens_per_pair
            else ""
        )
        return f"ConstantJudge({self.probability!r}{extra})"

    async def score(self, pairs: Sequence[PrefixPair]) -> JudgeScores:
        """The constant for every pair, at once (no await: the judge does no work)."""
        self.calls += 1
        self.pairs_scored += len(pairs)
        return JudgeScores(
            [self.probability] * len(pairs),
            prefill_tokens=self.prefill_tokens_per_pair * len(pairs),
        )


class RandomJudge:
    """Scores every pair with a uniform draw that is a function of the seed and the pair.

    Each score comes from a hash of (seed, trace ids, prefixes), not from one stream in call
    order, so a pair scores the same alone, anywhere in a batch and under concurrent calls (the
    judge contract), and a run does not depend on how the driver batched its pairs. Trace ids
    are part of the pair, so traces without text (a text-free pool) still get independent draws.
    """

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self.calls = 0

    def __repr__(self) -> str:
        return f"RandomJudge(seed={self.seed})"

    def _draw(self, pair: PrefixPair) -> float:
        key = repr((self.seed, pair.trace_a, pair.trace_b, pair.prefix_a, pair.prefix_b))
        digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
        return int.from_bytes(digest, "big") / 2.0**64

    async def score(self, pairs: Sequence[PrefixPair]) -> JudgeScores:
        self.calls += 1
        return JudgeScores([self._draw(pair) for pair in pairs])
