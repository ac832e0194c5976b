"""``"vllm:<model>?<engine args>"`` specs: the factories that the ``vllm`` entry points name.

``deepprune_lc.runtime.registry`` parses the spec string (one grammar for every kind) and calls
``backend_from_spec`` / ``judge_from_spec`` with the ``Spec``; its options are engine arguments
(``max_model_len=8192``), plus ``logprobs`` and ``model_name`` for the backend itself.
"""

from __future__ import annotations

from typing import Any

from deepprune_lc.core import Spec, SpecError
from deepprune_vllm.backend import VLLMBackend
from deepprune_vllm.judge import VLLMJudge

__all__ = ["backend_from_spec", "judge_from_spec", "spec_arguments"]

#: Spec keys that configure the backend rather than the engine.
_BACKEND_KEYS = ("logprobs", "model_name")


def _scalar(text: str) -> Any:
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def spec_arguments(spec: Spec) -> tuple[str, dict[str, Any]]:
    """``vllm:<model>?key=value&...`` -> (model, keyword arguments for ``VLLMBackend``).

    Option values are read as booleans (``true``/``false``), ``none``, integers, floats or strings;
    unknown engine arguments are ``VLLMBackend``'s to reject (it names the closest real one).
    """
    if not spec.arg:
        raise SpecError(f"vllm spec {spec.raw!r}: no model; write 'vllm:<model>'")
    return spec.arg, {key: _scalar(value) for key, value in spec.options.items()}


def backend_from_spec(spec: Spec) -> VLLMBackend:
    """The backend for ``"vllm:<model>?..."``; its engine is shared with every equal spec or backend."""
    model, kwargs = spec_arguments(spec)
    backend_kwargs = {key: kwargs.pop(key) for key in _BACKEND_KEYS if key in kwargs}
    return VLLMBackend(model, **backend_kwargs, **kwargs)


def judge_from_spec(spec: Spec) -> VLLMJudge:
    """The judge for a ``"vllm:<judge model>?<engine args>"`` judge spec (engine shared)."""
    model, kwargs = spec_arguments(spec)
    return VLLMJudge(model, **kwargs)
