"""What the engine backends share to answer a probe (``AnswerProbing``): the suffix, and where the
probe's answer ends.

A probe asks a running trace for its answer now: prompt ids + the trace's ids so far + the ids of
a suffix, decoded greedily for a few tokens. Two rules are the same on every engine, so they live
here:

* **The think block is closed first.** A reasoning model writes its chain of thought inside
  ``<think> ... </think>`` and its answer after it; asked for an answer while still thinking, it
  answers best once the block is closed, as it would have closed it (Dynasor does the same). A
  tokenizer "has a think block" when ``<think>`` and ``</think>`` are single tokens of its own;
  the block is open when the last ``</think>`` of prompt + trace (if any) comes before the last
  ``<think>``, or neither has appeared yet (a template that opens the block in the prompt, or a
  model that opens it as its first token). A suffix that itself starts with ``</think>`` is used
  as it is.
* **The answer ends at the brace that closes the box.** The default suffix ends inside
  ``\\boxed{``; the probe's text is cut right after the ``}`` that closes it, counting nested
  braces (``\\frac{1}{2}}`` closes after the last one), so a stop string on ``}`` (which would cut
  ``\\frac{1`` short) is not used. A suffix that leaves no brace open is decoded to ``max_tokens``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from deepprune_lc.core.ports import DYNASOR_PROBE_SUFFIX, ProbeReply

__all__ = [
    "THINK_CLOSE",
    "ProbeStats",
    "ThinkTokens",
    "box_end",
    "check_probe_tokens",
    "model_probe_reply",
    "probe_suffix_text",
    "think_block_open",
    "think_tokens",
]

#: What closes an open think block before the probe's question (the block ends its own line).
THINK_CLOSE = "</think>\n\n"

#: ``(id of <think>, id of </think>)``, or None for a tokenizer without a think block.
ThinkTokens = tuple[int, int] | None


def think_tokens(encode: Callable[[str], Sequence[int]]) -> ThinkTokens:
    """The ids of ``<think>`` / ``</think>`` when both are single tokens of ``encode`` (which
    encodes text without adding special tokens), else None: no think block to close."""
    start, end = list(encode("<think>")), list(encode("</think>"))
    if len(start) == 1 and len(end) == 1 and start != end:
        return int(start[0]), int(end[0])
    return None


def think_block_open(think: ThinkTokens, ids: Sequence[int]) -> bool:
    """Whether the think block is open after ``ids`` (prompt ids + the trace's ids so far)."""
    if think is None:
        return False
    start, end = think
    last_start = last_end = -1
    for position in range(len(ids) - 1, -1, -1):
        token = ids[position]
        if last_end < 0 and token == end:
            last_end = position
        elif last_start < 0 and token == start:
            last_start = position
        if last_start >= 0 and last_end >= 0:
            break
    return last_end < last_start or (last_start < 0 and last_end < 0)


def probe_suffix_text(suffix: str | None, *, close_think: bool) -> str:
    """The text appended to the trace: ``suffix`` (None: ``DYNASOR_PROBE_SUFFIX``), preceded by
    ``THINK_CLOSE`` when the think block is open and the suffix does not close it itself."""
    text = DYNASOR_PROBE_SUFFIX if suffix is None else suffix
    if close_think and not text.lstrip().startswith("</think>"):
        return THINK_CLOSE + text
    return text


def box_end(suffix: str, text: str) -> int | None:
    """Where the probe's answer ends in ``text`` (the generated text after ``suffix``).

    The index right after the ``}`` that closes the last brace the suffix left open, or None when
    that brace is still open at the end of ``text`` (or the suffix leaves none open).
    """
    depth = 0
    for char in suffix:
        if char == "{":
            depth += 1
        elif char == "}" and depth:
            depth -= 1
    if depth == 0:
        return None
    level = 0
    for index, char in enumerate(text):
        if char == "{":
            level += 1
        elif char == "}":
            if level == 0:
                return index + 1
            level -= 1
    return None


def check_probe_tokens(max_tokens: int) -> None:
    """``ValueError`` unless ``max_tokens`` (a probe's budget) is an integer >= 1."""
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise ValueError(f"max_tokens: a probe needs an integer >= 1, got {max_tokens!r}")


@dataclass(slots=True)
class ProbeStats:
    """What a backend's answer probes cost so far (each reply also carries its own cost).

    ``cached_tokens``: of ``prefill_tokens``, those the engine's prefix cache served (0 where the
    engine does not say).
    """

    probes: int = 0
    prefill_tokens: int = 0
    cached_tokens: int = 0
    decoded_tokens: int = 0
    seconds: float = 0.0

    def add(self, reply: ProbeReply, *, cached_tokens: int = 0) -> None:
        """Count one probe."""
        self.probes += 1
        self.prefill_tokens += reply.prefill_tokens
        self.cached_tokens += cached_tokens
        self.decoded_tokens += reply.decoded_tokens
        self.seconds += reply.seconds


def model_probe_reply(
    text: str, *, at_tokens: int, prefill_tokens: int, decoded_tokens: int, started: float
) -> ProbeReply:
    """The reply of a probe a model answered: its text (already cut at the box's brace), what it
    cost, and ``unknown`` when the model said nothing; the caller extracts the answer with the
    run's rules. ``started`` is the ``time.perf_counter()`` at which the probe began."""
    return ProbeReply(
        text=text,
        at_tokens=at_tokens,
        prefill_tokens=prefill_tokens,
        decoded_tokens=decoded_tokens,
        seconds=time.perf_counter() - started,
        unknown=not text.strip(),
    )
