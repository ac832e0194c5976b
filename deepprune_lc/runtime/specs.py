"""Backends and judges named by strings, so the common case is one line.

``"replay:<pool.jsonl>"`` and ``"replay:demo"`` ship in the core; ``"vllm:<model>"`` and
``"transformers:<model>"`` come from the integration packages, imported only when named. Engines are
shared: every reasoner (and every call) naming the same spec gets the same backend object.
"""

from __future__ import annotations

import importlib
import threading
from typing import Any

from deepprune_lc.core.ports import GenerationBackend, Judge

#: kind -> (module, factory function, distribution to install)
BACKEND_KINDS: dict[str, tuple[str, str, str]] = {
    "vllm": ("deepprune_vllm", "backend_from_spec", "deepprune-vllm"),
    "transformers": ("deepprune_transformers", "backend_from_spec", "deepprune-transformers"),
}
JUDGE_KINDS: dict[str, tuple[str, str, str]] = {
    "vllm": ("deepprune_vllm", "judge_from_spec", "deepprune-vllm"),
    "embedding": ("deepprune_transformers", "embedding_judge_from_spec", "deepprune-transformers"),
    "transformers": ("deepprune_transformers", "judge_from_spec", "deepprune-transformers"),
}

_lock = threading.Lock()
_backends: dict[str, GenerationBackend] = {}
_judges: dict[str, Judge] = {}


def check_backend_spec(spec: object) -> None:
    """Validate without loading anything (constructors must stay cheap)."""
    if isinstance(spec, GenerationBackend):
        return
    if not isinstance(spec, str):
        raise ValueError(
            f"backend: expected a GenerationBackend or a string such as 'vllm:<model>', "
            f"got {type(spec).__name__}"
        )
    kind, _, arg = spec.partition(":")
    if kind not in {"replay", *BACKEND_KINDS} or not arg:
        kinds = ", ".join(f"'{k}:...'" for k in ("replay", *BACKEND_KINDS))
        raise ValueError(f"backend: unknown spec {spec!r}; expected one of {kinds}")


def check_judge_spec(spec: object) -> None:
    if isinstance(spec, Judge):
        return
    if not isinstance(spec, str):
        raise ValueError(f"judge: expected a Judge or a string, got {type(spec).__name__}")
    kind, _, arg = spec.partition(":")
    if spec == "lexical" or spec == "embedding" or (kind in JUDGE_KINDS and arg):
        return
    raise ValueError(
        f"judge: unknown spec {spec!r}; expected 'lexical', 'embedding', 'embedding:<model>', "
        "'vllm:<model>' or 'transformers:<model>'"
    )


def _from_integration(kinds: dict[str, tuple[str, str, str]], spec: str, what: str) -> Any:
    kind, _, arg = spec.partition(":")
    module_name, factory, distribution = kinds[kind]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ImportError(
            f"{what} {spec!r} needs the {distribution} package: pip install {distribution}"
        ) from exc
    make = getattr(module, factory, None)
    if make is None:
        raise NotImplementedError(
            f"{what} {spec!r}: the installed {distribution} does not provide it "
            f"({module_name}.{factory} is missing)"
        )
    return make(arg)


def resolve_backend(spec: GenerationBackend | str) -> GenerationBackend:
    """The backend a spec names, created once and shared."""
    check_backend_spec(spec)
    if not isinstance(spec, str):
        return spec
    with _lock:
        backend = _backends.get(spec)
        if backend is None:
            kind, _, arg = spec.partition(":")
            if kind == "replay":
                from deepprune_lc.backends.pool import load_trace_pool
                from deepprune_lc.backends.replay import ReplayBackend
                from deepprune_lc.demo import load_demo_pool

                pool = load_demo_pool() if arg == "demo" else load_trace_pool(arg)
                backend = ReplayBackend(pool, yield_every=1)
            else:
                backend = _from_integration(BACKEND_KINDS, spec, "backend")
            _backends[spec] = backend
        return backend


def resolve_judge(spec: Judge | str) -> Judge:
    """The judge a spec names, created once and shared."""
    check_judge_spec(spec)
    if not isinstance(spec, str):
        return spec
    with _lock:
        judge = _judges.get(spec)
        if judge is None:
            if spec == "lexical":
                from deepprune_lc.judges.lexical import LexicalJudge

                judge = LexicalJudge()
            else:
                judge = _from_integration(JUDGE_KINDS, spec if ":" in spec else f"{spec}:", "judge")
            _judges[spec] = judge
        return judge
