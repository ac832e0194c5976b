"""LangChain's standard unit tests for ``DeepPruneReasoner`` (langchain-tests ``ChatModelUnitTests``).

The model runs on the replay backend over the embedded demo pool, so no engine or network is needed.
It is built from spec strings, as users write it, so the suite's ``test_serdes`` round-trips it
through ``dumpd``/``load`` (the unit suite never calls the model, so no ``fallback_problem`` is
needed). The capability answers (and the one documented xfail) are ``deepprune_lc.testing``'s,
shared with the engines' suites.
"""

from __future__ import annotations

from typing import Any

from langchain_tests.unit_tests import ChatModelUnitTests

from deepprune_lc.core.config import PruningConfig, TokensPrefix
from deepprune_lc.testing import UnitSuiteSettings


class TestDeepPruneReasonerStandard(UnitSuiteSettings, ChatModelUnitTests):
    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {
            "backend": "replay:demo",
            "judge": "lexical",
            "pruning": PruningConfig(n_traces=8, prefix=TokensPrefix(k=40), finalists=3),
        }
