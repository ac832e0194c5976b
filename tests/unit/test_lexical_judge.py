"""LexicalJudge: n-gram Jaccard similarity mapped through a logistic curve.

The judge contract (one probability per pair, empty batches, no prefill, ...) is checked by the
shared suite in ``test_judge_conformance.py``.
"""

from __future__ import annotations

import itertools

import pytest
from pydantic import ValidationError

from deepprune_lc.core.ports import JudgeScores, PrefixPair
from deepprune_lc.judges import LexicalJudge, LexicalJudgeConfig
from deepprune_lc.judges.lexical import jaccard, ngram_set

PREFIX = (
    "First, we compute the cost of the muffins: 24 * 3 = 72. Then the cookies: 3 * 24 = 72 "
    "cookies at $2 each, so 144 dollars. Therefore the total is \\frac{432}{2}."
)
UNRELATED = "Let theta denote the angle between the vectors; by the law of cosines c^2 = a^2 + b^2."


def _pair(a: str, b: str, i: int = 0) -> PrefixPair:
    return PrefixPair(trace_a=i, trace_b=i + 1, prefix_a=a, prefix_b=b)


async def test_identical_prefixes_score_high_and_unrelated_low() -> None:
    judge = LexicalJudge()
    scores = await judge.score([_pair(PREFIX, PREFIX), _pair(PREFIX, UNRELATED)])
    assert isinstance(scores, JudgeScores)
    assert scores.prefill_tokens == 0
    same, different = scores.probabilities
    assert same > 0.5
    assert different < 0.5
    assert judge.similarity(PREFIX, PREFIX) == 1.0


async def test_probability_is_monotone_in_overlap() -> None:
    words = [f"w{i}" for i in range(40)]
    base = " ".join(words)
    # Replace a growing tail of the words: overlap with `base` decreases step by step.
    variants = [" ".join(words[: 40 - k] + [f"z{j}" for j in range(k)]) for k in range(0, 41, 5)]
    judge = LexicalJudge()
    scores = await judge.score([_pair(base, v, i) for i, v in enumerate(variants)])
    probs = list(scores.probabilities)
    assert len(probs) == len(variants)
    assert all(a > b for a, b in itertools.pairwise(probs)), probs
    sims = [judge.similarity(base, v) for v in variants]
    assert sims[0] == 1.0 and sims[-1] == 0.0


def test_ngrams_lowercase_and_keep_latex_tokens() -> None:
    grams = ngram_set("So \\frac{a}{B} = X", 1)
    assert {("\\frac",), ("{",), ("a",), ("b",), ("=",), ("x",), ("so",)} <= grams
    assert ngram_set("Two words", 2) == {("two", "words")}
    assert ngram_set("one", 3) == {("one",)}  # shorter than n: one short gram
    assert ngram_set("", 2) == frozenset()
    assert jaccard(frozenset(), frozenset()) == 1.0
    assert jaccard(ngram_set("a b c", 1), ngram_set("a b d", 1)) == pytest.approx(2 / 4)


def test_logistic_mapping_uses_midpoint_and_slope() -> None:
    judge = LexicalJudge(LexicalJudgeConfig(midpoint=0.4, slope=10.0))
    assert judge.probability(0.4) == pytest.approx(0.5)
    assert judge.probability(0.6) > 0.5 > judge.probability(0.2)
    steeper = LexicalJudge(LexicalJudgeConfig(midpoint=0.4, slope=50.0))
    assert steeper.probability(0.6) > judge.probability(0.6)


async def test_ngram_size_changes_the_similarity() -> None:
    a, b = "the cat sat on the mat", "the mat sat on the cat"
    unigram = LexicalJudge(LexicalJudgeConfig(ngram=1))
    bigram = LexicalJudge(LexicalJudgeConfig(ngram=2))
    assert unigram.similarity(a, b) == 1.0
    assert bigram.similarity(a, b) < 1.0


def test_cache_is_bounded() -> None:
    judge = LexicalJudge(LexicalJudgeConfig(cache_size=3))
    for i in range(10):
        judge.similarity(f"text {i}", "shared text")
    assert len(judge._cache) == 3
    uncached = LexicalJudge(LexicalJudgeConfig(cache_size=0))
    uncached.similarity("a b", "a b")
    assert len(uncached._cache) == 0


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("ngram", 0),
        ("midpoint", -0.1),
        ("midpoint", 1.5),
        ("slope", 0.0),
        ("slope", -3.0),
        ("cache_size", -1),
        ("unknown", 1),
    ],
)
def test_config_validation_names_the_field(field: str, value: float) -> None:
    with pytest.raises(ValidationError, match=field):
        LexicalJudgeConfig(**{field: value})  # type: ignore[arg-type]


def test_defaults_are_the_calibrated_constants() -> None:
    config = LexicalJudgeConfig()
    assert (config.ngram, config.midpoint, config.slope) == (2, 0.62, 8.0)


async def test_groups_synthetic_traces_by_answer() -> None:
    # Synthetic replay traces share openings within an answer group, as real samples do.
    from deepprune_lc.backends import ReplayBackend

    backend = ReplayBackend.synthetic(8, 300, answers=["1", "2"])
    traces = backend.pool.problems[0].traces
    prefixes = ["".join(backend.tokenizer.split(t.text)[:120]) for t in traces]
    combos = list(itertools.combinations(range(8), 2))
    probs = (
        await LexicalJudge().score([_pair(prefixes[a], prefixes[b]) for a, b in combos])
    ).probabilities
    same = [p for p, (a, b) in zip(probs, combos, strict=True) if a % 2 == b % 2]
    different = [p for p, (a, b) in zip(probs, combos, strict=True) if a % 2 != b % 2]
    assert sum(same) / len(same) > 0.5 > max(different)


async def test_demo_pool_clusters_only_same_answer_traces_at_a_short_prefix() -> None:
    from deepprune_lc.backends.tokenizer import RegexTokenizer
    from deepprune_lc.demo import load_demo_pool

    tokenizer, judge = RegexTokenizer(), LexicalJudge()
    for problem in load_demo_pool():
        prefixes = ["".join(tokenizer.split(t.text)[:40]) for t in problem.traces]
        combos = list(itertools.combinations(range(len(prefixes)), 2))
        scores = await judge.score([_pair(prefixes[a], prefixes[b]) for a, b in combos])
        merged = [pair for pair, p in zip(combos, scores.probabilities, strict=True) if p > 0.5]
        answers = [t.reference_answer for t in problem.traces]
        assert merged, problem.id
        assert all(answers[a] == answers[b] for a, b in merged), (problem.id, merged)
