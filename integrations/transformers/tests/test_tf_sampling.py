"""Sampling and incremental detokenisation: exact, seeded by (seed, position), batch-independent."""

from __future__ import annotations

import collections
import math
from pathlib import Path

import pytest
import torch
from deepprune_transformers.detok import IncrementalDetokenizer
from deepprune_transformers.sampling import RowSampling, sample_tokens, uniform


def _reference(logits: torch.Tensor, params: RowSampling, position: int) -> int:
    """Full sort, top-k, top-p, inverse CDF: the textbook procedure, one row at a time.

    With no filter there is nothing to sort for: the CDF runs in vocabulary order.
    """
    if params.temperature <= 0:
        return int(logits.argmax())
    probs = torch.softmax(logits.float() / params.temperature, dim=-1)
    if params.top_p >= 1 and params.top_k <= 0:
        cdf = probs.cumsum(0)
        target = uniform(params.seed, position) * float(cdf[-1])
        return min(int(torch.searchsorted(cdf, torch.tensor([target]), right=True)), len(probs) - 1)
    values, indices = probs.sort(descending=True)
    if params.top_k > 0:
        values[params.top_k :] = 0
    before = (
        torch.cumsum(probs.sort(descending=True).values, 0) - probs.sort(descending=True).values
    )
    if params.top_p < 1:
        values[before >= params.top_p] = 0
    cdf = values.cumsum(0)
    target = uniform(params.seed, position) * float(cdf[-1])
    pick = int(torch.searchsorted(cdf, torch.tensor([target]), right=True))
    pick = min(pick, int((values > 0).nonzero().max()))
    return int(indices[pick])


def test_uniform_depends_only_on_seed_and_position() -> None:
    draws = [uniform(7, i) for i in range(1000)]
    assert draws == [uniform(7, i) for i in range(1000)]
    assert all(0.0 <= d < 1.0 for d in draws)
    assert len(set(draws)) == 1000 and abs(sum(draws) / 1000 - 0.5) < 0.05
    assert uniform(8, 0) != uniform(7, 0)


@pytest.mark.parametrize(
    "params",
    [
        RowSampling(0.0, 1.0, -1, 0),
        RowSampling(0.8, 1.0, -1, 1),
        RowSampling(0.8, 0.9, -1, 2),
        RowSampling(1.2, 1.0, 5, 3),
        RowSampling(0.7, 0.5, 40, 4),
    ],
    ids=["greedy", "temperature", "top-p", "top-k", "both"],
)
@pytest.mark.parametrize("peaked", [True, False], ids=["peaked", "flat"])
def test_sampling_matches_the_textbook_procedure(params: RowSampling, peaked: bool) -> None:
    """Peaked rows take the candidate head; flat ones overflow it and fall back to a full sort."""
    generator = torch.Generator().manual_seed(0)
    vocab = 1000
    for position in range(60):
        logits = torch.randn(vocab, generator=generator) * (6.0 if peaked else 0.1)
        got = sample_tokens(logits[None, :], [params], [position])
        assert got == [_reference(logits, params, position)]


def test_rows_of_a_batch_sample_as_they_would_alone() -> None:
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(6, 500, generator=generator) * 3
    params = [
        RowSampling(0.0, 1.0, -1, 0),
        RowSampling(0.7, 0.95, -1, 1),
        RowSampling(0.7, 1.0, -1, 2),
        RowSampling(1.0, 1.0, 3, 3),
        RowSampling(0.7, 0.95, -1, 4),
        RowSampling(0.5, 0.2, 10, 5),
    ]
    positions = [3, 9, 0, 4, 9, 1]
    together = sample_tokens(logits, params, positions)
    alone = [sample_tokens(logits[r : r + 1], [params[r]], [positions[r]])[0] for r in range(6)]
    assert together == alone


def test_sampled_frequencies_follow_the_distribution() -> None:
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0]])
    expected = torch.softmax(logits[0], dim=-1).tolist()
    n = 4000
    counts = collections.Counter(
        sample_tokens(logits, [RowSampling(1.0, 1.0, -1, 11)], [i])[0] for i in range(n)
    )
    for token, p in enumerate(expected):
        assert abs(counts[token] / n - p) < 4 * math.sqrt(p * (1 - p) / n) + 1e-3


def test_top_p_and_top_k_keep_only_the_head() -> None:
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    logits = probs.log()
    top_p = {sample_tokens(logits, [RowSampling(1.0, 0.7, -1, 3)], [i])[0] for i in range(300)}
    assert top_p == {0, 1}  # 0.5 + 0.3 covers 0.7; the third token starts after 0.8
    top_k = {sample_tokens(logits, [RowSampling(1.0, 1.0, 1, 3)], [i])[0] for i in range(50)}
    assert top_k == {0}


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path):  # type: ignore[no-untyped-def]
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model_dir))


TEXT = "Grüße aus Köln: 3 × 4 = 12, 世界 🙂 done."


def test_detokenizer_never_splits_a_character(tokenizer) -> None:  # type: ignore[no-untyped-def]
    ids = tokenizer(TEXT)["input_ids"]
    assert len(ids) > len(TEXT.encode()) // 4  # multi-byte characters span several tokens

    def decode(x: list[int]) -> str:
        return str(tokenizer.decode(x, skip_special_tokens=True))

    detok = IncrementalDetokenizer(decode, prompt_ids=tokenizer("Q: ")["input_ids"])
    pieces = [detok.push(token) for token in ids] + [detok.flush()]
    assert "".join(pieces) == TEXT
    assert not any("\ufffd" in piece for piece in pieces)


def test_detokenizer_resumes_where_the_parked_stream_stopped(tokenizer) -> None:  # type: ignore[no-untyped-def]
    ids = tokenizer(TEXT)["input_ids"]

    def decode(x: list[int]) -> str:
        return str(tokenizer.decode(x, skip_special_tokens=True))

    prompt = tokenizer("Q: ")["input_ids"]
    for k in range(1, len(ids)):
        first = IncrementalDetokenizer(decode, prompt)
        sent = "".join(first.push(token) for token in ids[:k])  # then parked: no flush
        second = IncrementalDetokenizer(decode, prompt)
        second.resume(ids[:k])
        rest = "".join(second.push(token) for token in ids[k:]) + second.flush()
        assert sent + rest == TEXT, k
