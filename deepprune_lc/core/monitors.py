"""Per-trace monitors: turn a trace's deltas into the signals its controller asked for.

A controller says, per trace, which monitor it needs (``Controller.monitor(trace_id)``); the driver
feeds that monitor every delta of the trace while it is ``active`` and hands each signal it returns
to ``Controller.on_signal``. DeepPrune needs one signal, "the prefix is complete"; answer probes need
"a probe is due" every so many tokens; confidence-based methods (DeepConf) need "the model's
confidence fell below a bound". Each is a small monitor here, and a new controller that needs another
signal adds a monitor, not edits across the driver, the ports and every backend.

Monitors are sans-IO like the controllers. Their cost is on the per-token path only while they are
active: a prefix monitor goes inactive once the prefix is complete, and the driver then stops calling
it, so the common case per delta stays three appends and one check.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from deepprune_lc.core.config import PrefixPolicy
from deepprune_lc.core.ports import TraceDelta
from deepprune_lc.core.prefix import PrefixTracker, make_prefix_tracker

__all__ = [
    "CombinedMonitor",
    "ConfidenceLow",
    "ConfidenceMonitor",
    "PrefixComplete",
    "PrefixMonitor",
    "ProbeDue",
    "ProbeMonitor",
    "Signal",
    "TraceMonitor",
]


@dataclass(frozen=True, slots=True)
class PrefixComplete:
    """The trace's prefix, as the judge will read it. ``ended_early``: the trace finished first."""

    prefix: str
    tokens: int
    ended_early: bool = False


@dataclass(frozen=True, slots=True)
class ProbeDue:
    """The trace has decoded ``tokens`` tokens: time to ask it for its interim answer."""

    tokens: int


@dataclass(frozen=True, slots=True)
class ConfidenceLow:
    """The trace's mean top-token log-probability over its last window fell below the bound."""

    tokens: int
    confidence: float


Signal = PrefixComplete | ProbeDue | ConfidenceLow

_NONE: tuple[Signal, ...] = ()


class TraceMonitor:
    """Watches one trace's deltas. Subclasses implement ``feed`` (and ``close`` if they must).

    ``active`` is False once the monitor needs no more deltas; the driver then stops feeding it. A
    monitor lives as long as its trace: a parked trace that is resumed keeps its monitor, so token
    counts run on across the resume.
    """

    __slots__ = ("active",)

    def __init__(self) -> None:
        self.active = True

    def feed(self, delta: TraceDelta) -> Sequence[Signal]:
        """Signals due after this delta (usually none)."""
        raise NotImplementedError

    def close(self) -> Sequence[Signal]:
        """The trace's stream ended on its own: signals still owed (a prefix cut short)."""
        self.active = False
        return _NONE


class PrefixMonitor(TraceMonitor):
    """Signals ``PrefixComplete`` once, when the prefix policy (reasoning words, tokens) is met."""

    __slots__ = ("tracker",)

    def __init__(self, policy: PrefixPolicy) -> None:
        super().__init__()
        self.tracker: PrefixTracker = make_prefix_tracker(policy)

    def feed(self, delta: TraceDelta) -> Sequence[Signal]:
        tracker = self.tracker
        if not self.active or not tracker.feed(delta.text, len(delta.token_ids)):
            return _NONE
        self.active = False
        return (PrefixComplete(tracker.prefix_text or "", tracker.tokens),)

    def close(self) -> Sequence[Signal]:
        if not self.active:
            return _NONE
        self.active = False
        text = self.tracker.close()
        return (PrefixComplete(text, self.tracker.tokens, ended_early=True),)


class ProbeMonitor(TraceMonitor):
    """Signals ``ProbeDue`` every ``every_tokens`` decoded tokens (from ``first_at`` on);
    ``once=True`` signals only at ``first_at`` and then goes inactive (off the per-token path)."""

    __slots__ = ("_every", "_next", "_once", "tokens")

    def __init__(
        self, every_tokens: int, *, first_at: int | None = None, once: bool = False
    ) -> None:
        if every_tokens < 1:
            raise ValueError(f"every_tokens: must be >= 1, got {every_tokens}")
        super().__init__()
        self._every = every_tokens
        self._next = every_tokens if first_at is None else first_at
        if self._next < 1:
            raise ValueError(f"first_at: must be >= 1, got {first_at}")
        self._once = once
        self.tokens = 0

    def feed(self, delta: TraceDelta) -> Sequence[Signal]:
        self.tokens += len(delta.token_ids)
        if self.tokens < self._next:
            return _NONE
        if self._once:
            self.active = False
        # One probe per crossing, even if a long delta crossed several offsets at once: a probe
        # reads the trace as it is now, so two at the same point would say the same thing.
        while self._next <= self.tokens:
            self._next += self._every
        return (ProbeDue(self.tokens),)


class ConfidenceMonitor(TraceMonitor):
    """Signals ``ConfidenceLow`` when the mean top-1 log-probability of the last ``window`` tokens
    drops below ``bound`` (DeepConf's group confidence). Needs a backend that returns logprobs; on
    deltas without them it stays silent.

    Signals once per dip: after a ``ConfidenceLow`` it waits until the window mean recovers.
    """

    __slots__ = ("_below", "_bound", "_sum", "_window", "tokens")

    def __init__(self, window: int, bound: float) -> None:
        if window < 1:
            raise ValueError(f"window: must be >= 1, got {window}")
        if not math.isfinite(bound):
            raise ValueError(f"bound: must be finite, got {bound}")
        super().__init__()
        self._window: deque[float] = deque(maxlen=window)
        self._bound = bound
        self._sum = 0.0
        self._below = False
        self.tokens = 0

    def feed(self, delta: TraceDelta) -> Sequence[Signal]:
        self.tokens += len(delta.token_ids)
        if not delta.logprobs:
            return _NONE
        signals: list[Signal] = []
        window = self._window
        for top in delta.logprobs:
            if not top:
                continue
            if len(window) == window.maxlen:
                self._sum -= window[0]
            value = float(max(top))
            window.append(value)
            self._sum += value
            if len(window) < (window.maxlen or 1):
                continue
            mean = self._sum / len(window)
            if mean < self._bound and not self._below:
                self._below = True
                signals.append(ConfidenceLow(self.tokens, mean))
            elif mean >= self._bound:
                self._below = False
        return signals


class CombinedMonitor(TraceMonitor):
    """Several monitors on one trace (e.g. a prefix for the judge and probes for the vote)."""

    __slots__ = ("monitors",)

    def __init__(self, *monitors: TraceMonitor) -> None:
        super().__init__()
        self.monitors = list(monitors)
        self.active = any(m.active for m in self.monitors)

    def feed(self, delta: TraceDelta) -> Sequence[Signal]:
        signals: list[Signal] = []
        for monitor in self.monitors:
            if monitor.active:
                signals.extend(monitor.feed(delta))
        self.active = any(m.active for m in self.monitors)
        return signals

    def close(self) -> Sequence[Signal]:
        signals: list[Signal] = []
        for monitor in self.monitors:
            if monitor.active:
                signals.extend(monitor.close())
        self.active = False
        return signals
