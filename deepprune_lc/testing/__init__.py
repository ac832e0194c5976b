"""Test support for code built on deepprune-lc: standard-suite settings, conformance suites, fakes.

Like langchain-tests, this package is for test code only: it needs pytest.

* ``BackendConformanceTests`` / ``JudgeConformanceTests``: the ``GenerationBackend`` and ``Judge``
  contracts as pytest classes; a backend's or judge's tests subclass them in a few lines.
* Fake judges (``ConstantJudge``, ``ScriptedJudge``, ``FailingJudge``, ``SlowJudge``),
  fault-injecting backend wrappers (``FailingBackend``, ``DeafBackend``, ``StallingBackend``),
  ``DelegatingBackend``, the pass-through to subclass for a wrapper that changes one thing, and
  ``RecordingBackend`` (what each stream delivered, and after a cancellation or an abort), from
  ``.fakes``.
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
    "small_engine_params",
]
