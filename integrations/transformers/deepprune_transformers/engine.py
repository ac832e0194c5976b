"""The batch itself: one ``DynamicCache`` whose rows are the live traces, and one decode step.

Everything here is synchronous and runs on the backend's single worker thread; the async surface
(``backend.py``) decides *which* rows leave and join and hands that to ``BatchEngine.step``. Keeping
tensors on one thread means no locks around the cache, and the event loop (where the DeepPrune driver
and the judge run) never waits on a forward pass.

Layout: the cache holds ``[rows, heads, columns, head_dim]`` keys and values. Rows are left-padded to
a common number of columns and a 2-D attention mask marks the real ones; every row carries its own
position ids (its count of real tokens), so padding never shifts RoPE. That is what makes the three
batch edits cheap and exact:

* **remove** (a parked or aborted trace, ``retain``; a finished one, at the end of its last step):
  index-select the surviving rows of every layer's
  keys and values and of the mask, then drop leading columns that are padding in every row. The
  removed row is not computed again: the next forward has one row fewer (``step_batch_sizes``);
* **admit** (a new trace, or a resumed one whose input is prompt + the ids it already produced):
  prefill the distinct inputs in one left-padded forward (N fresh traces of one prompt share one
  prefill), expand to one row per trace, left-pad old or new rows to the same width and concatenate;
* **decode**: one forward of ``[rows, 1]`` tokens, one sampled token per row.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from deepprune_lc.backends import StopMatcher, box_end
from deepprune_lc.core import FinishReason
from deepprune_transformers.detok import IncrementalDetokenizer
from deepprune_transformers.sampling import RowSampling, sample_tokens

__all__ = ["BatchEngine", "EngineRow", "ProbeOutput", "StepOutput", "left_padded"]

#: Upper bound on ``padded rows x columns`` of one prefill forward; longer admissions are split.
PREFILL_TOKEN_BUDGET = 16384
#: How many decode steps ``step_batch_sizes`` remembers (it is a ring, so a server does not leak).
STEP_HISTORY = 1 << 16


def left_padded(
    sequences: Sequence[Sequence[int]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask, position_ids)`` for a batch, padded on the left.

    Left padding puts every row's last token in the last column, where the next-token logits are
    read; positions count real tokens only, so a padded row sees the positions it would see alone.
    """
    width = max(len(seq) for seq in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, width - len(seq) :] = torch.tensor(seq, dtype=torch.long)
        mask[row, width - len(seq) :] = 1
    positions = (mask.cumsum(dim=1) - 1).clamp_(min=0)
    return ids, mask, positions


@dataclass(eq=False, slots=True)
class EngineRow:
    """One trace in the engine. Created by the backend; mutated only by the worker thread."""

    request_id: str
    prompt_ids: tuple[int, ...]
    #: Every id the trace holds: the resumed ids first, then what this request produced.
    generated: list[int]
    max_tokens: int
    sampling: RowSampling
    stop: tuple[str, ...] = ()
    #: Real (non-padding) tokens of this row in the cache.
    cached_tokens: int = 0
    finish_reason: FinishReason | None = None
    detok: IncrementalDetokenizer | None = None
    #: Stop-string matching over the row's text (None without stop strings).
    stops: StopMatcher | None = None
    new_tokens: int = 0
    #: The backend's handle for this row's stream (opaque to the engine).
    owner: Any = None


@dataclass(slots=True)
class StepOutput:
    """What one row got from a step: a token, its text and, on the last one, why it ended."""

    row: EngineRow
    token_id: int
    text: str
    finish_reason: FinishReason | None


@dataclass(frozen=True, slots=True)
class ProbeOutput:
    """What one answer probe decoded: its text (cut after the box's closing brace) and its cost."""

    text: str
    prefill_tokens: int
    decoded_tokens: int


