"""Answer probes and the context-length budget on ``VLLMBackend`` (CPU build, tiny trained Qwen2,
the session engine with ``max_model_len=1024``).

The shared probe contract (a probed trace completes token-exact, bridged from pytest's loop;
unknown ids raise ``KeyError``) runs in test_vllm_conformance.py. Here: the probe on the engine
loop itself, what it costs (its prefill served by the prefix cache the running trace filled), its
answer cut at the box's closing brace, nothing left in the engine after it, and a trace with no
``max_tokens`` ending at the end of the context window with "length".
"""

from __future__ import annotations

import asyncio
import itertools

import pytest
from deepprune_vllm import VLLMBackend
from test_vllm_backend import CHAT, Collected, collect, direct, settle

from deepprune_lc import SamplingConfig, TraceRequest
from deepprune_lc.core.ports import AnswerProbing, ProbeReply

_ids = itertools.count()


def _request(*, max_tokens: int | None, resume: tuple[int, ...] = ()) -> TraceRequest:
    return TraceRequest(
        request_id=f"probe-test-{next(_ids)}",
        trace_index=0,
        prompt=CHAT,
        sampling=SamplingConfig(temperature=0.0, max_tokens=max_tokens),
        seed=0,
        resume_token_ids=resume,
    )


async def _probed(
    backend: VLLMBackend, req: TraceRequest, at: int, **probe: object
) -> tuple[Collected, ProbeReply, set[str]]:
    """Stream ``req``, probing once ``at`` tokens have arrived; also what was live meanwhile."""
    out = Collected()
    reply: ProbeReply | None = None
    live_during: set[str] = set()
    async for delta in backend.stream(req):
        out.ids.extend(delta.token_ids)
        out.text += delta.text
        if delta.finish_reason is not None:
            out.finish_reason = delta.finish_reason
            break
        if reply is None and len(out.ids) >= at:
            task = asyncio.ensure_future(backend.probe(req.request_id, **probe))  # type: ignore[arg-type]
            while not task.done():
                live_during |= backend.live_requests()
                await asyncio.sleep(0)
            reply = task.result()
    assert reply is not None
    return out, reply, live_during


def test_the_backend_answers_probes(vllm_backend: VLLMBackend) -> None:
    assert isinstance(vllm_backend, AnswerProbing)


async def test_a_probe_on_the_engine_loop_is_a_cached_request_of_its_own(
    vllm_backend: VLLMBackend,
) -> None:
    """Direct path: the probe runs beside the trace as its own request, mostly from the cache."""
    total = 48

    async def scenario() -> tuple[Collected, Collected, ProbeReply, set[str]]:
        whole = await collect(vllm_backend, _request(max_tokens=total))
        probed, reply, live = await _probed(
            vllm_backend,
            _request(max_tokens=total),
            20,
            suffix=" Therefore the answer is \\boxed{",
            max_tokens=10,
        )
        return whole, probed, reply, live

    whole, probed, reply, live = await asyncio.to_thread(direct, scenario)
    assert probed.ids == whole.ids and probed.finish_reason == whole.finish_reason
    assert reply.at_tokens >= 20
    # Its own request id, never the trace's; gone once answered.
    assert any("-probe-" in request_id for request_id in live), live
    # The trained words before the box: the model writes 42 and the brace closes the answer.
    assert reply.text == "42}", reply
    assert 1 <= reply.decoded_tokens < 10
    prompt = vllm_backend.count_prompt_tokens(CHAT)
    assert reply.prefill_tokens > prompt + reply.at_tokens
    await settle(vllm_backend)


async def test_a_probe_prefills_from_the_traces_cache(eos_free: VLLMBackend) -> None:
    """Probed 300 tokens in, the probe's prompt is mostly the trace's cached blocks."""
    before = eos_free.probe_stats.cached_tokens
    probed, reply, _ = await _probed(eos_free, _request(max_tokens=320), 300, max_tokens=4)
    assert probed.finish_reason == "length" and len(probed.ids) == 320
    cached = eos_free.probe_stats.cached_tokens - before
    assert 0 < cached < reply.prefill_tokens, (cached, reply.prefill_tokens)
    await settle(eos_free)


async def test_the_default_probe_and_its_budget(eos_free: VLLMBackend) -> None:
    probed, reply, _ = await _probed(eos_free, _request(max_tokens=40), 8, max_tokens=3)
    assert probed.finish_reason == "length" and len(probed.ids) == 40
    assert reply.decoded_tokens <= 3
    assert reply.unknown == (not reply.text.strip())
    with pytest.raises(KeyError):
        await eos_free.probe("probe-test-never")
    with pytest.raises(ValueError, match="max_tokens"):
        await eos_free.probe("anything", max_tokens=0)
    await settle(eos_free)


async def test_a_cancelled_probe_leaves_nothing_in_the_engine(eos_free: VLLMBackend) -> None:
    """A probe cancelled while vLLM runs it is aborted; the trace goes on untouched."""
    req = _request(max_tokens=120)
    out = Collected()
    cancelled = False
    async for delta in eos_free.stream(req):
        out.ids.extend(delta.token_ids)
        if delta.finish_reason is not None:
            out.finish_reason = delta.finish_reason
            break
        if cancelled or len(out.ids) < 5:
            continue
        task = asyncio.ensure_future(
            eos_free.probe(req.request_id, suffix=" and so", max_tokens=64)
        )
        while not task.done() and not any("-probe-" in r for r in eos_free.live_requests()):
            await asyncio.sleep(0)
        if task.done():
            continue  # answered before it could be caught running: try again on the next delta
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        cancelled = True
    assert cancelled
    assert out.finish_reason == "length" and len(out.ids) == 120
    await settle(eos_free)


async def test_no_max_tokens_runs_to_the_end_of_the_context(eos_free: VLLMBackend) -> None:
    """``max_tokens=None``: vLLM decodes to ``max_model_len`` and the trace ends with "length"."""
    assert eos_free.context_length() == 1024
    prompt = eos_free.count_prompt_tokens(CHAT)
    seed = await collect(eos_free, _request(max_tokens=8))
    filler = tuple(seed.ids[i % len(seed.ids)] for i in range(1024 - prompt - 5))
    near_end = await collect(eos_free, _request(max_tokens=None, resume=filler))
    assert (len(near_end.ids), near_end.finish_reason) == (5, "length")
    # Resumed at the very end of the context: nothing more to produce, ended with "length".
    full = filler + tuple(near_end.ids)
    at_end = await collect(eos_free, _request(max_tokens=None, resume=full))
    assert (at_end.ids, at_end.finish_reason) == ([], "length")
    await settle(eos_free)
