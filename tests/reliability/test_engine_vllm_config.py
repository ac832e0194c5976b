"""The engine arguments a vLLM engine is built with on this platform (no engine starts).

On the CPU build a split prefill of a seeded request kills the engine (``deepprune_vllm.engine``),
so chunked prefill is off there unless the caller sets it.
"""

from __future__ import annotations

import pytest

pytest.importorskip("vllm")

from deepprune_vllm.engine import platform_engine_args
from vllm.platforms import current_platform


def test_cpu_build_turns_chunked_prefill_off_unless_set() -> None:
    args = {"model": "m", "max_model_len": 1024}
    built = platform_engine_args(args)
    if current_platform.is_cpu():
        assert built == {**args, "enable_chunked_prefill": False}
    else:
        assert built == args
    assert args == {"model": "m", "max_model_len": 1024}  # the caller's mapping is not changed
    explicit = {"model": "m", "enable_chunked_prefill": True}
    assert platform_engine_args(explicit) == explicit