@dataclass(slots=True)
class EngineStats:
    """Counters of work actually done (tests and benchmarks read them)."""

    decode_steps: int = 0
    decoded_tokens: int = 0
    prefill_forwards: int = 0
    prefill_tokens: int = 0
    step_batch_sizes: collections.deque[int] = field(
        default_factory=lambda: collections.deque(maxlen=STEP_HISTORY)
    )


class BatchEngine:
    """Owns the model's batch; every method runs on the backend's worker thread."""

    def __init__(
        self,
        model: Any,
        decode: Callable[[Sequence[int]], str],
        *,
        device: torch.device,
        eos_token_ids: frozenset[int],
        pad_token_id: int,
        ignore_eos: bool = False,
    ) -> None:
        self.model = model
        self.decode = decode
        self.device = device
        self.eos_token_ids = eos_token_ids
        self.pad_token_id = pad_token_id
        self.ignore_eos = ignore_eos
        self.rows: list[EngineRow] = []
        self.cache: DynamicCache | None = None
        self.mask: torch.Tensor | None = None
        self.stats = EngineStats()

    # ------------------------------------------------------------------ public

    def step(self, admit: Sequence[EngineRow]) -> list[StepOutput]:
        """Decode one token for every row, admit ``admit`` (each gets its first token from its
        prefill), then remove the rows that just finished, so none is computed again."""
        with torch.inference_mode():
            outputs: list[StepOutput] = []
            if self.rows:
                outputs.extend(self._decode())
            if admit:
                outputs.extend(self._admit(admit))
            if any(row.finish_reason is not None for row in self.rows):
                self._select([i for i, row in enumerate(self.rows) if row.finish_reason is None])
            return outputs

    def retain(self, keep: Sequence[int]) -> None:
        """Keep only the rows at ``keep`` (batch order): parked and aborted traces leave here."""
        with torch.inference_mode():
            self._select(keep)

    def reset(self) -> None:
        """Drop every row (after a failure, or when a new event loop takes the backend over)."""
        self.rows = []
        self.cache = None
        self.mask = None

    def probe(self, ids: Sequence[int], suffix: str, max_tokens: int) -> ProbeOutput:
        """Greedy-decode ``ids`` (prompt + a trace's ids + the probe suffix's) on a cache of its
        own, for at most ``max_tokens`` tokens, ending at end of sequence or once the brace the
        suffix left open closes (``deepprune_lc.backends.box_end``).

        The batch is not touched: no row, no cache column, no counter of ``stats`` changes, and it
        runs on the worker thread between two steps, so the traces' next step is what it would
        have been. Its prefill reads every id (this engine has no prefix cache to share).
        """
        with torch.inference_mode():
            cache = DynamicCache()
            out = self.model(
                input_ids=torch.tensor([list(ids)], device=self.device),
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=1,
            )
            detok = IncrementalDetokenizer(self.decode, ids)
            text, decoded, position = "", 0, len(ids)
            while True:
                token = int(out.logits[0, -1].argmax())
                decoded += 1
                if token in self.eos_token_ids:
                    break
                text += detok.push(token)
                end = box_end(suffix, text)
                if end is not None:
                    return ProbeOutput(text[:end], len(ids), decoded)
                if decoded >= max_tokens:
                    break
                out = self.model(
                    input_ids=torch.tensor([[token]], device=self.device),
                    position_ids=torch.tensor([[position]], device=self.device),
                    past_key_values=cache,
                    use_cache=True,
                    logits_to_keep=1,
                )
                position += 1
            text += detok.flush()
            end = box_end(suffix, text)
            return ProbeOutput(text if end is None else text[:end], len(ids), decoded)

    @property
    def columns(self) -> int:
        """Width of the cache (padding included): what a decode step attends over."""
        return 0 if self.mask is None else int(self.mask.shape[1])

    # ------------------------------------------------------------------ batch edits

    def _select(self, keep: Sequence[int]) -> None:
        if not keep:
            self.reset()
            return
        assert self.cache is not None and self.mask is not None
        index = torch.tensor(list(keep), device=self.device, dtype=torch.long)
        mask = self.mask.index_select(0, index)
        used = mask.any(dim=0)
        first = int(used.to(torch.int8).argmax()) if bool(used.any()) else 0
        mask = mask[:, first:]
        for layer in _kv_layers(self.cache):
            if layer.keys is None or layer.values is None or layer.keys.numel() == 0:
                continue
            layer.keys = layer.keys.index_select(0, index)[:, :, first:, :]
            layer.values = layer.values.index_select(0, index)[:, :, first:, :]
        self.mask = mask
        self.rows = [self.rows[i] for i in keep]

    def _merge(self, cache: DynamicCache, mask: torch.Tensor, rows: Sequence[EngineRow]) -> None:
        """Append ``rows`` (their cache and mask) to the batch, left-padding the narrower side."""
        if self.cache is None or self.mask is None or not self.rows:
            self.cache, self.mask, self.rows = cache, mask, list(rows)
            return
        old_width, new_width = self.mask.shape[1], mask.shape[1]
        width = max(old_width, new_width)
        self.mask = torch.cat([_pad_left(self.mask, width), _pad_left(mask, width)], dim=0)
        for old_layer, new_layer in zip(_kv_layers(self.cache), _kv_layers(cache), strict=True):
            old_layer.keys = torch.cat(
                [_pad_left_kv(old_layer.keys, width), _pad_left_kv(new_layer.keys, width)], dim=0
            )
            old_layer.values = torch.cat(
                [_pad_left_kv(old_layer.values, width), _pad_left_kv(new_layer.values, width)],
                dim=0,
            )
        self.rows.extend(rows)

    # ------------------------------------------------------------------ forwards

    def _decode(self) -> list[StepOutput]:
        assert self.cache is not None and self.mask is not None
        rows = self.rows
        n = len(rows)
        input_ids = torch.tensor([[row.generated[-1]] for row in rows], device=self.device)
        positions = torch.tensor([[row.cached_tokens] for row in rows], device=self.device)
        self.mask = torch.cat(
            [self.mask, torch.ones((n, 1), dtype=self.mask.dtype, device=self.device)], dim=1
        )
        out = self.model(
            input_ids=input_ids,
            attention_mask=self.mask,
            position_ids=positions,
            past_key_values=self.cache,
            use_cache=True,
            logits_to_keep=1,
        )
        self.stats.decode_steps += 1
        self.stats.decoded_tokens += n
        self.stats.step_batch_sizes.append(n)
        for row in rows:
            row.cached_tokens += 1
        return self._sample_and_advance(out.logits[:, -1, :], rows)

    def _admit(self, rows: Sequence[EngineRow]) -> list[StepOutput]:
        # Distinct inputs only: the N fresh traces of a prompt are one prefill.
        distinct: dict[tuple[int, ...], int] = {}
        owner: list[int] = []
        for row in rows:
            key = row.prompt_ids + tuple(row.generated)
            owner.append(distinct.setdefault(key, len(distinct)))
            row.cached_tokens = len(key)
            row.detok = IncrementalDetokenizer(self.decode, row.prompt_ids)
            sent = row.detok.resume(row.generated)
            if row.stop:
                # Primed with the resumed text: a stop string may straddle the point where the
                # trace was parked, and the text its parked stream held back is emitted first.
                row.stops = StopMatcher(row.stop)
                row.stops.resume(sent)
        inputs = list(distinct)
        outputs: list[StepOutput] = []
        for chunk in _chunks_by_budget(inputs, PREFILL_TOKEN_BUDGET):
            cache, mask, logits = self._prefill([inputs[i] for i in chunk])
            in_chunk = set(chunk)
            members = [r for r, o in enumerate(owner) if o in in_chunk]
            local = {input_index: position for position, input_index in enumerate(chunk)}
            expand = torch.tensor([local[owner[r]] for r in members], device=self.device)
            for layer in _kv_layers(cache):
                if layer.keys is not None and layer.values is not None:
                    layer.keys = layer.keys.index_select(0, expand)
                    layer.values = layer.values.index_select(0, expand)
            chunk_rows = [rows[r] for r in members]
            self._merge(cache, mask.index_select(0, expand), chunk_rows)
            outputs.extend(self._sample_and_advance(logits.index_select(0, expand), chunk_rows))
        return outputs

    def _prefill(
        self, inputs: Sequence[tuple[int, ...]]
    ) -> tuple[DynamicCache, torch.Tensor, torch.Tensor]:
        ids, mask, positions = (t.to(self.device) for t in left_padded(inputs, self.pad_token_id))
        cache = DynamicCache()
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        self.stats.prefill_forwards += 1
        self.stats.prefill_tokens += sum(len(seq) for seq in inputs)
        return cache, mask, out.logits[:, -1, :]

    # ------------------------------------------------------------------ sampling

    def _sample_and_advance(
        self, logits: torch.Tensor, rows: Sequence[EngineRow]
    ) -> list[StepOutput]:
        tokens = sample_tokens(
            logits, [row.sampling for row in rows], [len(row.generated) for row in rows]
        )
        return [self._advance(row, token) for row, token in zip(rows, tokens, strict=True)]

    def _advance(self, row: EngineRow, token: int) -> StepOutput:
        row.generated.append(token)
        row.new_tokens += 1
        assert row.detok is not None
        text = row.detok.push(token)
        finish: FinishReason | None = None
        if token in self.eos_token_ids and not self.ignore_eos:
            finish = "stop"
        elif len(row.generated) >= row.max_tokens:
            finish = "length"
        if finish is not None:
            text += row.detok.flush()  # an incomplete character at the very end, if any
        stops = row.stops
        if stops is not None:
            # vLLM's rule (deepprune_lc.backends.stops): text that may start a stop string is held
            # back; a completed one ends the trace right before it (this token is the last), and
            # a trace that ends otherwise releases what was held.
            text, hit = stops.push(text)
            if hit:
                finish = "stop"
            elif finish is not None:
                text += stops.flush()
        if finish is not None:
            row.finish_reason = finish
        return StepOutput(row, token, text, finish)


