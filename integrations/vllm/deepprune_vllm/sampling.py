"""``SamplingConfig`` (+ checked extras) -> vLLM ``SamplingParams`` for one trace.

Why validate here: ``SamplingParams`` is a permissive struct, and a misspelt extra (``ignore_eso``)
would otherwise be dropped or fail deep inside a running engine, mid-run. Unknown names are an error
at backend construction, naming the culprit; values are checked by building a trial
``SamplingParams`` then too.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from deepprune_lc.core import SamplingConfig
from deepprune_vllm.engine import _unknown_names_message

if TYPE_CHECKING:
    from vllm import SamplingParams

__all__ = [
    "MANAGED_SAMPLING_PARAMS",
    "build_sampling_params",
    "check_sampling_overrides",
    "sampling_param_names",
    "trace_seed",
]

#: Fields that come from ``SamplingConfig`` (one source of truth per run).
_CONFIG_FIELDS = ("temperature", "top_p", "top_k", "max_tokens", "stop")

#: Fields the backend sets itself, and why they cannot be overridden.
MANAGED_SAMPLING_PARAMS: dict[str, str] = {
    **{name: f"set it through SamplingConfig.{name}" for name in _CONFIG_FIELDS},
    "seed": "each trace gets its own seed from the run (TraceRequest.seed)",
    "n": "every trace is its own request (n is always 1)",
    "output_kind": "the backend streams deltas",
    "logprobs": "use VLLMBackend(logprobs=k)",
    "detokenize": "the driver needs text to find prefixes and answers",
}

_SEED_MASK = (1 << 63) - 1
_GOLDEN = 0x9E3779B97F4A7C15


@lru_cache(maxsize=1)
def sampling_param_names() -> frozenset[str]:
    """Public fields of vLLM's ``SamplingParams``."""
    from vllm import SamplingParams

    return frozenset(n for n in SamplingParams.__struct_fields__ if not n.startswith("_"))


def check_sampling_overrides(overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """Validate extra ``SamplingParams`` fields (e.g. ``ignore_eos``, ``min_p``); return a copy."""
    extras = dict(overrides or {})
    if not extras:
        return extras
    known = sampling_param_names()
    unknown = sorted(name for name in extras if name not in known)
    if unknown:
        raise ValueError(
            _unknown_names_message("vLLM sampling parameter(s)", unknown, known)
            + " (see vllm.SamplingParams)"
        )
    managed = sorted(name for name in extras if name in MANAGED_SAMPLING_PARAMS)
    if managed:
        reasons = "; ".join(f"{name}: {MANAGED_SAMPLING_PARAMS[name]}" for name in managed)
        raise ValueError(f"sampling_overrides may not set {managed}: {reasons}")
    from vllm import SamplingParams

    try:
        SamplingParams(**extras)  # values checked now, not mid-run
    except Exception as exc:
        raise ValueError(f"sampling_overrides: {exc}") from exc
    return extras


def trace_seed(seed: int, resumed_tokens: int) -> int:
    """The request seed: the trace's own seed, mixed with the resume point when resuming.

    A resumed request restarts vLLM's per-request generator; with the unchanged seed it would replay
    the random draws that produced the trace's first tokens. Mixing in the resume length keeps the
    continuation independent of them while staying reproducible.
    """
    if resumed_tokens:
        seed ^= resumed_tokens * _GOLDEN
    return seed & _SEED_MASK


def build_sampling_params(
    config: SamplingConfig,
    *,
    seed: int,
    resumed_tokens: int = 0,
    logprobs: int | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> SamplingParams:
    """Parameters for one request; ``max_tokens`` (and ``min_tokens``) count resumed tokens.

    ``SamplingConfig.max_tokens`` bounds the whole trace, so a trace resumed after ``r`` tokens may
    generate ``max_tokens - r`` more (callers skip the request when that is not positive).
    ``max_tokens=None`` is left to vLLM, which then decodes to the end of the context window
    (``max_model_len`` minus the prompt) and finishes the request with "length".
    ``top_k=-1`` (disabled) becomes vLLM's ``0``.
    """
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    extras = dict(overrides or {})
    if resumed_tokens and extras.get("min_tokens"):
        extras["min_tokens"] = max(0, int(extras["min_tokens"]) - resumed_tokens)
    try:
        return SamplingParams(
            **extras,
            temperature=config.temperature,
            top_p=config.top_p,
            top_k=0 if config.top_k == -1 else config.top_k,
            max_tokens=None if config.max_tokens is None else config.max_tokens - resumed_tokens,
            stop=list(config.stop) or None,
            seed=trace_seed(seed, resumed_tokens),
            n=1,
            logprobs=logprobs,
            output_kind=RequestOutputKind.DELTA,
        )
    except Exception as exc:
        # vLLM's bounds are narrower than SamplingConfig's (temperature <= 2): say which applies.
        raise ValueError(f"sampling: vLLM rejected {config!r}: {exc}") from exc
