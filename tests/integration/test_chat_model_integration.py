"""LangChain's standard integration tests for ``DeepPruneReasoner`` on the replay backend.

The whole chat-model surface (invoke, stream, batch, usage, events) over the embedded demo pool,
with ``fallback_problem`` so the suite's arbitrary prompts ("Hello", "What's 2+2?") get an answer; the
module runs in a few seconds. The same suite runs on the real engines in
``integrations/transformers/tests`` and ``integrations/vllm/tests``.
"""

from __future__ import annotations

from typing import Any

from langchain_tests.integration_tests import ChatModelIntegrationTests

from deepprune_lc.backends.replay import ReplayBackend
from deepprune_lc.core.config import PruningConfig, TokensPrefix
from deepprune_lc.demo import load_demo_pool
from deepprune_lc.testing import IntegrationSuiteSettings


class TestDeepPruneReasonerIntegration(IntegrationSuiteSettings, ChatModelIntegrationTests):
    usage_question = load_demo_pool().by_id("demo-bakery").problem

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {
            "backend": ReplayBackend(
                load_demo_pool(), yield_every=1, fallback_problem="demo-bakery"
            ),
            "judge": "lexical",
            "pruning": PruningConfig(n_traces=8, prefix=TokensPrefix(k=40), finalists=3),
        }
