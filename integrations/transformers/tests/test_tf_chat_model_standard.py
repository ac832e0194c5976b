"""LangChain's standard suites for ``DeepPruneReasoner`` on the transformers backend.

The one-line constructor users write, ``backend="transformers:<model dir>"``, on a real engine: the
tiny Qwen2 that ``build_tiny_reasoner`` trains in a few seconds, so its traces reach an answer
(``\\boxed{42}``) on the suite's arbitrary prompts too. Every trace really decodes in the batched loop;
pruned ones are parked and leave the batch. One backend serves the whole module (specs are shared).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from langchain_tests.integration_tests import ChatModelIntegrationTests
from langchain_tests.unit_tests import ChatModelUnitTests

from deepprune_lc.testing import (
    IntegrationSuiteSettings,
    UnitSuiteSettings,
    small_engine_params,
)


class _OnTinyReasoner:
    model_dir: Path | None = None

    @pytest.fixture(autouse=True)
    def _model_dir(self, tiny_reasoner_dir: Path) -> None:
        type(self).model_dir = tiny_reasoner_dir

    @property
    def chat_model_params(self) -> dict[str, Any]:
        assert self.model_dir is not None, "the tiny_reasoner_dir fixture sets it"
        return small_engine_params(f"transformers:{self.model_dir}")


class TestTransformersReasonerUnit(_OnTinyReasoner, UnitSuiteSettings, ChatModelUnitTests):
    pass


class TestTransformersReasonerIntegration(
    _OnTinyReasoner, IntegrationSuiteSettings, ChatModelIntegrationTests
):
    pass
