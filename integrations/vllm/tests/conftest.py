"""Fixtures for the vLLM integration tests: one tiny trained model and ONE engine per session.

vLLM reads its environment at import, so the CPU settings are set here, before any test module
imports it: a private cache directory and a 1 GiB KV cache (plenty for a 64-wide model).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("VLLM_CACHE_ROOT", tempfile.mkdtemp(prefix="deepprune-vllm-cache-"))
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from vllm_helpers import build_tiny_reasoner

    return build_tiny_reasoner(tmp_path_factory.mktemp("tiny-reasoner"))


@pytest.fixture(scope="session")
def vllm_backend(tiny_model_dir: Path) -> Iterator[object]:
    """The session's backend; its engine starts here (about 30 s) and is shut down at the end."""
    from deepprune_vllm import VLLMBackend
    from vllm_helpers import ENGINE_KWARGS

    backend = VLLMBackend(str(tiny_model_dir), **ENGINE_KWARGS)
    backend.start(timeout=300)
    yield backend
    backend.shutdown()


@pytest.fixture(scope="session")
def eos_free(tiny_model_dir: Path, vllm_backend: object) -> object:
    """A second backend on the SAME engine whose traces ignore end-of-sequence (fixed lengths)."""
    from deepprune_vllm import VLLMBackend
    from vllm_helpers import ENGINE_KWARGS

    backend = VLLMBackend(
        str(tiny_model_dir), sampling_overrides={"ignore_eos": True}, **ENGINE_KWARGS
    )
    assert backend.engine is vllm_backend.engine  # type: ignore[attr-defined]
    return backend
