"""LangChain's standard unit tests for ``DeepPruneReasoner`` (langchain-tests ``ChatModelUnitTests``).

The model runs on the replay backend over the embedded demo pool, so no engine or network is needed;
``fallback_problem`` lets arbitrary prompts ("Hello") get an answer. The capability answers (and the
one documented xfail) are ``deepprune_lc.testing``'s, shared with the engines' suites.
"""

from __future__ import annotations

from typing import Any

from langchain_tests.unit_tests import ChatModelUnitTests

from deepprune_lc.backends.replay import ReplayBackend
from deepprune_lc.core.config import PruningConfig, TokensPrefix
from deepprune_lc.demo import load_demo_pool
from deepprune_lc.testing import UnitSuiteSettings


class TestDeepPruneReasonerStandard(UnitSuiteSettings, ChatModelUnitTests):
    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {
            "backend": ReplayBackend(
                load_demo_pool(), yield_every=1, fallback_problem="demo-bakery"
            ),
            "judge": "lexical",
            "pruning": PruningConfig(n_traces=8, prefix=TokensPrefix(k=40), finalists=3),
        }
