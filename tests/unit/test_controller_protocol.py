"""The controller protocol the driver depends on, and the one transition table for trace states."""

from __future__ import annotations

import pytest

from deepprune_lc.core.answers import AnswerRules
from deepprune_lc.core.config import EarlyStoppingConfig, PruningConfig, TokensPrefix
from deepprune_lc.core.controllers import (
    TRANSITIONS,
    ClusterTrace,
    ControllerProtocol,
    ControllerProtocolError,
    DeepPruneController,
    EarlyStoppingController,
    ParkTrace,
    SelfConsistencyController,
    StartTrace,
    transition,
)
from deepprune_lc.core.monitors import PrefixComplete, PrefixMonitor, ProbeDue
from deepprune_lc.core.result import TERMINAL_STATUSES

EXACT = AnswerRules.exact()


def deepprune(n: int = 4) -> DeepPruneController:
    return DeepPruneController(PruningConfig(n_traces=n, prefix=TokensPrefix(k=4)), EXACT)


def test_every_controller_implements_the_protocol() -> None:
    controllers = [
        deepprune(),
        SelfConsistencyController(3, EXACT),
        EarlyStoppingController(EarlyStoppingConfig(n_traces=8, window=2), EXACT),
    ]
    for controller in controllers:
        assert isinstance(controller, ControllerProtocol)


def test_the_table_covers_every_status_and_terminal_states_have_no_way_out() -> None:
    assert set(TRANSITIONS) == {None, "running", "parked", "finished", "aborted", "pruned"}
    for status in TERMINAL_STATUSES:
        assert TRANSITIONS[status] == frozenset()  # type: ignore[index]
    assert transition(0, "parked", "running") == "running"  # a finalist resumes
    with pytest.raises(ControllerProtocolError, match=r"trace 3: illegal transition finished"):
        transition(3, "finished", "running")
    with pytest.raises(ControllerProtocolError, match="not started -> parked"):
        transition(1, None, "parked")


def test_esc_rejects_a_finish_for_a_trace_it_never_started() -> None:
    # ESC starts one window of 2; trace 5 belongs to a window that was never sampled.
    ctl = EarlyStoppingController(EarlyStoppingConfig(n_traces=8, window=2), EXACT)
    assert ctl.start() == [StartTrace(0), StartTrace(1)]
    with pytest.raises(ControllerProtocolError, match="trace 5: on_finished for a trace that"):
        ctl.on_finished(5, "the answer is 7", "stop")
    assert ctl.trace_view(5).status is None  # nothing was recorded for it


def test_events_for_unknown_or_unstarted_traces_are_errors() -> None:
    ctl = deepprune(4)
    with pytest.raises(ControllerProtocolError, match="never started"):
        ctl.on_prefix(0, "so")
    ctl.start()
    for bad in (4, -1):
        with pytest.raises(ControllerProtocolError, match="no such trace"):
            ctl.on_finished(bad, "7", "stop")
    with pytest.raises(ControllerProtocolError, match="no such trace"):
        ctl.answer_of(9)


def test_a_race_between_park_and_finish_is_legal() -> None:
    """A parked trace whose stream ended before the abort reached the engine simply finished."""
    ctl = deepprune(3)
    ctl.start()
    assert ctl.on_prefix(0, "a b c d")  # founds cluster 0
    actions = ctl.on_prefix(1, "a b c d")
    (request,) = [a for a in actions if not isinstance(a, StartTrace)][-1:]
    joined = ctl.on_judged(request.request_id, [0.9])  # type: ignore[union-attr]
    assert ParkTrace(1, 0) in joined
    ctl.on_finished(1, "the answer is 7", "stop")
    assert ctl.trace_view(1).status == "finished"
    assert ctl.answer_of(1) == "7"


def test_deepprune_asks_for_a_prefix_monitor_and_reads_its_signal() -> None:
    ctl = deepprune(2)
    assert ctl.needs_judge
    assert isinstance(ctl.monitor(0), PrefixMonitor)
    ctl.start()
    (founded,) = ctl.on_signal(0, PrefixComplete("a b c d", 4))
    assert founded == ClusterTrace(0, 0, True, None, 1)
    assert ctl.on_signal(0, PrefixComplete("again", 4)) == []  # its prefix is already known
    assert ctl.trace_view(0).cluster_id == 0
    # A signal the controller does not use is ignored, but still checked against the trace's state.
    assert ctl.on_signal(1, ProbeDue(500)) == []
    single = DeepPruneController(PruningConfig(n_traces=1), EXACT)
    assert single.monitor(0) is None
    assert not single.needs_judge
