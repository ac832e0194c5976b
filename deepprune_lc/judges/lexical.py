"""``LexicalJudge``: a model-free judge that scores prefix pairs by word n-gram overlap.

Why: DeepPrune's judge is a fine-tuned LLM that reads two trace prefixes and predicts whether the
traces will reach the same answer. That needs a GPU. This judge needs nothing: two prefixes that say
the same things in the same words tend to be on the same solution path, so n-gram overlap is a cheap,
dependency-free proxy that lets the whole pipeline run (and be tested) anywhere. It is a baseline, not
a substitute: it cannot see that two different-looking derivations agree, nor that a shared opening
later diverges.

Similarity is the Jaccard index of the two prefixes' sets of word n-grams (lowercased words, numbers,
LaTeX commands such as ``\\frac`` and single symbols such as ``=`` kept as tokens), mapped to a
probability by a logistic curve ``p = 1 / (1 + exp(-slope * (sim - midpoint)))``. With the driver's
default threshold of 0.5, ``midpoint`` is the similarity above which two traces are merged.

Calibration (``python -m benchmarks.judge_calibration`` reproduces it): on the development pool
(``qwen25math_cot8_dev.jsonl``, 70 problems, all 28 trace pairs each = 1,960 pairs, 90.5% labelled
"same answer" by string equality of the recorded reference answers), prefixes being the first 120
tokens of ``RegexTokenizer`` (a stand-in for the paper's 25 reasoning words):

* AUROC of the raw bigram Jaccard similarity: 0.711 (unigrams 0.710, trigrams 0.716); it grows
  with the prefix (0.686 at 60 tokens, 0.783 at 200, 0.851 at 400) as the traces start to diverge;
* similarity quartiles 0.48 / 0.70 / 0.90 (the openings are often near-identical boilerplate);
* the threshold that balances TPR and TNR is 0.613 (TPR 0.636, TNR 0.634): the default ``midpoint``
  is 0.62, so with the driver's tau = 0.5 a pair is merged when its similarity exceeds 0.62
  (TPR 0.628, TNR 0.640 on these pairs);
* ``slope = 8``: p = 0.25 at the first quartile, 0.65 at the median, 0.90 at the third quartile,
  soft on purpose - the lexical signal is weak and the probability should say so.

So this judge separates agreeing from disagreeing pairs only modestly; use it for plumbing, tests
and as a baseline in comparisons, not as evidence of what a trained judge would do.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field

from deepprune_lc.core.ports import JudgeScores, PrefixPair
from deepprune_lc.judges.common import logistic

__all__ = ["LexicalJudge", "LexicalJudgeConfig", "jaccard", "ngram_set"]

#: Words (letters/digits), LaTeX commands (``\\frac``) and any other single non-space character.
_WORD = re.compile(r"\\[A-Za-z]+|[^\W_]+|[^\s\w]|_")

NGrams = frozenset[tuple[str, ...]]


class LexicalJudgeConfig(BaseModel):
    """Knobs of ``LexicalJudge``; defaults are calibrated on the dev pool (module docstring)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    ngram: int = Field(default=2, ge=1, le=8, description="Words per n-gram.")
    midpoint: float = Field(
        default=0.62, ge=0.0, le=1.0, description="Similarity that maps to probability 0.5."
    )
    slope: float = Field(
        default=8.0,
        gt=0.0,
        le=1000.0,
        description="Steepness of the similarity-to-probability curve.",
    )
    cache_size: int = Field(
        default=4096, ge=0, description="n-gram sets kept per text (LRU); 0 disables."
    )


def ngram_set(text: str, n: int) -> NGrams:
    """Set of word n-grams of ``text``; a text with fewer than ``n`` words yields one short gram."""
    words = _WORD.findall(text.lower())
    if len(words) < n:
        return frozenset([tuple(words)]) if words else frozenset()
    if n == 1:
        return frozenset((w,) for w in words)
    return frozenset(zip(*(words[i:] for i in range(n)), strict=False))


def jaccard(a: NGrams, b: NGrams) -> float:
    """``|a & b| / |a | b|``; two empty sets are identical (1.0)."""
    if not a and not b:
        return 1.0
    inter = len(a & b)
    return inter / (len(a) + len(b) - inter)


class LexicalJudge:
    """Judge that maps prefix n-gram overlap to P(same final answer); see the module docstring."""

    def __init__(self, config: LexicalJudgeConfig | None = None) -> None:
        self.config = config if config is not None else LexicalJudgeConfig()
        self._cache: OrderedDict[str, NGrams] = OrderedDict()

    def similarity(self, a: str, b: str) -> float:
        """Raw Jaccard similarity of the two texts' n-gram sets, in [0, 1]."""
        return jaccard(self._grams(a), self._grams(b))

    def probability(self, similarity: float) -> float:
        """Logistic map from similarity to probability."""
        return logistic(self.config.slope * (similarity - self.config.midpoint))

    async def score(self, pairs: Sequence[PrefixPair]) -> JudgeScores:
        """Score every pair; reads no model, so ``prefill_tokens`` is 0."""
        probabilities = [self.probability(self.similarity(p.prefix_a, p.prefix_b)) for p in pairs]
        return JudgeScores(probabilities=probabilities, prefill_tokens=0)

    def _grams(self, text: str) -> NGrams:
        # Cached because the driver compares each new trace with up to K1 members of every cluster:
        # the same prefix text is scored many times.
        cache = self._cache
        grams = cache.get(text)
        if grams is not None:
            cache.move_to_end(text)
            return grams
        grams = ngram_set(text, self.config.ngram)
        if self.config.cache_size > 0:
            cache[text] = grams
            if len(cache) > self.config.cache_size:
                cache.popitem(last=False)
        return grams
