"""Token sampling for a batch of rows, each with its own temperature, top-p, top-k and seed.

Why counter-based randomness instead of one ``torch.Generator`` per request: a parked trace is resumed
as a *new* request that continues from the ids it already produced. With a generator, the resumed
request would restart the random stream from its seed and draw different numbers than the trace would
have drawn uninterrupted. Here the uniform number used for the token at position ``i`` of a trace is a
pure function of ``(seed, i)`` (a SplitMix64 hash), so a resumed trace draws exactly what it would
have drawn had it never been parked, and a run is reproducible whatever the batch composition. One
uniform per row then selects the token by inverse CDF over the filtered distribution.

Why no full sort: sorting a 50k vocabulary costs about 5 ms per row on a CPU core, more than a small
model's forward pass. Top-p and top-k only ever keep the head of the distribution, so the head is
taken with a partial ``topk`` (``CANDIDATES`` tokens, or top-k's k when larger); a row whose nucleus
does not fit in it (a very flat distribution) falls back to the full sort, so the result is exact.
Rows with neither filter sample from the whole distribution in vocabulary order, with no sort at all.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = ["CANDIDATES", "RowSampling", "sample_tokens", "uniform"]

#: Head of the distribution that top-p / top-k sampling looks at before falling back to a full sort.
CANDIDATES = 256
_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def uniform(seed: int, position: int) -> float:
    """A uniform number in [0, 1) that depends only on ``(seed, position)``."""
    mixed = _splitmix64(_splitmix64(seed & _MASK64) ^ (position & _MASK64))
    return (mixed >> 11) * (1.0 / (1 << 53))


@dataclass(frozen=True, slots=True)
class RowSampling:
    """What one row samples with: 0 temperature means greedy; ``top_k`` -1 disables top-k."""

    temperature: float
    top_p: float
    top_k: int
    seed: int

    def truncates(self, vocab: int) -> bool:
        return self.top_p < 1.0 or 0 < self.top_k < vocab


def sample_tokens(
    logits: torch.Tensor, params: Sequence[RowSampling], positions: Sequence[int]
) -> list[int]:
    """One token id per row of ``logits`` (shape ``[rows, vocab]``).

    ``positions[r]`` is the index, within its trace, of the token row ``r`` samples now (resumed ids
    included): it selects the row's random number, see the module docstring.
    """
    rows, vocab = logits.shape
    result = [0] * rows
    greedy = [r for r in range(rows) if params[r].temperature <= 0.0]
    if greedy:
        for r, token in zip(greedy, logits[greedy].argmax(dim=-1).tolist(), strict=True):
            result[r] = int(token)
    whole = [
        r for r in range(rows) if params[r].temperature > 0.0 and not params[r].truncates(vocab)
    ]
    head = [r for r in range(rows) if params[r].temperature > 0.0 and params[r].truncates(vocab)]
    if whole:
        probs = _probabilities(logits, whole, params)
        picked = _inverse_cdf(probs, _draws(whole, params, positions, probs))
        for r, token in zip(whole, picked.tolist(), strict=True):
            result[r] = int(token)
    if head:
        probs = _probabilities(logits, head, params)
        width = min(vocab, max([CANDIDATES] + [params[r].top_k for r in head]))
        values, indices = probs.topk(width, dim=-1)
        values = _filter(values, [params[r] for r in head])
        kept = (values > 0).sum(dim=-1).tolist()
        # Exact when the filtered head ended inside the candidates (or top-k bounds it anyway).
        misfits = [
            i
            for i, r in enumerate(head)
            if width < vocab and kept[i] >= width and not 0 < params[r].top_k <= width
        ]
        picks = _inverse_cdf(values, _draws(head, params, positions, probs))
        tokens = indices.gather(-1, picks[:, None]).squeeze(-1).tolist()
        if misfits:
            misfit_rows = [head[i] for i in misfits]
            full_values, full_indices = probs[misfits].sort(dim=-1, descending=True)
            full_values = _filter(full_values, [params[r] for r in misfit_rows])
            full_picks = _inverse_cdf(full_values, _draws(misfit_rows, params, positions, probs))
            full_tokens = full_indices.gather(-1, full_picks[:, None]).squeeze(-1).tolist()
            for i, token in zip(misfits, full_tokens, strict=True):
                tokens[i] = token
        for r, token in zip(head, tokens, strict=True):
            result[r] = int(token)
    return result


def _probabilities(
    logits: torch.Tensor, rows: Sequence[int], params: Sequence[RowSampling]
) -> torch.Tensor:
    temps = torch.tensor([params[r].temperature for r in rows], device=logits.device)
    return torch.softmax(logits[list(rows)].float() / temps[:, None], dim=-1)


def _filter(sorted_probs: torch.Tensor, params: Sequence[RowSampling]) -> torch.Tensor:
    """Zero what top-k and top-p drop from descending probabilities (the first always stays)."""
    device = sorted_probs.device
    width = sorted_probs.shape[-1]
    ranks = torch.arange(width, device=device)[None, :]
    ks = torch.tensor([p.top_k if p.top_k > 0 else width for p in params], device=device)
    out = sorted_probs.masked_fill(ranks >= ks[:, None], 0.0)
    ps = torch.tensor([p.top_p for p in params], device=device, dtype=out.dtype)
    before = sorted_probs.cumsum(dim=-1) - sorted_probs  # mass of the strictly likelier tokens
    return out.masked_fill((before >= ps[:, None]) & (ps[:, None] < 1.0), 0.0)


def _draws(
    rows: Sequence[int],
    params: Sequence[RowSampling],
    positions: Sequence[int],
    like: torch.Tensor,
) -> torch.Tensor:
    return torch.tensor(
        [uniform(params[r].seed, positions[r]) for r in rows], device=like.device, dtype=like.dtype
    )


def _inverse_cdf(probs: torch.Tensor, draws: torch.Tensor) -> torch.Tensor:
    """Index ``i`` per row with ``cdf[i-1] <= u * total < cdf[i]``, never a zero-mass slot."""
    cdf = probs.cumsum(dim=-1)
    targets = (draws * cdf[:, -1])[:, None].contiguous()
    picks = torch.searchsorted(cdf.contiguous(), targets, right=True).squeeze(-1)
    picks = picks.clamp_(max=probs.shape[-1] - 1)
    # Rounding at the very end of the CDF can land past the last token with mass: step back.
    has_mass = probs > 0
    last = probs.shape[-1] - 1 - has_mass.flip(-1).to(torch.int8).argmax(dim=-1)
    return torch.minimum(picks, last)
