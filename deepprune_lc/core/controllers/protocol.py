"""``ControllerProtocol``: everything the driver may ask of, and tell, a controller.

The driver depends on this protocol only: it never reads a controller's internals or checks its
class. A new method (answer probes, DeepConf, ...) is a new controller that implements it, with the
monitor it needs (``deepprune_lc.core.monitors``), and runs through the same driver.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from deepprune_lc.core.controllers.actions import Action
from deepprune_lc.core.controllers.base import Outcome, TraceView
from deepprune_lc.core.controllers.states import AbortReason
from deepprune_lc.core.monitors import Signal, TraceMonitor
from deepprune_lc.core.result import ClusterReport

__all__ = ["ControllerProtocol"]


@runtime_checkable
class ControllerProtocol(Protocol):
    """A sans-IO state machine: events in, actions out.

    Events are what happened (a trace started streaming and its monitor signalled, a trace finished,
    the judge answered, time ran out); actions are what the driver must do next. An event that the
    trace's state does not allow raises ``ControllerProtocolError``.
    """

    #: The method's name in results (``"deepprune"``, ``"self_consistency"``, ``"esc"``, ...).
    method: str
    n_traces: int
    #: True once the run is over (every trace terminal, the vote final or the run failed).
    done: bool
    #: The vote, once ``done``.
    outcome: Outcome | None
    #: Why the method fell back, if it did (reported as the result's ``error``).
    fallback_detail: str | None

    @property
    def needs_judge(self) -> bool:
        """Whether the driver needs a judge (to execute ``ScorePairs``)."""
        ...

    def monitor(self, trace_id: int) -> TraceMonitor | None:
        """The monitor for a trace's deltas when it first starts (None: no signals needed)."""
        ...

    def start(self) -> list[Action]: ...

    def on_signal(self, trace_id: int, signal: Signal) -> list[Action]: ...

    def on_finished(self, trace_id: int, text: str, finish_reason: str) -> list[Action]: ...

    def on_judged(self, request_id: int, probabilities: Sequence[float]) -> list[Action]: ...

    def on_judge_failed(self, request_id: int, reason: str) -> list[Action]: ...

    def on_deadline(self) -> list[Action]: ...

    def abort_all(self, reason: AbortReason) -> list[Action]: ...

    def answer_of(self, trace_id: int) -> str | None: ...

    def trace_view(self, trace_id: int) -> TraceView: ...

    def cluster_reports(self) -> list[ClusterReport]: ...
