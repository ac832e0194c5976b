"""LangChain's standard chat-model parameters, taken flat and folded into DeepPrune's configs."""

from __future__ import annotations

from typing import Any

from langchain_core.language_models import BaseChatModel
from pydantic import BaseModel

from deepprune_lc.core.config import PruningConfig, SamplingConfig

__all__ = ["fold_standard_parameters"]

#: LangChain's standard sampling parameters, accepted flat and folded into ``sampling``.
_SAMPLING_SHORTCUTS = ("temperature", "top_p", "top_k", "max_tokens", "stop")
#: Parameters generic LangChain tooling passes to every chat model, meaningless here: a local engine
#: has no client to retry or authenticate, and the answer is one chunk whether streamed or not.
_DROPPED_CLIENT_PARAMS = ("max_retries", "api_key", "streaming")
_STANDARD_PARAMS = frozenset({*_SAMPLING_SHORTCUTS, *_DROPPED_CLIENT_PARAMS, "timeout"})


def fold_standard_parameters(model: type[BaseChatModel], data: Any) -> Any:
    """Take LangChain's standard chat-model parameters flat; refuse any other unknown name.

    ``temperature``, ``top_p``, ``top_k``, ``max_tokens`` and ``stop`` set the matching
    ``sampling`` fields and ``timeout`` sets ``pruning.deadline_s`` (the run's wall-clock
    budget: at the deadline running traces are aborted and the finished ones vote). Flat values
    win over the same fields of an explicit config. ``max_retries``, ``api_key`` and
    ``streaming``, which generic LangChain tooling passes to any chat model, mean nothing here
    and are dropped. Anything else is an error that names the argument, so ``n_traces=32`` is not
    silently ignored (pydantic would drop it).
    """
    if not isinstance(data, dict):
        return data
    _refuse_unknown_arguments(model, data)
    data = {k: v for k, v in data.items() if k not in _DROPPED_CLIENT_PARAMS}
    if data.get("timeout") is not None:
        data = _fold(data, "pruning", PruningConfig, {"deadline_s": data["timeout"]})
    data.pop("timeout", None)
    flat = {k: data[k] for k in _SAMPLING_SHORTCUTS if data.get(k) is not None}
    if "stop" in flat:
        stop = flat["stop"]
        flat["stop"] = (stop,) if isinstance(stop, str) else tuple(stop)
    data = {k: v for k, v in data.items() if k not in _SAMPLING_SHORTCUTS}
    return _fold(data, "sampling", SamplingConfig, flat) if flat else data


def _refuse_unknown_arguments(model: type[BaseChatModel], data: dict[str, Any]) -> None:
    known = set(model.model_fields) | {
        f.alias for f in model.model_fields.values() if f.alias is not None
    }
    unknown = sorted(k for k in data if k not in known and k not in _STANDARD_PARAMS)
    if not unknown:
        return
    hints = [
        f"{name} is a {config.__name__} setting: pass {field}={config.__name__}({name}=...)"
        for name in unknown
        for field, config in (("pruning", PruningConfig), ("sampling", SamplingConfig))
        if name in config.model_fields
    ]
    detail = f" ({'; '.join(hints)})" if hints else ""
    raise ValueError(f"DeepPruneReasoner got unknown arguments {unknown}{detail}")


def _fold(data: dict[str, Any], key: str, config: type[BaseModel], values: dict[str, Any]) -> Any:
    """``data`` with ``values`` laid over its ``key`` config (an object, a dict or absent)."""
    current = data.get(key)
    if not isinstance(current, config | dict | None):
        return data  # a bad config, which field validation will report
    base = current.model_dump() if isinstance(current, BaseModel) else (current or {})
    return {**data, key: {**base, **values}}
