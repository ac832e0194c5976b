"""``JudgeConformanceTests``: the ``Judge`` contract as a pytest suite to subclass.

What the driver relies on from every judge, model or not: one probability in [0, 1] per pair (finite,
in the pairs' order), an empty batch answered with nothing and no cost, an honest ``prefill_tokens``
(an int, 0 for a judge that reads no model, > 0 for one that does), the same answer for the same
input, and a pair's probability that does not depend on its batch-mates, on its place in the batch,
or on other ``score`` calls running at the same time (the driver scores batches concurrently)::

    from deepprune_lc.testing import JudgeConformanceTests

    class TestMyJudgeConformance(JudgeConformanceTests):
        @pytest.fixture
        def judge(self, my_session_judge):
            return my_session_judge

        @property
        def runs_a_model(self) -> bool:
            return True

Left out on purpose: "identical prefixes score at least as high as unrelated ones". It holds for
the lexical and embedding judges, but an LLM judge's verdicts are only as good as its weights, and
the engines' tests run judges on tiny random models whose verdicts are noise; each judge's own
tests check its ordering where the model makes it meaningful.

Like langchain-tests, this module is for test code: it needs pytest.
"""

from __future__ import annotations

import asyncio
import math
import uuid
from collections.abc import Sequence

import pytest

from deepprune_lc.core.ports import Judge, JudgeScores, PrefixPair

__all__ = ["JudgeConformanceTests"]

_WAIT_S = 120.0

#: Prefix pairs that look like what the driver sends: same-path, paraphrased, unrelated, short.
_PAIRS = (
    (
        "First, the baker makes 18 trays of 12 muffins, so 18 * 12 = 216 muffins.",
        "First, the baker makes 18 trays of 12 muffins, so 18 * 12 = 216 muffins.",
    ),
    (
        "So we add 3 and 4: 3 + 4 = 7. Then we check: 7 - 4 = 3.",
        "Let me think. Sam has 3 apples and gets 4 more, which makes 7.",
    ),
    (
        "Wait, the question asks for the perimeter, not the area, so we add the sides.",
        "Therefore the area is 6 * 7 = 42 square units, and the answer is \\boxed{42}.",
    ),
    ("x", "Since 6 times 7 is 42, hence \\boxed{42}."),
    (
        "Let theta denote the angle; by the law of cosines c^2 = a^2 + b^2 - 2ab cos(theta).",
        "The museum's summer exhibition features impressionist landscapes.",
    ),
)


class JudgeConformanceTests:
    """The shared ``Judge`` contract (module docstring). Subclass it as ``Test...``."""

    # ------------------------------------------------------------------ what a subclass provides

    @pytest.fixture
    def judge(self) -> Judge:
        """The judge under test (override: often a session-scoped fixture, so a model loads once)."""
        raise NotImplementedError("a JudgeConformanceTests subclass defines a `judge` fixture")

    @property
    def runs_a_model(self) -> bool:
        """Whether the judge reads its pairs with a model (then ``prefill_tokens`` > 0 for new text)."""
        return False

    @property
    def pairs(self) -> list[PrefixPair]:
        """The pairs the suite scores (override for a judge with a narrow input domain)."""
        return [
            PrefixPair(trace_a=i, trace_b=i + 1, prefix_a=a, prefix_b=b)
            for i, (a, b) in enumerate(_PAIRS)
        ]

    @property
    def tolerance(self) -> float:
        """How far two scorings of the same pair may differ (batch padding changes float sums)."""
        return 1e-6

    # ------------------------------------------------------------------ helpers for the tests

    def fresh_pairs(self) -> list[PrefixPair]:
        """``pairs`` with a marker no cache has seen, so a caching judge must really read them."""
        marker = f" [{uuid.uuid4().hex[:8]}]"
        return [
            PrefixPair(p.trace_a, p.trace_b, p.prefix_a + marker, p.prefix_b + marker)
            for p in self.pairs
        ]

    def check_scores(self, scores: JudgeScores, pairs: Sequence[PrefixPair]) -> list[float]:
        """The probabilities, checked: one float in [0, 1] per pair, and a well-formed cost."""
        assert isinstance(scores, JudgeScores), type(scores)
        probabilities = list(scores.probabilities)
        assert len(probabilities) == len(pairs)
        for p in probabilities:
            assert isinstance(p, int | float) and not isinstance(p, bool), repr(p)
            assert math.isfinite(p) and 0.0 <= p <= 1.0, p
        assert isinstance(scores.prefill_tokens, int) and not isinstance(
            scores.prefill_tokens, bool
        )
        assert scores.prefill_tokens >= 0
        assert isinstance(scores.details, dict)
        return [float(p) for p in probabilities]

    async def score(self, judge: Judge, pairs: Sequence[PrefixPair]) -> list[float]:
        """Score one batch (bounded in time) and check the answer's shape."""
        scores = await asyncio.wait_for(judge.score(pairs), _WAIT_S)
        return self.check_scores(scores, pairs)

    # ------------------------------------------------------------------ the contract

    def test_judge_satisfies_the_protocol(self, judge: Judge) -> None:
        assert isinstance(judge, Judge)

    async def test_one_probability_in_the_unit_interval_per_pair(self, judge: Judge) -> None:
        pairs = self.pairs
        await self.score(judge, pairs)
        await self.score(judge, pairs[:1])

    async def test_an_empty_batch_costs_nothing(self, judge: Judge) -> None:
        scores = await asyncio.wait_for(judge.score([]), _WAIT_S)
        assert self.check_scores(scores, []) == []
        assert scores.prefill_tokens == 0

    async def test_prefill_tokens_say_whether_a_model_read_the_pairs(self, judge: Judge) -> None:
        pairs = self.fresh_pairs()
        scores = await asyncio.wait_for(judge.score(pairs), _WAIT_S)
        self.check_scores(scores, pairs)
        if self.runs_a_model:
            assert scores.prefill_tokens > 0
        else:
            assert scores.prefill_tokens == 0

    async def test_the_same_input_gets_the_same_answer(self, judge: Judge) -> None:
        pairs = self.pairs
        first = await self.score(judge, pairs)
        second = await self.score(judge, pairs)
        assert second == pytest.approx(first, abs=self.tolerance)

    async def test_a_pair_scores_alike_alone_and_anywhere_in_a_batch(self, judge: Judge) -> None:
        pairs = self.pairs
        batched = await self.score(judge, pairs)
        alone = [(await self.score(judge, [pair]))[0] for pair in pairs]
        reversed_batch = await self.score(judge, pairs[::-1])
        assert batched == pytest.approx(alone, abs=self.tolerance)
        assert reversed_batch[::-1] == pytest.approx(alone, abs=self.tolerance)

    async def test_concurrent_calls_each_get_their_own_answer(self, judge: Judge) -> None:
        pairs = self.pairs
        alone = [(await self.score(judge, [pair]))[0] for pair in pairs]
        n = len(pairs)
        # Batches of different sizes and orders, scored at once (the driver overlaps judge calls).
        batches = [
            [0],
            list(range(n)),
            list(range(n))[::-1],
            [i % n for i in (1, 3)],
            [i % n for i in range(2, 2 + n)],
        ]
        results = await asyncio.gather(
            *(self.score(judge, [pairs[i] for i in batch]) for batch in batches)
        )
        for batch, probabilities in zip(batches, results, strict=True):
            assert probabilities == pytest.approx([alone[i] for i in batch], abs=self.tolerance), (
                batch
            )
