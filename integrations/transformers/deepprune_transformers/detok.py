"""Incremental detokenisation: the text each new token adds, without splitting characters.

Decoding one token id at a time is wrong for byte-level BPE (a multi-byte character spans tokens, and
decoding half of it gives U+FFFD) and for SentencePiece (a leading-space marker renders differently at
the start of a decode). The standard fix, used by vLLM and TGI: decode a small window that ends at the
new token, subtract the text of the same window without it, and hold the text back while it ends in
an incomplete character. The state is two offsets into the trace's ids and depends only on the ids,
so a resumed trace rebuilds exactly the state its parked stream had by replaying its ids
(``IncrementalDetokenizer.resume``), and the text it streams continues where the parked stream's text
stopped.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

__all__ = ["IncrementalDetokenizer"]

#: Prompt tokens kept as left context, so the first generated token decodes as it would mid-text.
_CONTEXT_TOKENS = 6
_REPLACEMENT = "\ufffd"

Decode = Callable[[Sequence[int]], str]


class IncrementalDetokenizer:
    """Text pieces for a growing list of ids (``ids`` starts with a little prompt context)."""

    __slots__ = ("_decode", "ids", "prefix_offset", "read_offset")

    def __init__(self, decode: Decode, prompt_ids: Sequence[int]) -> None:
        self._decode = decode
        context = list(prompt_ids[-_CONTEXT_TOKENS:])
        self.ids: list[int] = context
        self.prefix_offset = 0
        self.read_offset = len(context)

    def resume(self, generated: Sequence[int]) -> str:
        """Replay ids a parked stream already delivered; returns the text it sent for them."""
        return "".join([self.push(token) for token in generated])

    def push(self, token: int) -> str:
        """Add one id; return the text it completes ('' while a character is still incomplete)."""
        self.ids.append(token)
        ids = self.ids
        prefix_text = self._decode(ids[self.prefix_offset : self.read_offset])
        new_text = self._decode(ids[self.prefix_offset :])
        if len(new_text) > len(prefix_text) and not new_text.endswith(_REPLACEMENT):
            piece = new_text[len(prefix_text) :]
            self.prefix_offset = self.read_offset
            self.read_offset = len(ids)
            self._trim()
            return piece
        return ""

    def flush(self) -> str:
        """Text still held back (an incomplete character at the very end), when the trace ends."""
        prefix_text = self._decode(self.ids[self.prefix_offset : self.read_offset])
        new_text = self._decode(self.ids[self.prefix_offset :])
        self.prefix_offset = self.read_offset = len(self.ids)
        return new_text[len(prefix_text) :] if len(new_text) > len(prefix_text) else ""

    def _trim(self) -> None:
        # Only ids from prefix_offset on are ever decoded again: drop the rest so memory stays flat.
        if self.prefix_offset > 64:
            cut = self.prefix_offset
            del self.ids[:cut]
            self.prefix_offset -= cut
            self.read_offset -= cut
