"""LangChain's standard suites for ``DeepPruneReasoner`` on vLLM (here its CPU build).

The one-line constructor users write, ``backend="vllm:<model>?<engine args>"``, with the engine
arguments of the session's engine, so the spec resolves to that same ``AsyncLLM`` (one engine start
for the whole test session). The model is the tiny Qwen2 trained to reason its way to ``\\boxed{42}``;
sync calls run on the shared background loop, async ones on each test's own loop, bridged to it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from deepprune_vllm import VLLMBackend
from langchain_tests.integration_tests import ChatModelIntegrationTests
from langchain_tests.unit_tests import ChatModelUnitTests
from vllm_helpers import ENGINE_KWARGS

from deepprune_lc.runtime import resolve_backend
from deepprune_lc.testing import (
    IntegrationSuiteSettings,
    UnitSuiteSettings,
    small_engine_params,
)


def engine_spec(model_dir: Path) -> str:
    query = urlencode({key: str(value).lower() for key, value in ENGINE_KWARGS.items()})
    return f"vllm:{model_dir}?{query}"


class _OnSessionEngine:
    spec: str | None = None

    @pytest.fixture(autouse=True)
    def _spec(self, tiny_model_dir: Path, vllm_backend: VLLMBackend) -> None:
        spec = engine_spec(tiny_model_dir)
        backend = resolve_backend(spec)
        assert isinstance(backend, VLLMBackend)
        assert backend.engine is vllm_backend.engine, "the spec must reuse the session's engine"
        type(self).spec = spec

    @property
    def chat_model_params(self) -> dict[str, Any]:
        assert self.spec is not None, "the _spec fixture sets it"
        return small_engine_params(self.spec)


class TestVLLMReasonerUnit(_OnSessionEngine, UnitSuiteSettings, ChatModelUnitTests):
    pass


class TestVLLMReasonerIntegration(
    _OnSessionEngine, IntegrationSuiteSettings, ChatModelIntegrationTests
):
    pass
