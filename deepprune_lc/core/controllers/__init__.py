"""Sans-IO controllers: what to do next, given what just happened.

A controller never touches an engine, a clock or an event loop. The driver tells it what happened
(``on_prefix``, ``on_finished``, ``on_judged``, ...) and executes the actions it returns (start, score,
park, resume, abort, done). This is the h11 pattern: every rule of the method can be exercised from a
test with plain data, and the same controller runs on replayed traces, vLLM or transformers.

``DeepPruneController`` implements the paper's online greedy clustering plus the decisions the paper
leaves open (see docs/method.md). ``SelfConsistencyController`` and ``EarlyStoppingController`` are the
baselines, in the same shape, so all three run through one driver and are measured the same way.
"""

from __future__ import annotations

from deepprune_lc.core.controllers.actions import (
    AbortTrace,
    Action,
    ClusterTrace,
    FailRun,
    FlagUnreliable,
    ParkTrace,
    ProbeTrace,
    ResumeTrace,
    RunDone,
    ScorePairs,
    StartTrace,
)
from deepprune_lc.core.controllers.base import Controller, Outcome, TraceState, TraceView
from deepprune_lc.core.controllers.baselines import (
    AdaptiveConsistencyConfig,
    AdaptiveConsistencyController,
    EarlyStoppingController,
    SelfConsistencyController,
)
from deepprune_lc.core.controllers.deepprune import DeepPruneController
from deepprune_lc.core.controllers.protocol import ControllerProtocol
from deepprune_lc.core.controllers.states import (
    TRANSITIONS,
    AbortReason,
    ControllerProtocolError,
    Fallback,
    Phase,
    Unreliability,
    transition,
)

__all__ = [
    "TRANSITIONS",
    "AbortReason",
    "AbortTrace",
    "Action",
    "AdaptiveConsistencyConfig",
    "AdaptiveConsistencyController",
    "ClusterTrace",
    "Controller",
    "ControllerProtocol",
    "ControllerProtocolError",
    "DeepPruneController",
    "EarlyStoppingController",
    "FailRun",
    "Fallback",
    "FlagUnreliable",
    "Outcome",
    "ParkTrace",
    "Phase",
    "ProbeTrace",
    "ResumeTrace",
    "RunDone",
    "ScorePairs",
    "SelfConsistencyController",
    "StartTrace",
    "TraceState",
    "TraceView",
    "Unreliability",
    "transition",
]
