"""LangChain's standard integration tests for ``DeepPruneReasoner`` on the replay backend.

The real engines (vLLM, transformers) come from the integration packages; until then the suite runs
the whole chat-model surface (invoke, stream, batch, usage, events) over the embedded demo pool,
with ``fallback_problem`` so the suite's arbitrary prompts ("Hello", "What's 2+2?") get an answer.
The whole module runs in a few seconds.
"""

from __future__ import annotations

from typing import Any, Literal

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk
from langchain_tests.integration_tests import ChatModelIntegrationTests

from deepprune_lc.backends.replay import ReplayBackend
from deepprune_lc.chat_model import DeepPruneReasoner
from deepprune_lc.config import PruningConfig, TokensPrefix
from deepprune_lc.demo import load_demo_pool

UsageDetail = Literal[
    "audio_input", "audio_output", "reasoning_output", "cache_read_input", "cache_creation_input"
]


def _params() -> dict[str, Any]:
    return {
        "backend": ReplayBackend(load_demo_pool(), yield_every=1, fallback_problem="demo-bakery"),
        "judge": "lexical",
        "pruning": PruningConfig(n_traces=8, prefix=TokensPrefix(k=40), finalists=3),
    }


class TestDeepPruneReasonerIntegration(ChatModelIntegrationTests):
    @property
    def chat_model_class(self) -> type[BaseChatModel]:
        return DeepPruneReasoner

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return _params()

    # Capabilities DeepPruneReasoner does not have: it votes over free-form final answers.
    @property
    def has_tool_calling(self) -> bool:
        return False

    @property
    def has_tool_choice(self) -> bool:
        return False

    @property
    def has_structured_output(self) -> bool:
        return False

    @property
    def supports_json_mode(self) -> bool:
        return False

    @property
    def supports_model_override(self) -> bool:
        return False

    @property
    def returns_usage_metadata(self) -> bool:
        return True

    @property
    def supported_usage_metadata_details(
        self,
    ) -> dict[Literal["invoke", "stream"], list[UsageDetail]]:
        # Reasoning tokens (all decoded tokens but the answer's) and prompt tokens read from the
        # prefix cache (every trace after the first, plus resumed prefixes) are both reported.
        details: list[UsageDetail] = ["reasoning_output", "cache_read_input"]
        return {"invoke": details, "stream": details}

    def _demo_call(self, *, stream: bool) -> AIMessage:
        model = DeepPruneReasoner(**_params())
        question = load_demo_pool().by_id("demo-bakery").problem
        if not stream:
            return model.invoke(question)
        full: AIMessageChunk | None = None
        for chunk in model.stream(question):
            full = chunk if full is None else full + chunk
        assert full is not None
        return full

    def invoke_with_reasoning_output(self, *, stream: bool = False) -> AIMessage:
        message = self._demo_call(stream=stream)
        assert message.usage_metadata is not None
        assert message.usage_metadata["output_token_details"]["reasoning"] > 0
        return message

    def invoke_with_cache_read_input(self, *, stream: bool = False) -> AIMessage:
        message = self._demo_call(stream=stream)
        assert message.usage_metadata is not None
        assert message.usage_metadata["input_token_details"]["cache_read"] > 0
        return message
