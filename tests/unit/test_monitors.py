"""Per-trace monitors: deltas in, signals out; and a new controller that uses one, on the real driver."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from deepprune_lc import ReplayBackend, SamplingConfig
from deepprune_lc.core.answers import AnswerRules
from deepprune_lc.core.config import ReasoningWordsPrefix, RunConfig, TokensPrefix
from deepprune_lc.core.controllers import Action, SelfConsistencyController
from deepprune_lc.core.monitors import (
    CombinedMonitor,
    ConfidenceLow,
    ConfidenceMonitor,
    PrefixComplete,
    PrefixMonitor,
    ProbeDue,
    ProbeMonitor,
    Signal,
    TraceMonitor,
)
from deepprune_lc.core.ports import TraceDelta
from deepprune_lc.core.prefix import reasoning_word_prefix
from deepprune_lc.demo import load_demo_pool
from deepprune_lc.runtime.driver import Driver


def delta(
    n_tokens: int, text: str = "x ", logprobs: Sequence[Sequence[float]] | None = None
) -> TraceDelta:
    return TraceDelta(token_ids=list(range(n_tokens)), text=text, logprobs=logprobs)


def test_prefix_monitor_signals_once_then_goes_quiet() -> None:
    monitor = PrefixMonitor(TokensPrefix(k=5))
    assert monitor.feed(delta(3, "one two ")) == ()
    (signal,) = monitor.feed(delta(3, "three four "))
    assert signal == PrefixComplete("one two three four ", 6)
    assert not monitor.active
    assert monitor.close() == ()  # already complete: nothing owed at the end


def test_prefix_monitor_owes_a_short_prefix_when_the_trace_ends_first() -> None:
    monitor = PrefixMonitor(TokensPrefix(k=50))
    monitor.feed(delta(4, "short answer"))
    assert monitor.close() == (PrefixComplete("short answer", 4, ended_early=True),)


def test_prefix_monitor_agrees_with_the_offline_reasoning_word_prefix() -> None:
    policy = ReasoningWordsPrefix(k=3)
    text = "First, so we add. But wait, then we check. Therefore it is 7. Hence done."
    monitor = PrefixMonitor(policy)
    signals: list[Signal] = []
    for i in range(0, len(text), 5):
        signals.extend(monitor.feed(delta(1, text[i : i + 5])))
    signals.extend(monitor.close())
    assert [type(s) for s in signals] == [PrefixComplete]
    assert signals[0].prefix == reasoning_word_prefix(text, policy)  # type: ignore[union-attr]


def test_probe_monitor_fires_once_per_offset_crossed() -> None:
    monitor = ProbeMonitor(every_tokens=10)
    fired = [monitor.feed(delta(n)) for n in (4, 4, 4, 25, 1)]
    assert fired == [(), (), (ProbeDue(12),), (ProbeDue(37),), ()]
    # 12 crossed 10; 37 crossed 20 and 30 at once: one probe there, the next one due at 40.
    assert monitor.feed(delta(3)) == (ProbeDue(41),)
    assert monitor.active  # probes never stop on their own


def test_confidence_monitor_signals_each_dip_once() -> None:
    monitor = ConfidenceMonitor(window=2, bound=-1.0)
    assert monitor.feed(delta(2, logprobs=[[-0.1], [-0.2]])) == []
    (low,) = monitor.feed(delta(1, logprobs=[[-3.0]]))
    assert isinstance(low, ConfidenceLow)
    assert low.tokens == 3 and low.confidence == -1.6
    assert monitor.feed(delta(1, logprobs=[[-3.0]])) == []  # still low: no new signal
    assert monitor.feed(delta(2, logprobs=[[-0.1], [-0.1]])) == []  # recovered
    assert len(monitor.feed(delta(2, logprobs=[[-5.0], [-5.0]]))) == 1  # a new dip
    assert monitor.feed(delta(3)) == ()  # no logprobs on this delta: nothing to judge


def test_combined_monitor_runs_until_every_part_is_done() -> None:
    monitor = CombinedMonitor(PrefixMonitor(TokensPrefix(k=2)), ProbeMonitor(every_tokens=3))
    assert list(monitor.feed(delta(2, "a b"))) == [PrefixComplete("a b", 2)]
    assert monitor.active  # the probe monitor still watches
    assert list(monitor.feed(delta(1))) == [ProbeDue(3)]


class ProbeRecorder(SelfConsistencyController):
    """A new method is a new controller: this one asks for probes and records where they fell."""

    method = "probe_recorder"

    def __init__(self, n_traces: int, every: int) -> None:
        super().__init__(n_traces, AnswerRules.math())
        self.every = every
        self.probes: dict[int, list[int]] = {t: [] for t in range(n_traces)}

    def monitor(self, trace_id: int) -> TraceMonitor | None:
        return ProbeMonitor(self.every)

    def on_signal(self, trace_id: int, signal: Signal) -> list[Action]:
        assert isinstance(signal, ProbeDue)
        self.probes[trace_id].append(signal.tokens)
        return []


def test_a_controller_with_its_own_monitor_runs_on_the_real_driver() -> None:
    pool = load_demo_pool()
    backend = ReplayBackend(pool, yield_every=1)
    controller = ProbeRecorder(4, every=16)
    driver = Driver(
        backend,
        None,
        controller,
        prompt=pool.problems[0].problem,
        sampling=SamplingConfig(),
        run=RunConfig(n_traces=4),
    )
    result = asyncio.run(driver.run())
    assert result.method == "probe_recorder"
    for report in result.traces:
        probes = controller.probes[report.trace_id]
        assert len(probes) == report.tokens_decoded // 16  # one per 16 tokens (1-token deltas)
        assert probes == [16 * (i + 1) for i in range(len(probes))]
