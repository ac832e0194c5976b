"""RandomJudge: the judge that knows nothing, seeded so that a benchmark row repeats."""

from __future__ import annotations

from deepprune_lc import PrefixPair
from deepprune_lc.judges import RandomJudge

PAIRS = [PrefixPair(0, i, "a", "b") for i in range(1, 6)]


async def test_scores_are_probabilities_and_repeat_with_the_seed() -> None:
    first = (await RandomJudge(seed=3).score(PAIRS)).probabilities
    again = (await RandomJudge(seed=3).score(PAIRS)).probabilities
    other = (await RandomJudge(seed=4).score(PAIRS)).probabilities
    assert list(first) == list(again) != list(other)
    assert len(first) == len(PAIRS) and all(0.0 <= p <= 1.0 for p in first)
    assert (await RandomJudge().score([])).probabilities == []
