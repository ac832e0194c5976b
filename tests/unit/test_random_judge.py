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


async def test_text_free_pairs_get_independent_uniform_draws() -> None:
    # Traces of a text-free pool have empty prefixes: the trace ids alone must spread the draws.
    pairs = [PrefixPair(a, b, "", "") for a in range(40) for b in range(a + 1, 40)]
    scores = list((await RandomJudge(seed=0).score(pairs)).probabilities)
    assert len(set(scores)) == len(scores)
    below_half = sum(p < 0.5 for p in scores) / len(scores)
    assert 0.45 < below_half < 0.55  # 780 draws: a fair split within about 3 standard deviations
    assert 0.45 < sum(scores) / len(scores) < 0.55
