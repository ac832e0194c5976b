"""Stop strings over streamed text: ``StopMatcher``, one rule for every backend that applies them.

Why a shared helper: a stop string usually spans several tokens ("The answer is" is three or four),
so a backend that checks each delta's text on its own, or cuts only the delta that completes the
match, has already streamed the start of the stop string ("\\n\\nThe answer") by the time it knows.
The matcher holds text back while it could still be the start of a stop string and releases it as
soon as it cannot, so nothing of a stop string is ever emitted. The rule is vLLM's (and OpenAI's),
which every backend of this project follows:

* the text ends right before the stop string; the stop string and everything after it are dropped
  (vLLM's ``include_stop_str_in_output=False``, its default), and the finish reason is ``"stop"``;
* when several stop strings match, the one that *completes* first wins (ties: the first listed),
  which is what checking after every token gives, however the text was split into deltas;
* the token that completed the stop string is the last token of the stream: its id is in the final
  delta's ``token_ids`` even when the stop string ends in the middle of its text (the rest of that
  token's text is dropped with the stop string), exactly as vLLM reports it. So the ids of a stopped
  trace may decode to more than its text; a stopped trace is finished and never resumed;
* text held back is released when the stream ends without a match (end of sequence, ``max_tokens``)
  and kept when it is aborted: a parked trace that resumes primes its new matcher with the text of
  its resumed ids (``resume``), so the resumed stream emits the held text first and a stop string
  that straddles the park point is still caught. The trace's text, parked deltas then resumed ones,
  is what it would have been unparked. (vLLM, which applies stop strings inside the engine, sends
  its held text with the abort and checks only the resumed request's own output.)

Empty stop strings are ignored (they would match before the first character). Held text is at most
the longest stop string's length minus one, and only while the text's tail could start a stop string.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["StopMatcher", "find_stop"]


def find_stop(text: str, stops: Sequence[str]) -> tuple[int, int] | None:
    """``(start, end)`` of the stop string that completes first in ``text`` (ties: first listed)."""
    best: tuple[int, int] | None = None
    for stop in stops:
        start = text.find(stop)
        if start != -1 and (best is None or start + len(stop) < best[1]):
            best = (start, start + len(stop))
    return best


class StopMatcher:
    """Incremental stop-string matching with a hold-back buffer (see the module docstring).

    Feed it each delta's text with ``push``; it returns the text that may be emitted now and whether
    a stop string completed. ``flush`` releases the held text when the stream ends by itself.
    """

    __slots__ = ("_longest", "_pending", "stops")

    def __init__(self, stops: Sequence[str]) -> None:
        if isinstance(stops, str):
            raise TypeError("stops: expected a sequence of strings, got one string")
        self.stops: tuple[str, ...] = tuple(dict.fromkeys(s for s in stops if s))
        self._longest = max((len(s) for s in self.stops), default=0)
        self._pending = ""

    def __bool__(self) -> bool:
        """Whether there is anything to match (no stop strings: every push passes text through)."""
        return bool(self.stops)

    @property
    def held(self) -> str:
        """Text received but not yet released: a tail that may still start a stop string."""
        return self._pending

    def push(self, text: str) -> tuple[str, bool]:
        """``(text to emit now, whether a stop string completed)``.

        On a match the text ends right before the stop string and the matcher is spent (what comes
        after the match is dropped); otherwise the tail that could start a stop string is held.
        """
        if not self.stops:
            return text, False
        window = self._pending + text
        hit = find_stop(window, self.stops)
        if hit is not None:
            self._pending = ""
            return window[: hit[0]], True
        keep = self._held_length(window)
        cut = len(window) - keep
        self._pending = window[cut:]
        return window[:cut], False

    def flush(self) -> str:
        """Release the held text (the stream ended without a match)."""
        held, self._pending = self._pending, ""
        return held

    def resume(self, text: str) -> str:
        """Prime a resumed stream's matcher with the text of its resumed ids.

        Returns the tail the parked stream held back (and never emitted): the resumed stream emits
        it before its own text, with its first ``push`` (or ``flush`` if it ends at once).
        """
        self._pending = text[len(text) - self._held_length(text) :] if self.stops else ""
        return self._pending

    def _held_length(self, text: str) -> int:
        """Length of the longest suffix of ``text`` that is a proper prefix of a stop string."""
        for length in range(min(len(text), self._longest - 1), 0, -1):
            tail = text[-length:]
            if any(len(stop) > length and stop.startswith(tail) for stop in self.stops):
                return length
        return 0
