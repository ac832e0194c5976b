"""LangChain's standard chat-model parameters: flat fields, per-call values, and DeepPrune's configs.

The reasoner takes LangChain's standard sampling parameters flat (``temperature``, ``top_p``,
``top_k``, ``max_tokens``, ``stop``) and ``timeout``, as real fields, the way langchain-openai and
langchain-ollama do, so that everything LangChain offers to change a model reaches them: a per-call
keyword (``model.invoke(q, temperature=0.2)``), ``bind(max_tokens=16)``,
``model_copy(update={"temperature": 0.1})`` and ``configurable_fields(temperature=...)``.

They are layered over DeepPrune's own configs, later layers winning, ``None`` meaning "not set":
``sampling`` / ``pruning`` < the flat fields < the call's values. ``timeout`` is the run's wall-clock
budget, ``pruning.deadline_s``. The merge happens at call time (``call_configs``) and is validated
there by the configs themselves, so a bad per-call value fails with the same rules as a bad
constructor value, before any engine work. At construction the flat values are also folded into
``sampling`` and ``pruning`` (``fold_standard_parameters``), so ``model.sampling`` shows what the
model was built with.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

from langchain_core.language_models import BaseChatModel
from pydantic import BaseModel, ValidationError

from deepprune_lc.core.config import PruningConfig, SamplingConfig

__all__ = [
    "CALL_PARAMETERS",
    "SAMPLING_PARAMETERS",
    "call_configs",
    "effective_settings",
    "fold_standard_parameters",
    "split_call_parameters",
]

#: LangChain's standard sampling parameters: reasoner fields, per-call keywords, ``sampling`` fields.
SAMPLING_PARAMETERS = ("temperature", "top_p", "top_k", "max_tokens", "stop")
#: What a call may set (``invoke`` keywords, ``bind``): the sampling parameters and the deadline.
CALL_PARAMETERS = frozenset({*SAMPLING_PARAMETERS, "timeout"})
#: Parameters generic LangChain tooling passes to every chat model, meaningless here: a local engine
#: has no client to retry or authenticate, and the answer is one chunk whether streamed or not.
_DROPPED_CLIENT_PARAMS = ("max_retries", "api_key", "streaming")

_Config = TypeVar("_Config", bound=BaseModel)
#: Config fields a call sets under another name.
_CALL_NAMES = {"deadline_s": "timeout"}


def fold_standard_parameters(model: type[BaseChatModel], data: Any) -> Any:
    """Construction: refuse unknown names, drop client-only ones, fold flat values into the configs.

    The flat fields keep their values (``model.temperature``) and are also laid over the matching
    ``sampling`` fields (``timeout`` over ``pruning.deadline_s``), so flat values win over the same
    fields of an explicit config and the configs validate them here, naming the field. ``max_retries``,
    ``api_key`` and ``streaming``, which generic LangChain tooling passes to any chat model, mean
    nothing here and are dropped. Anything else unknown is an error that names the argument, so
    ``n_traces=32`` is not silently ignored (pydantic would drop it).
    """
    if not isinstance(data, dict):
        return data
    _refuse_unknown_arguments(model, data)
    data = {k: v for k, v in data.items() if k not in _DROPPED_CLIENT_PARAMS}
    if data.get("timeout") is not None:
        data = _fold(data, "pruning", PruningConfig, {"deadline_s": data["timeout"]})
    flat = {k: data[k] for k in SAMPLING_PARAMETERS if data.get(k) is not None}
    if "stop" in flat:
        flat["stop"] = _as_stop(flat["stop"])
    return _fold(data, "sampling", SamplingConfig, flat) if flat else data


def split_call_parameters(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The call's standard parameters; ``TypeError`` naming any other keyword (as an API client does).

    ``None`` values mean "not set" (generic code passes ``temperature=None`` to mean the default).
    """
    unknown = sorted(k for k in kwargs if k not in CALL_PARAMETERS)
    if unknown:
        raise TypeError(
            f"DeepPruneReasoner got unexpected arguments: {unknown} (a call takes "
            f"{sorted(CALL_PARAMETERS)}; set anything else on the model or its configs)"
        )
    return {k: v for k, v in kwargs.items() if v is not None}


