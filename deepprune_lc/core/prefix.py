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

from deepprune_lc.core.config import PrefixPolicy, ReasoningWordsPrefix, TokensPrefix

__all__ = [
    "PrefixTracker",
    "ReasoningWordPrefixTracker",
    "TokenPrefixTracker",
    "make_prefix_tracker",
    "reasoning_word_prefix",
]


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


#: Whitespace allowed between the words of a phrase ("let  me", "let\nme"); bounded so that the
#: longest possible match, and so the look-back of an incremental scan, is bounded too.
_PHRASE_GAP = r"\s{1,4}"


@lru_cache(maxsize=32)
def _reasoning_word_pattern(
    vocabulary: tuple[str, ...],
) -> tuple[re.Pattern[str], int, frozenset[str]]:
    """One alternation over the vocabulary, longest phrases first, whole words only.

    A match must be *followed* by a non-word character (``(?=\\W)``, not ``\\b`` or end of text):
    at the end of a partial stream "then" might still grow into "thence". Returns the pattern and
    the longest text a match can span, and the entries that begin a longer entry ("let" when
    "let me" is also in the vocabulary), whose matches must wait until the longer one is ruled out.
    """
    words = sorted({" ".join(w.lower().split()) for w in vocabulary}, key=len, reverse=True)
    alternation = "|".join(_PHRASE_GAP.join(map(re.escape, w.split())) for w in words)
    pattern = re.compile(rf"(?<!\w)(?:{alternation})(?=\W)", re.IGNORECASE)
    longest = max(len(w) + 3 * (len(w.split()) - 1) for w in words)
    extendable = frozenset(w for w in words if any(o.startswith(w + " ") for o in words))
    return pattern, longest, extendable


class ReasoningWordPrefixTracker(PrefixTracker):
    """Complete at the end of the k-th reasoning word.

    The result does not depend on how the stream is split into deltas: a word counts once a
    non-word character follows it (so it cannot still grow), and an entry that begins a longer
    one ("let" when "let me" is in the vocabulary) waits until the text runs far enough past it to
    rule the longer one out; ``close`` settles what is left when the stream ends. Scanning is
    incremental (never the whole text again) and skipped for deltas with no word boundary.
    """

    __slots__ = ("_count", "_extendable", "_k", "_max_len", "_pattern", "_scan_from", "_text")

    def __init__(self, k: int, vocabulary: tuple[str, ...]) -> None:
        super().__init__()
        self._k = k
        self._pattern, self._max_len, self._extendable = _reasoning_word_pattern(vocabulary)
        self._text = ""
        self._scan_from = 0
        self._count = 0

    def feed(self, text: str, n_tokens: int) -> bool:
        self._chunks.append(text)
        self.tokens += n_tokens
        self._text += text
        if text.isalnum() or not text:
            return False  # no boundary: nothing new can be confirmed
        return self._scan(final=False)

    def _scan(self, *, final: bool) -> bool:
        pattern, full, max_len = self._pattern, self._text, self._max_len
        if final:
            full += "\n"  # the end of the stream is a word boundary
        pos = self._scan_from
        while True:
            match = pattern.search(full, pos)
            if match is None:
                # A match not found yet must end at the very end: it starts within max_len of it.
                self._scan_from = max(pos, len(full) - max_len - 1)
                return False
            if (
                not final
                and self._extendable
                and match.end() + max_len >= len(full)
                and " ".join(match.group().lower().split()) in self._extendable
            ):
                self._scan_from = match.start()  # a longer phrase could still match here
                return False
            self._count += 1
            pos = match.end()
            if self._count >= self._k:
                self.prefix_text = full[:pos]
                self.complete = True
                return True

    def close(self) -> str:
        """The stream ended: settle the last words; the prefix is the whole text if k not reached."""
        if not self.complete and not self._scan(final=True):
            self.prefix_text = "".join(self._chunks)
        self.complete = True
        return self.prefix_text or ""

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
    tracker.feed(text, 0)
    if tracker.complete or tracker._scan(final=True):
        return tracker.prefix_text
    return None
