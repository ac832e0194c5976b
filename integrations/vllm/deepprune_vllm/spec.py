"""``"vllm:<model>?<engine args>"`` specs, as ``deepprune_lc.runtime.specs`` resolves them."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl

from deepprune_vllm.backend import VLLMBackend
from deepprune_vllm.judge import VLLMJudge

__all__ = ["backend_from_spec", "judge_from_spec", "parse_spec"]

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


def parse_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``"model?key=value&..."`` -> (model, keyword arguments for ``VLLMBackend``).

    Values are read as booleans (``true``/``false``), ``none``, integers, floats or strings.
    """
    model, _, query = spec.partition("?")
    if not model.strip():
        raise ValueError(f"vllm spec: no model in {spec!r}")
    kwargs: dict[str, Any] = {}
    for key, value in parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query)):
        if key in kwargs:
            raise ValueError(f"vllm spec: {key!r} given twice in {spec!r}")
        kwargs[key] = _scalar(value)
    return model, kwargs


def backend_from_spec(spec: str) -> VLLMBackend:
    """The backend for ``"vllm:<spec>"``; its engine is shared with every equal spec or backend."""
    model, kwargs = parse_spec(spec)
    backend_kwargs = {key: kwargs.pop(key) for key in _BACKEND_KEYS if key in kwargs}
    return VLLMBackend(model, **backend_kwargs, **kwargs)


def judge_from_spec(spec: str) -> VLLMJudge:
    """The judge for a ``"vllm:<judge model>?<engine args>"`` judge spec (engine shared)."""
    model, kwargs = parse_spec(spec)
    return VLLMJudge(model, **kwargs)