def call_configs(
    sampling: SamplingConfig, pruning: PruningConfig, *layers: Mapping[str, Any]
) -> tuple[SamplingConfig, PruningConfig]:
    """The run's configs: ``layers`` (flat fields, then the call's values) over the model's configs.

    Validated by ``SamplingConfig`` / ``PruningConfig``, so the rules are the constructor's; a bad
    value raises ``ValueError`` naming the parameter as the caller spelled it (``timeout``, not
    ``deadline_s``). When nothing differs the model's own config objects are returned as they are.
    """
    values = _layered(layers)
    sampling_updates = {
        k: values[k]
        for k in SAMPLING_PARAMETERS
        if k in values and values[k] != getattr(sampling, k)
    }
    pruning_updates = (
        {"deadline_s": values["timeout"]}
        if "timeout" in values and values["timeout"] != pruning.deadline_s
        else {}
    )
    return (
        _validated(SamplingConfig, sampling, sampling_updates),
        _validated(PruningConfig, pruning, pruning_updates),
    )


def effective_settings(
    sampling: SamplingConfig, pruning: PruningConfig, *layers: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """JSON-ready ``(sampling, pruning)`` with ``layers`` laid over them, *not* validated.

    For what LangChain reports before the call runs (tracing metadata, invocation params): the
    call's own validation (``call_configs``) raises for a bad value, and reporting must not.
    """
    values = _layered(layers)
    sampling_json = sampling.model_dump(mode="json")
    sampling_json.update({k: values[k] for k in SAMPLING_PARAMETERS if k in values})
    if isinstance(values.get("stop"), tuple):
        sampling_json["stop"] = list(values["stop"])
    pruning_json = pruning.model_dump(mode="json")
    if "timeout" in values:
        pruning_json["deadline_s"] = values["timeout"]
    return sampling_json, pruning_json


def _layered(layers: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The set (non-``None``) values of ``layers``, later ones winning; ``stop`` as a tuple."""
    values: dict[str, Any] = {}
    for layer in layers:
        values.update({k: v for k, v in layer.items() if k in CALL_PARAMETERS and v is not None})
    if "stop" in values:
        values["stop"] = _as_stop(values["stop"])
    return values


def _as_stop(stop: Any) -> Any:
    """A stop string or strings as the tuple ``SamplingConfig.stop`` holds (other values as given,
    for validation to report)."""
    if isinstance(stop, str):
        return (stop,)
    if isinstance(stop, list | tuple):
        return tuple(stop)
    return stop


def _validated(config: type[_Config], base: _Config, updates: Mapping[str, Any]) -> _Config:
    if not updates:
        return base
    try:
        # Only what was set: a default left unset stays a default (it may adapt per backend).
        return config.model_validate({**_set_fields(base), **updates})
    except ValidationError as exc:
        problems = "; ".join(_describe(error) for error in exc.errors())
        raise ValueError(f"DeepPruneReasoner call parameters: {problems}") from exc


def _set_fields(config: BaseModel) -> dict[str, Any]:
    """The fields the user set, as objects (not a recursive dump, which would drop nested
    discriminators such as a prefix policy's ``kind``)."""
    return {name: getattr(config, name) for name in config.model_fields_set}


def _describe(error: Any) -> str:
    """One pydantic error as ``name=value: message``, named as the caller passed it."""
    message = str(error["msg"]).removeprefix("Value error, ")
    if not error["loc"]:
        return message  # a model-level rule; its message names the field
    name = str(error["loc"][0])
    return f"{_CALL_NAMES.get(name, name)}={error.get('input')!r}: {message}"


def _refuse_unknown_arguments(model: type[BaseChatModel], data: dict[str, Any]) -> None:
    known = set(model.model_fields) | {
        f.alias for f in model.model_fields.values() if f.alias is not None
    }
    unknown = sorted(
        k for k in data if k not in known and k not in CALL_PARAMETERS | {*_DROPPED_CLIENT_PARAMS}
    )
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
    base = _set_fields(current) if isinstance(current, BaseModel) else (current or {})
    return {**data, key: {**base, **values}}
