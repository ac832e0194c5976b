"""LangChain's standard suites for ``DeepPruneReasoner`` on a vLLM server, through the string users
write: ``backend="vllm-server:http://127.0.0.1:<port>/v1?model=tiny-reasoner&tokenizer=<dir>"``.

The server is the session's ``vllm serve`` (CPU build, the tiny trained Qwen2), so every call
really streams, parks and resumes traces over HTTP; sync calls run on DeepPrune's background loop
and async ones on each test's own loop (the backend keeps one connection pool per loop).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from deepprune_vllm import VLLMServerBackend
from langchain_tests.integration_tests import ChatModelIntegrationTests
from langchain_tests.unit_tests import ChatModelUnitTests
from vllm_servers import (  # noqa: F401 - fixtures
    VLLMServerProcess,
    server_spec,
    vllm_server_fixture,
    vllm_server_pool_fixture,
)

from deepprune_lc.runtime import resolve_backend
from deepprune_lc.testing import (
    IntegrationSuiteSettings,
    UnitSuiteSettings,
    small_engine_params,
)

if TYPE_CHECKING:
    from syrupy.assertion import SnapshotAssertion

#: The parts of a server spec that change from run to run: the URL's port, the tokenizer's path.
_SERVER_URLS = re.compile(r"^vllm-server:[^?]*")
_TOKENIZER_PATH = re.compile(r"tokenizer=[^&]*")


def _server_spec_placeholders(*, data: Any, path: Any) -> Any:
    if isinstance(data, str):
        data = _SERVER_URLS.sub("vllm-server:<server url>", data)
        return _TOKENIZER_PATH.sub("tokenizer=<local path>", data)
    return data


class _OnSessionServer:
    spec: str | None = None

    @pytest.fixture(autouse=True)
    def _spec(self, tiny_model_dir: Path, vllm_server: VLLMServerProcess) -> None:
        spec = server_spec(vllm_server.url, tiny_model_dir)
        assert isinstance(resolve_backend(spec), VLLMServerBackend)
        type(self).spec = spec

    @property
    def chat_model_params(self) -> dict[str, Any]:
        assert self.spec is not None, "the _spec fixture sets it"
        return small_engine_params(self.spec)


class TestVLLMServerReasonerUnit(_OnSessionServer, UnitSuiteSettings, ChatModelUnitTests):
    @pytest.fixture
    def snapshot(self, snapshot: SnapshotAssertion) -> SnapshotAssertion:
        """The serialised form with the server's URL and the tokenizer's path as placeholders."""
        return snapshot.with_defaults(matcher=_server_spec_placeholders)


class TestVLLMServerReasonerIntegration(
    _OnSessionServer, IntegrationSuiteSettings, ChatModelIntegrationTests
):
    pass
