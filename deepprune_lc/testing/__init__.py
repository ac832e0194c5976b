"""Test support for code built on deepprune-lc: standard-suite settings, conformance suites, fakes.

Like langchain-tests, this package is for test code only: it needs pytest.

* ``BackendConformanceTests`` / ``JudgeConformanceTests``: the ``GenerationBackend`` and ``Judge``
  contracts as pytest classes; a backend's or judge's tests subclass them in a few lines.
* ``fakes``: fake judges (``ConstantJudge``, ``ScriptedJudge``, ``FailingJudge``, ``SlowJudge``)
  and fault-injecting backend wrappers (``FailingBackend``, ``DeafBackend``).
* The settings the reasoner declares to langchain-tests' standard suites.
"""

from deepprune_lc.langchain.standard_suites import (
    IntegrationSuiteSettings,
    SuiteCapabilities,
    UnitSuiteSettings,
    small_engine_params,
)
from deepprune_lc.testing.backend_suite import FINISH_REASONS, BackendConformanceTests, StreamRecord
from deepprune_lc.testing.fakes import (
    ConstantJudge,
    DeafBackend,
    FailingBackend,
    FailingJudge,
    ScriptedJudge,
    SlowJudge,
)
from deepprune_lc.testing.judge_suite import JudgeConformanceTests

__all__ = [
    "FINISH_REASONS",
    "BackendConformanceTests",
    "ConstantJudge",
    "DeafBackend",
    "FailingBackend",
    "FailingJudge",
    "IntegrationSuiteSettings",
    "JudgeConformanceTests",
    "ScriptedJudge",
    "SlowJudge",
    "StreamRecord",
    "SuiteCapabilities",
    "UnitSuiteSettings",
    "small_engine_params",
]
