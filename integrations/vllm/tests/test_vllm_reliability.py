"""Reliability of ``VLLMBackend`` on a real engine (CPU build, tiny trained Qwen2).

Faults that only a loaded or a dying engine shows: a wave of seeded prompts larger than one step's
token budget (the CPU build cannot rewind the generator of a request whose prefill is split), the
engine-core process killed mid-run (the engine is rebuilt on the next use), a token budget beyond
what vLLM can serialise, and a prompt that is not valid text. This module builds its own engine
(other arguments than the session's), so killing it leaves the other tests' engine alone.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from deepprune_vllm import VLLMBackend
from vllm_helpers import ENGINE_KWARGS, QUESTION

from deepprune_lc import SamplingConfig, TraceRequest
from deepprune_lc.core import BackendDeadError

#: Its own engine: one more sequence slot than the session engine's default would make no
#: difference to the model, but a different key gives this module a separate engine.
RELIABILITY_KWARGS = {**ENGINE_KWARGS, "max_num_seqs": 48}
_ids = itertools.count()


@pytest.fixture(scope="module")
def backend(tiny_model_dir: Path) -> Iterator[VLLMBackend]:
    backend = VLLMBackend(str(tiny_model_dir), **RELIABILITY_KWARGS)
    backend.start(timeout=900)  # a loaded 2-core machine
    yield backend
    backend.shutdown()


def request(prompt: object, *, max_tokens: int = 8, seed: int = 0) -> TraceRequest:
    return TraceRequest(
        request_id=f"rel-{next(_ids)}",
        trace_index=0,
        prompt=prompt,  # type: ignore[arg-type]
        sampling=SamplingConfig(temperature=1.0, top_p=1.0, max_tokens=max_tokens),
        seed=seed,
    )


async def drain(backend: VLLMBackend, req: TraceRequest) -> tuple[list[int], str | None]:
    ids: list[int] = []
    finish = None
    async for delta in backend.stream(req):
        ids.extend(delta.token_ids)
        if delta.finish_reason is not None:
            finish = delta.finish_reason
    return ids, finish


async def settle(backend: VLLMBackend, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        live = backend.live_requests()
        busy = await backend.core_has_work()
        if not live and not busy:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"engine still busy: live={live}, core_has_work={busy}")
        await asyncio.sleep(0.05)


def long_prompt(i: int) -> list[dict[str, str]]:
    """A distinct ~300-token chat prompt (distinct from its first token: no shared prefix)."""
    filler = " ".join(f"step {i}-{k} of the careful reasoning" for k in range(40))
    return [{"role": "user", "content": f"{i} {filler} {QUESTION}"}]


async def test_a_wave_of_seeded_prompts_beyond_one_step_does_not_kill_the_engine(
    backend: VLLMBackend,
) -> None:
    """24 seeded traces of ~300 prompt tokens each: far more than one step's token budget.

    With chunked prefill (vLLM's default) the scheduler splits the prefill that does not fit, and
    the model runner then rewinds that request's seeded generator, which the CPU build's generator
    cannot do: the engine-core process died and every later request failed.
    """
    prompts = [long_prompt(i) for i in range(24)]
    assert sum(backend.count_prompt_tokens(p) for p in prompts) > 4 * 2048
    results = await asyncio.gather(
        *(drain(backend, request(p, seed=1000 + i)) for i, p in enumerate(prompts))
    )
    assert all(len(ids) > 0 and finish in ("stop", "length") for ids, finish in results)
    # The engine is still alive for the next request.
    ids, finish = await drain(backend, request([{"role": "user", "content": QUESTION}]))
    assert ids and finish in ("stop", "length")
    await settle(backend)


def _engine_core_pids(backend: VLLMBackend) -> list[int]:
    engine = backend.engine.engine_nowait()
    assert engine is not None
    manager = engine.engine_core.resources.engine_manager
    return [proc.pid for proc in manager.processes if proc.pid is not None]


async def test_a_killed_engine_is_reported_then_rebuilt_on_the_next_use(
    backend: VLLMBackend, tiny_model_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """SIGKILL the engine-core process mid-stream: that stream fails as BackendDeadError, and the
    next request is served by a new engine (logged), instead of failing until shutdown()."""
    await backend.astart()
    first = backend.engine.engine_nowait()
    pids = _engine_core_pids(backend)
    assert pids
    # Same engine, end-of-sequence ignored: the stream is still running when the process dies.
    eos_free = VLLMBackend(
        str(tiny_model_dir), sampling_overrides={"ignore_eos": True}, **RELIABILITY_KWARGS
    )
    assert eos_free.engine is backend.engine
    stream = eos_free.stream(request([{"role": "user", "content": QUESTION}], max_tokens=900))
    await stream.__anext__()  # the request is running
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    with pytest.raises(BackendDeadError):
        async for _ in stream:
            pass
    with caplog.at_level(logging.WARNING, logger="deepprune_vllm.engine"):
        ids, finish = await drain(backend, request([{"role": "user", "content": QUESTION}]))
    assert ids and finish in ("stop", "length")
    assert backend.engine.engine_nowait() is not first
    assert any("restart" in r.getMessage() for r in caplog.records)
    await settle(backend)


async def test_a_token_budget_beyond_vllm_is_bounded_and_leaves_nothing_behind(
    backend: VLLMBackend,
) -> None:
    """max_tokens=10**30 overflowed vLLM's serialiser and left the request in its table for good.

    SamplingConfig refuses such a value now; the backend caps the budget at the room the prompt
    leaves anyway, for a request built without validation (``model_construct``: the one way to
    hand the backend what the config would refuse).
    """
    req = request([{"role": "user", "content": QUESTION}])
    unchecked = SamplingConfig.model_construct(
        **{**req.sampling.model_dump(), "max_tokens": 10**30}
    )
    huge = TraceRequest(req.request_id, 0, req.prompt, unchecked, seed=0)
    ids, finish = await drain(backend, huge)
    assert ids and finish in ("stop", "length")
    await settle(backend)


async def test_a_lone_surrogate_in_the_prompt_is_a_clear_error(backend: VLLMBackend) -> None:
    """A lone surrogate cannot be encoded: named as such, not a TypeError from the tokenizer."""
    with pytest.raises(ValueError, match="surrogate"):
        await drain(backend, request([{"role": "user", "content": "What is 2+2? \ud800"}]))
    with pytest.raises(ValueError, match="surrogate"):
        backend.count_prompt_tokens("plain \udfff text")
    await settle(backend)
