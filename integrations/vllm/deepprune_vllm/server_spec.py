"""``"vllm-server:<url>[,<url>...]?model=...&..."`` specs: the factory the ``vllm-server`` entry point names.

Several servers are comma-separated in the argument (``vllm-server:http://a:8000/v1,http://b:8000/v1``):
the spec grammar keeps each option once (a key given twice is an error) and its options are
strings, so a list of URLs is one argument rather than repeated ``url=`` options. Options are the
``VLLMServerBackend`` keywords that have a plain string form; JSON-valued ones
(``sampling_overrides``, ``chat_template_kwargs``) are written as JSON. An API key is never part of
a spec (specs are logged and shared): name the environment variable that holds it,
``api_key_env=VLLM_API_KEY``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from deepprune_lc.core import Spec, SpecError
from deepprune_vllm.server import VLLMServerBackend

__all__ = ["SERVER_SPEC_OPTIONS", "server_backend_from_spec"]


def _int(text: str) -> int:
    return int(text)


def _float_or_none(text: str) -> float | None:
    return None if text.lower() in ("none", "null") else float(text)


def _bool_or_path(text: str) -> bool | str:
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    return text


def _json_object(text: str) -> dict[str, Any]:
    value = json.loads(text)
    if not isinstance(value, dict):
        raise ValueError("expected a JSON object")
    return value


#: Spec option -> how its string becomes the keyword argument.
SERVER_SPEC_OPTIONS: dict[str, Callable[[str], Any]] = {
    "model": str,
    "tokenizer": str,
    "model_name": str,
    "api_key_env": str,
    "logprobs": _int,
    "verify": _bool_or_path,
    "connect_timeout": float,
    "read_timeout": _float_or_none,
    "max_connections": _int,
    "affinity_limit": _int,
    "max_attempts": _int,
    "retry_deadline_s": _float_or_none,
    "retry_wait_s": float,
    "retry_max_wait_s": float,
    "max_resumes": _int,
    "down_for_s": float,
    "sampling_overrides": _json_object,
    "chat_template_kwargs": _json_object,
}


def server_backend_from_spec(spec: Spec) -> VLLMServerBackend:
    """The backend for ``"vllm-server:<url>[,<url>...]?model=<name>&tokenizer=<path>&..."``."""
    if not spec.arg:
        raise SpecError(
            f"vllm-server spec {spec.raw!r}: no URL; write "
            "'vllm-server:http://host:8000/v1?model=<served model>'"
        )
    urls = [part.strip() for part in spec.arg.split(",") if part.strip()]
    spec.check_options(SERVER_SPEC_OPTIONS)
    kwargs: dict[str, Any] = {}
    for key, text in spec.options.items():
        try:
            kwargs[key] = SERVER_SPEC_OPTIONS[key](text)
        except ValueError as exc:
            raise SpecError(f"vllm-server spec {spec.raw!r}: option {key}={text!r}: {exc}") from exc
    try:
        return VLLMServerBackend(urls, **kwargs)
    except ValueError as exc:
        raise SpecError(f"vllm-server spec {spec.raw!r}: {exc}") from exc
