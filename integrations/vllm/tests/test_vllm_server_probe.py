"""Answer probes and the context budget on ``VLLMServerBackend`` against a real ``vllm serve``
(CPU build, the tiny trained Qwen2, ``--max-model-len 1024``).

The shared probe contract (a probed trace completes token-exact, unknown ids raise ``KeyError``)
runs in test_vllm_server_conformance.py. Here: the answer cut at the box's brace with prompts
rendered locally and by the server, and a trace with no ``max_tokens`` ending at the end of the
server's context with "length".
"""

from __future__ import annotations

import contextlib
import itertools
from pathlib import Path

import pytest
from deepprune_vllm import VLLMServerBackend
from deepprune_vllm.server_protocol import completion_body
from vllm_helpers import QUESTION
from vllm_servers import (  # noqa: F401 - fixtures
    SERVED_MODEL,
    VLLMServerProcess,
    vllm_server_fixture,
    vllm_server_pool_fixture,
)

from deepprune_lc import SamplingConfig, TraceRequest
from deepprune_lc.core import ProbeReply, TraceDelta

CHAT = [{"role": "user", "content": QUESTION}]
_ids = itertools.count()


def _request(*, max_tokens: int | None, resume: tuple[int, ...] = ()) -> TraceRequest:
    return TraceRequest(
        request_id=f"server-probe-{next(_ids)}",
        trace_index=0,
        prompt=CHAT,
        sampling=SamplingConfig(temperature=0.0, max_tokens=max_tokens),
        seed=0,
        resume_token_ids=resume,
    )


async def _consume(
    backend: VLLMServerBackend,
    request: TraceRequest,
    *,
    probe_at: int | None = None,
    **probe: object,
) -> tuple[list[TraceDelta], ProbeReply | None]:
    deltas: list[TraceDelta] = []
    reply: ProbeReply | None = None
    count = 0
    async with contextlib.aclosing(backend.stream(request)) as stream:
        async for delta in stream:
            deltas.append(delta)
            count += len(delta.token_ids)
            due = probe_at is not None and reply is None and count >= probe_at
            if due and delta.finish_reason is None:
                reply = await backend.probe(request.request_id, **probe)  # type: ignore[arg-type]
    return deltas, reply


def test_no_max_tokens_leaves_it_to_the_server() -> None:
    body = completion_body(
        model="m",
        prompt_ids=[1, 2],
        sampling=SamplingConfig(),
        seed=0,
        resumed_tokens=0,
        max_tokens=None,
        request_id="r",
    )
    assert "max_tokens" not in body  # the server decodes to the end of its context
    assert (
        completion_body(
            model="m",
            prompt_ids=[1],
            sampling=SamplingConfig(),
            seed=0,
            resumed_tokens=0,
            max_tokens=7,
            request_id="r",
        )["max_tokens"]
        == 7
    )


@pytest.mark.parametrize("render", ["local", "server"])
async def test_a_probe_answers_inside_the_box(
    vllm_server: VLLMServerProcess, tiny_model_dir: Path, render: str
) -> None:
    tokenizer = str(tiny_model_dir) if render == "local" else None
    backend = VLLMServerBackend(vllm_server.url, model=SERVED_MODEL, tokenizer=tokenizer)
    try:
        reference, _ = await _consume(backend, _request(max_tokens=40))
        deltas, reply = await _consume(
            backend,
            _request(max_tokens=40),
            probe_at=6,
            suffix=" Therefore the answer is \\boxed{",
            max_tokens=10,
        )
        assert reply is not None
        assert [d.token_ids for d in deltas] == [d.token_ids for d in reference]
        assert reply.text == "42}", reply
        assert 6 <= reply.at_tokens <= 40 and 1 <= reply.decoded_tokens < 10
        assert reply.prefill_tokens > reply.at_tokens
        assert backend.probe_stats.probes == 1
        with pytest.raises(KeyError):
            await backend.probe("server-probe-never")
        assert backend.live_requests() == set()
    finally:
        await backend.aclose()


async def test_no_max_tokens_runs_to_the_end_of_the_context(
    vllm_server: VLLMServerProcess, tiny_model_dir: Path
) -> None:
    backend = VLLMServerBackend(
        vllm_server.url,
        model=SERVED_MODEL,
        tokenizer=str(tiny_model_dir),
        sampling_overrides={"ignore_eos": True},
    )
    try:
        await backend.astart()
        assert backend.context_length() == 1024
        prompt = backend.count_prompt_tokens(CHAT)
        seed, _ = await _consume(backend, _request(max_tokens=8))
        ids = [t for d in seed for t in d.token_ids]
        filler = tuple(ids[i % len(ids)] for i in range(1024 - prompt - 5))
        near_end, _ = await _consume(backend, _request(max_tokens=None, resume=filler))
        assert sum(len(d.token_ids) for d in near_end) == 5
        assert near_end[-1].finish_reason == "length"
    finally:
        await backend.aclose()