def _kv_layers(cache: DynamicCache) -> list[DynamicLayer]:
    """The cache's layers, which must be plain key/value layers.

    Rows can be removed from and added to a key/value cache by indexing its batch dimension. A
    recurrent state (linear-attention layers) is a different kind of cache this engine does not edit.
    """
    layers = []
    for layer in cache.layers:
        if not isinstance(layer, DynamicLayer):
            raise TypeError(
                f"cache layer {type(layer).__name__} is not a key/value layer: models with "
                "linear-attention (recurrent) layers are not supported by this backend"
            )
        layers.append(layer)
    return layers


def _pad_left(mask: torch.Tensor, width: int) -> torch.Tensor:
    extra = width - mask.shape[1]
    if extra == 0:
        return mask
    return torch.nn.functional.pad(mask, (extra, 0), value=0)


def _pad_left_kv(tensor: torch.Tensor | None, width: int) -> torch.Tensor:
    assert tensor is not None
    extra = width - tensor.shape[2]
    if extra == 0:
        return tensor
    return torch.nn.functional.pad(tensor, (0, 0, extra, 0), value=0.0)


def _chunks_by_budget(inputs: Sequence[tuple[int, ...]], budget: int) -> list[list[int]]:
    """Group input indices (longest first) so each prefill stays within ``budget`` padded tokens."""
    order = sorted(range(len(inputs)), key=lambda i: len(inputs[i]), reverse=True)
    chunks: list[list[int]] = []
    current: list[int] = []
    width = 0
    for i in order:
        width_if_added = max(width, len(inputs[i]))
        if current and width_if_added * (len(current) + 1) > budget:
            chunks.append(current)
            current, width_if_added = [], len(inputs[i])
        current.append(i)
        width = width_if_added
    if current:
        chunks.append(current)
    return chunks
