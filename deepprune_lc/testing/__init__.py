"""Test support for code built on deepprune-lc: standard-suite settings, conformance suites, fakes.

Like langchain-tests, this package is for test code only: it needs pytest.

* ``BackendConformanceTests`` / ``JudgeConformanceTests``: the ``GenerationBackend`` and ``Judge``
  contracts as pytest classes; a backend's or judge's tests subclass them in a few lines.
* Fake judges (``ConstantJudge``, ``ScriptedJudge``, ``FailingJudge``, ``SlowJudge``),
  fault-injecting backend wrappers (``FailingBackend``, ``DeafBackend``, ``StallingBackend``),
  ``DelegatingBackend``, the pass-through to subclass for a wrapper that changes one thing, and
  ``RecordingBackend`` (what each stream delivered, and after a cancellation or an abort), from
  ``.fakes``.
* ``cancel_after_turns`` (``.cancellation``): cancel a call at a given event-loop turn and report
  the tasks and loop errors it left, for cancellation property tests.
* The settings the reasoner declares to langchain-tests' standard suites.
"""

import pytest

# As langchain-tests does: pytest rewrites the suites' asserts (before they are imported), so a
# failing check in a subclass's run shows the values it compared.
pytest.register_assert_rewrite(
    "deepprune_lc.testing.backend_suite", "deepprune_lc.testing.judge_suite"
)

from deepprune_lc.langchain.standard_suites import (  # noqa: E402
    IntegrationSuiteSettings,
    SuiteCapabilities,
    UnitSuiteSettings,
    small_engine_params,
)
from deepprune_lc.testing.backend_suite import (  # noqa: E402
    FINISH_REASONS,
    BackendConformanceTests,
    StreamRecord,
)
from deepprune_lc.testing.cancellation import (  # noqa: E402
    CancelOutcome,
    cancel_after_turns,
    leftover_tasks,
)
from deepprune_lc.testing.fakes import (  # noqa: E402
    ConstantJudge,
    DeafBackend,
    DelegatingBackend,
    FailingBackend,
    FailingJudge,
    RecordingBackend,
    ScriptedJudge,
    SlowJudge,
    StallingBackend,
)
from deepprune_lc.testing.judge_suite import JudgeConformanceTests  # noqa: E402

__all__ = [
    "FINISH_REASONS",
    "BackendConformanceTests",
    "CancelOutcome",
    "ConstantJudge",
    "DeafBackend",
    "DelegatingBackend",
    "FailingBackend",
    "FailingJudge",
    "IntegrationSuiteSettings",
    "JudgeConformanceTests",
    "RecordingBackend",
    "ScriptedJudge",
    "SlowJudge",
    "StallingBackend",
    "StreamRecord",
    "SuiteCapabilities",
    "UnitSuiteSettings",
    "cancel_after_turns",
    "leftover_tasks",
    "small_engine_params",
]
