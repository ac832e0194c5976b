"""VLLMBackend on a real vLLM engine (CPU build, tiny trained Qwen2, one engine per session).

The contract every backend shares (concurrent streaming, exact parking, token-exact resume, budgets,
no request left behind) runs on pytest's loop, whose streams are *bridged* to the engine loop, in
test_vllm_conformance.py. Here: the same on the *direct* path (``run_sync`` on the engine loop
itself), and what only this backend has (logprobs, its chat-template tokenisation).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from deepprune_vllm import VLLMBackend
from vllm_helpers import ENGINE_KWARGS, QUESTION

from deepprune_lc import SamplingConfig, TraceRequest
from deepprune_lc.runtime.loop import run_sync

T = TypeVar("T")
CHAT = [{"role": "user", "content": QUESTION}]
_ids = itertools.count()


def request(
    *,
    max_tokens: int = 64,
    temperature: float = 1.0,
    seed: int = 0,
    resume: tuple[int, ...] = (),
    index: int = 0,
) -> TraceRequest:
    return TraceRequest(
        request_id=f"test-{next(_ids)}",
        trace_index=index,
        prompt=CHAT,
        sampling=SamplingConfig(temperature=temperature, top_p=1.0, max_tokens=max_tokens),
        seed=seed,
        resume_token_ids=resume,
    )


@dataclass
class Collected:
    """What a stream delivered, split at the abort call."""

    ids: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str | None = None
    deltas: int = 0
    after_abort: int = 0
    logprobs: list[list[float]] = field(default_factory=list)


async def collect(
    backend: VLLMBackend, req: TraceRequest, *, park_at: int | None = None
) -> Collected:
    """Consume a stream to its end, calling ``abort`` once ``park_at`` tokens have arrived."""
    out = Collected()
    aborted = False
    async for delta in backend.stream(req):
        out.deltas += 1
        out.ids.extend(delta.token_ids)
        out.text += delta.text
        if delta.logprobs is not None:
            out.logprobs.extend([list(row) for row in delta.logprobs])
        if aborted:
            out.after_abort += len(delta.token_ids)
        if delta.finish_reason is not None:
            out.finish_reason = delta.finish_reason
            break
        if park_at is not None and not aborted and len(out.ids) >= park_at:
            aborted = True
            await backend.abort(req.request_id)
    return out


async def settle(backend: VLLMBackend, timeout: float = 5.0) -> None:
    """Assert that nothing is left: not in vLLM's request table, not in the engine-core process."""
    deadline = time.monotonic() + timeout
    while True:
        live = backend.live_requests()
        busy = await backend.core_has_work()
        if not live and not busy:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"engine still busy: live={live}, core_has_work={busy}")
        await asyncio.sleep(0.05)


def direct(make: Callable[[], Awaitable[T]]) -> T:
    """Run on the engine loop itself (the path invoke/batch take)."""

    async def run() -> T:
        return await make()

    return run_sync(run())


async def test_direct_path_resumes_from_the_exact_ids(eos_free: VLLMBackend) -> None:
    """Token-exact resume on the engine loop itself (bridged: the shared suite's resume test)."""
    total = 60

    async def scenario() -> tuple[Collected, Collected, Collected]:
        whole = await collect(eos_free, request(max_tokens=total, temperature=0.0))
        parked = await collect(eos_free, request(max_tokens=total, temperature=0.0), park_at=12)
        resumed = await collect(
            eos_free, request(max_tokens=total, temperature=0.0, resume=tuple(parked.ids))
        )
        return whole, parked, resumed

    whole, parked, resumed = await asyncio.to_thread(direct, scenario)
    assert len(set(whole.ids)) > 5  # a real sequence, not one token repeated
    assert parked.finish_reason == "abort" and 12 <= len(parked.ids) < total
    # The resumed stream does not re-emit the parked ids and continues exactly where they end.
    assert parked.ids + resumed.ids == whole.ids
    assert resumed.finish_reason == "length" and len(resumed.ids) == total - len(parked.ids)
    await settle(eos_free)


def test_direct_path_parks_and_finishes_cleanly(eos_free: VLLMBackend) -> None:
    async def scenario() -> tuple[Collected, Collected, set[str]]:
        done = await collect(eos_free, request(max_tokens=20))
        parked = await collect(eos_free, request(max_tokens=200), park_at=5)
        await settle(eos_free)
        return done, parked, eos_free.live_requests()

    done, parked, live = direct(scenario)
    assert (len(done.ids), done.finish_reason) == (20, "length")
    assert parked.finish_reason == "abort" and parked.after_abort <= 8
    assert live == set()


async def test_top_k_logprobs_per_token(tiny_model_dir: Path, vllm_backend: VLLMBackend) -> None:
    backend = VLLMBackend(str(tiny_model_dir), logprobs=3, **ENGINE_KWARGS)
    assert backend.engine is vllm_backend.engine
    out = await collect(backend, request(max_tokens=12))
    assert len(out.logprobs) == len(out.ids) > 0
    for row in out.logprobs:
        assert len(row) == 3 and row == sorted(row, reverse=True) and all(v <= 0 for v in row)
    plain = await collect(vllm_backend, request(max_tokens=4))
    assert plain.logprobs == []  # only when asked for


def test_chat_prompts_use_the_chat_template(vllm_backend: VLLMBackend) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(vllm_backend.model)
    templated = tokenizer.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    assert templated.endswith("<|im_start|>assistant\n")
    expected = tokenizer.encode(templated, add_special_tokens=False)
    assert vllm_backend.prompt_token_ids(CHAT) == expected
    assert vllm_backend.count_prompt_tokens(CHAT) == len(expected)
    assert vllm_backend.prompt_token_ids("plain text") == tokenizer.encode("plain text")


async def test_the_model_answers_the_question(vllm_backend: VLLMBackend) -> None:
    out = await collect(vllm_backend, request(max_tokens=200, temperature=0.0))
    assert out.finish_reason == "stop"
    assert "\\boxed{42}" in out.text
