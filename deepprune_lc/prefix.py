"""Prefix trackers: decide, delta by delta, when a trace has produced the prefix the judge reads.

The judge compares *prefixes*, not whole traces: that is where DeepPrune's savings come from. The
paper's best truncation counts "reasoning words" (discourse markers such as "wait", "so", "therefore"
that open a reasoning step) and stops at the 25th; the alternative is the first k tokens.

A tracker is fed every delta of its trace until it reports completion, then it is dropped, so its cost
only matters for the first few hundred tokens of each trace. Both trackers are incremental: no delta
causes a rescan of the whole text.
"""

from __future__ import annotations

import re
from functools import lru_cache

from deepprune_lc.config import PrefixPolicy, ReasoningWordsPrefix, TokensPrefix


class PrefixTracker:
    """Accumulates one trace's text until its prefix is complete."""

    __slots__ = ("_chunks", "complete", "prefix_text", "tokens")

    def __init__(self) -> None:
        self._chunks: list[str] = []
        self.tokens = 0
        self.complete = False
        self.prefix_text: str | None = None

    def feed(self, text: str, n_tokens: int) -> bool:
        """Add one delta; return True once the prefix is complete (then ``prefix_text`` is set)."""
        raise NotImplementedError

    def close(self) -> str:
        """The trace ended before its prefix completed: its whole text is the prefix."""
        if self.prefix_text is None:
            self.prefix_text = "".join(self._chunks)
        self.complete = True
        return self.prefix_text


class TokenPrefixTracker(PrefixTracker):
    """Complete after ``k`` tokens; a multi-token delta that crosses k is included whole."""

    __slots__ = ("_k",)

    def __init__(self, k: int) -> None:
        super().__init__()
        self._k = k

    def feed(self, text: str, n_tokens: int) -> bool:
        self._chunks.append(text)
        self.tokens += n_tokens
        if self.tokens >= self._k:
            self.prefix_text = "".join(self._chunks)
            self.complete = True
        return self.complete


@lru_cache(maxsize=32)
def _reasoning_word_pattern(vocabulary: tuple[str, ...]) -> tuple[re.Pattern[str], int]:
    """One alternation over the vocabulary, longest phrases first, whole words only.

    A match must be *followed* by a non-word character (``(?=\\W)``, not ``\\b`` or end of text): at
    the end of a partial stream "then" might still grow into "thence". Returns the pattern and the
    longest phrase length, which bounds how far back an incremental scan must look.
    """
    words = sorted({w.strip().lower() for w in vocabulary}, key=len, reverse=True)
    alternation = "|".join(r"\s+".join(map(re.escape, w.split())) for w in words)
    pattern = re.compile(rf"(?<!\w)(?:{alternation})(?=\W)", re.IGNORECASE)
    return pattern, max(len(w) for w in words)


class ReasoningWordPrefixTracker(PrefixTracker):
    """Complete at the end of the k-th reasoning word.

    Scanning is incremental: only text that could hold a match not seen before is searched, and only
    when the delta contains a non-word character (a word can only be confirmed complete then).
    """

    __slots__ = ("_count", "_k", "_max_len", "_pattern", "_scan_from", "_text")

    def __init__(self, k: int, vocabulary: tuple[str, ...]) -> None:
        super().__init__()
        self._k = k
        self._pattern, self._max_len = _reasoning_word_pattern(vocabulary)
        self._text = ""
        self._scan_from = 0
        self._count = 0

    def feed(self, text: str, n_tokens: int) -> bool:
        self._chunks.append(text)
        self.tokens += n_tokens
        self._text += text
        if text.isalnum() or not text:
            return False  # no word can have been completed by a delta without a boundary
        pattern, full = self._pattern, self._text
        pos = self._scan_from
        while True:
            match = pattern.search(full, pos)
            if match is None:
                break
            self._count += 1
            pos = match.end()
            if self._count >= self._k:
                self.prefix_text = full[:pos]
                self.complete = True
                return True
        # Any later match starts after the last accepted one and no earlier than max_len characters
        # before the end (a longer tail cannot hide an incomplete phrase).
        self._scan_from = max(pos, len(full) - self._max_len - 1)
        return False

    @property
    def words_seen(self) -> int:
        return self._count


def make_prefix_tracker(policy: PrefixPolicy) -> PrefixTracker:
    """A fresh tracker for one trace under ``policy``."""
    if isinstance(policy, ReasoningWordsPrefix):
        return ReasoningWordPrefixTracker(policy.k, policy.vocabulary)
    if isinstance(policy, TokensPrefix):
        return TokenPrefixTracker(policy.k)
    raise TypeError(f"unknown prefix policy: {policy!r}")


def reasoning_word_prefix(text: str, policy: ReasoningWordsPrefix) -> str | None:
    """The prefix of a complete text under ``policy`` (None if it has fewer than k words).

    Offline helper for judge training and calibration, consistent with the streaming tracker.
    """
    tracker = ReasoningWordPrefixTracker(policy.k, policy.vocabulary)
    tracker.feed(text + " ", 0)
    if tracker.complete and tracker.prefix_text is not None:
        return tracker.prefix_text
    return None
