"""Test support for code built on deepprune-lc: standard-suite settings, conformance suites, fakes.

Like langchain-tests, this package is for test code only: it needs pytest.
"""

from deepprune_lc.langchain.standard_suites import (
    IntegrationSuiteSettings,
    SuiteCapabilities,
    UnitSuiteSettings,
    small_engine_params,
)

__all__ = [
    "IntegrationSuiteSettings",
    "SuiteCapabilities",
    "UnitSuiteSettings",
    "small_engine_params",
]
