"""The ``Lifecycle`` port and the backend errors, on the replay backend and the engine adapters.

The engine parts need deepprune-transformers (a tiny model is built) and deepprune-vllm (its error
translation is checked with vLLM's own ``EngineDeadError``; no vLLM engine starts).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

import deepprune_lc
from deepprune_lc import ReplayBackend, SamplingConfig, TraceRequest
from deepprune_lc.core import (
    BackendDeadError,
    BackendError,
    DeepPruneError,
    GenerationError,
    Lifecycle,
)
from deepprune_lc.demo import load_demo_pool


def test_error_hierarchy_and_exports() -> None:
    assert issubclass(BackendDeadError, BackendError)
    assert issubclass(BackendError, GenerationError)
    assert issubclass(GenerationError, DeepPruneError)
    assert issubclass(DeepPruneError, RuntimeError)  # callers catching RuntimeError still do
    for name in ("BackendError", "BackendDeadError", "Lifecycle", "FinishReason"):
        assert name in deepprune_lc.__all__ and getattr(deepprune_lc, name) is not None


async def test_replay_backend_lifecycle_is_a_no_op() -> None:
    backend = ReplayBackend(load_demo_pool())
    assert isinstance(backend, Lifecycle)
    await backend.astart()
    await backend.astart()  # idempotent
    problem = backend.pool.problems[0]
    request = TraceRequest("r", 0, problem.problem, SamplingConfig(max_tokens=8), seed=0)
    deltas = [delta async for delta in backend.stream(request)]
    assert deltas[-1].finish_reason == "length"
    await backend.aclose()
    await backend.aclose()


def test_a_class_without_the_methods_is_not_a_lifecycle() -> None:
    class LoadsOnly:
        def load(self) -> None: ...

    assert not isinstance(LoadsOnly(), Lifecycle)


async def test_transformers_backend_lifecycle(tmp_path: Path) -> None:
    tf = pytest.importorskip("deepprune_transformers")
    from deepprune_transformers.testing import build_tiny_qwen2

    backend = tf.TransformersBackend(
        build_tiny_qwen2(tmp_path / "tiny"), ignore_eos=True, num_threads=1
    )
    assert isinstance(backend, Lifecycle)
    assert issubclass(tf.EngineError, BackendError)  # a failed forward pass is a backend error
    assert backend.engine_row_ids() == [] and backend._engine is None
    await backend.astart()
    assert backend._engine is not None  # loaded before the first request
    await backend.astart()
    request = TraceRequest("r", 0, "plain text", SamplingConfig(max_tokens=3), seed=0)
    assert len([d async for d in backend.stream(request)]) == 3
    await backend.aclose()
    assert backend._engine is None and backend._executor is None
    await backend.aclose()  # idempotent
    again = TraceRequest("r2", 0, "plain text", SamplingConfig(max_tokens=2), seed=0)
    assert len([d async for d in backend.stream(again)]) == 2  # loads again on use
    backend.close()


def test_vllm_backend_is_a_lifecycle() -> None:
    vllm_backend = pytest.importorskip("deepprune_vllm.backend")
    assert issubclass(vllm_backend.VLLMBackend, Lifecycle)


def test_vllm_failures_become_backend_errors() -> None:
    engine = pytest.importorskip("deepprune_vllm.engine")
    exceptions = pytest.importorskip("vllm.v1.engine.exceptions")

    dead_message = "request r1: the vLLM engine is dead"
    with (
        pytest.raises(BackendDeadError, match=dead_message) as dead,
        engine.engine_failures("request r1"),
    ):
        raise exceptions.EngineDeadError()
    assert isinstance(dead.value.__cause__, exceptions.EngineDeadError)

    failed_message = "request r2: vLLM failed"
    with (
        pytest.raises(BackendError, match=failed_message) as failed,
        engine.engine_failures("request r2"),
    ):
        raise exceptions.EngineGenerateError()
    assert not isinstance(failed.value, BackendDeadError)
    assert isinstance(failed.value.__cause__, exceptions.EngineGenerateError)

    ours = BackendError("already translated")
    with pytest.raises(BackendError) as passed, engine.engine_failures("request r3"):
        raise ours
    assert passed.value is ours

    with pytest.raises(asyncio.CancelledError), engine.engine_failures("request r4"):
        raise asyncio.CancelledError  # cancellation is not a failure


def test_vllm_finish_reasons() -> None:
    backend = pytest.importorskip("deepprune_vllm.backend")
    assert backend._finish_reason("stop", "r") == "stop"
    assert backend._finish_reason("length", "r") == "length"
    assert backend._finish_reason("abort", "r") == "abort"
    assert backend._finish_reason("repetition", "r") == "stop"  # vLLM's own stop rule
    with pytest.raises(BackendError, match="request r: vLLM finished it with 'error'"):
        backend._finish_reason("error", "r")


async def test_close_stream_closes_a_generator_and_accepts_any_iterator() -> None:
    from deepprune_lc.core import TraceDelta, close_stream

    closed: list[bool] = []

    async def deltas() -> Any:
        try:
            yield TraceDelta((1,), "a")
            yield TraceDelta((2,), "b")
        finally:
            closed.append(True)

    stream = deltas()
    assert (await stream.__anext__()).token_ids == (1,)
    await close_stream(stream)
    assert closed == [True]  # its cleanup (an engine's abort) ran now, not at collection

    class Plain:  # an AsyncIterator without aclose: nothing to close
        def __aiter__(self) -> Plain:
            return self

        async def __anext__(self) -> TraceDelta:
            raise StopAsyncIteration

    await close_stream(Plain())
    await close_stream(None)
