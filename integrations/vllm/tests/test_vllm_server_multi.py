"""``VLLMServerBackend`` on two real ``vllm serve`` processes (the session's servers "a" and "b").

* Routing: the traces of one question stay on one server (its prefix cache) and a second
  question goes to the other, less loaded one; past ``affinity_limit`` traces in flight a question
  spills over to the other server.
* Failures: a server restarted mid-run (killed, then started again on its port): the traces it was
  decoding are retried with backoff until it serves again and resume token-exact from their ids;
  a server killed mid-run with another one up: its traces resume on the other, token-exact.

The restart takes as long as a server start (a minute or two on this machine); the kill test is
last in the module because it leaves server "b" down (the pool stops what is left at the end).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from deepprune_vllm import VLLMServerBackend
from vllm_helpers import QUESTION
from vllm_servers import (  # noqa: F401 - fixtures
    SERVED_MODEL,
    VLLMServerProcess,
    second_vllm_server_fixture,
    vllm_server_fixture,
    vllm_server_pool_fixture,
)

from deepprune_lc import DeepPrune, PruningConfig, SamplingConfig, TokensPrefix, TraceRequest
from deepprune_lc.core import Prompt, TraceDelta
from deepprune_lc.testing import ConstantJudge

CHAT = [{"role": "user", "content": QUESTION}]
OTHER = [{"role": "user", "content": "What is 40 plus 2?"}]


@pytest.fixture
async def servers(
    vllm_server: VLLMServerProcess, second_vllm_server: VLLMServerProcess
) -> AsyncIterator[tuple[VLLMServerProcess, VLLMServerProcess]]:
    second_vllm_server.wait_ready()  # a test before may have restarted it
    yield vllm_server, second_vllm_server


def make_backend(urls: list[str], tiny_model_dir: Path, **kwargs: object) -> VLLMServerBackend:
    return VLLMServerBackend(
        urls,
        model=SERVED_MODEL,
        tokenizer=str(tiny_model_dir),
        sampling_overrides={"ignore_eos": True},
        **kwargs,  # type: ignore[arg-type]
    )


def trace(prompt: Prompt, *, max_tokens: int, index: int = 0, greedy: bool = True) -> TraceRequest:
    return TraceRequest(
        request_id=f"multi-{uuid.uuid4().hex[:8]}",
        trace_index=index,
        prompt=prompt,
        sampling=SamplingConfig(temperature=0.0 if greedy else 1.0, max_tokens=max_tokens),
        seed=index,
    )


class Reader:
    """Reads a stream in a task; ``tokens`` grows as deltas arrive."""

    def __init__(self, backend: VLLMServerBackend, request: TraceRequest) -> None:
        self.request = request
        self.tokens: list[int] = []
        self.finish: str | None = None
        self.task = asyncio.ensure_future(self._read(backend))

    async def _read(self, backend: VLLMServerBackend) -> None:
        async for delta in backend.stream(self.request):
            self.tokens.extend(delta.token_ids)
            self.finish = delta.finish_reason


async def wait_for(condition: object, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def generated_tokens(server: VLLMServerProcess) -> float:
    """The server's ``vllm:generation_tokens_total`` counter (every token it has decoded)."""
    async with httpx.AsyncClient(base_url=server.root, timeout=30.0) as client:
        response = await client.get("/metrics")
    response.raise_for_status()
    total = 0.0
    for line in response.text.splitlines():
        name, _, value = line.rpartition(" ")
        if name.split("{", 1)[0] == "vllm:generation_tokens_total":
            total += float(value)
    return total


async def stop_all(
    readers: list[Reader], backend: VLLMServerBackend, *, close: bool = True
) -> None:
    for reader in readers:
        await backend.abort(reader.request.request_id)
    await asyncio.gather(*(r.task for r in readers), return_exceptions=True)
    if close:
        await backend.aclose()


async def frozen_mid_trace(
    server: VLLMServerProcess, backend: VLLMServerBackend, total: int, *, count: int
) -> list[Reader]:
    """``count`` greedy traces of ``total`` tokens in flight on ``server``, which is frozen with
    every one of them part-way: what it had sent is read, and none has all its tokens.

    So a kill that follows lands mid-trace. The client can fall behind the server (a loaded
    machine), so an attempt in which the server had already sent whole traces is aborted and
    tried again.
    """
    for _attempt in range(5):
        readers = [Reader(backend, trace(CHAT, max_tokens=total, index=i)) for i in range(count)]
        try:
            await wait_for(lambda: all(len(r.tokens) >= 5 for r in readers))  # noqa: B023
            server.freeze()
            await wait_until_stable(lambda: [len(r.tokens) for r in readers])  # noqa: B023
        except BaseException:
            # Never leave the module's server stopped, or these streams running, for the next test.
            server.thaw()
            await stop_all(readers, backend, close=False)
            raise
        if all(r.finish is None and len(r.tokens) < total for r in readers):
            return readers
        server.thaw()
        await stop_all(readers, backend, close=False)
    pytest.fail(f"{server.name} sent whole traces before it could be frozen, 5 times")


async def wait_until_stable(read: object, quiet_s: float = 0.5, timeout: float = 30.0) -> None:
    """Wait until ``read()`` has returned the same value for ``quiet_s`` seconds."""
    deadline = time.monotonic() + timeout
    last, since = read(), time.monotonic()  # type: ignore[operator]
    while time.monotonic() - since < quiet_s:
        assert time.monotonic() < deadline, "never stable"
        await asyncio.sleep(0.05)
        now = read()  # type: ignore[operator]
        if now != last:
            last, since = now, time.monotonic()


async def greedy_reference(url: str, tiny_model_dir: Path, max_tokens: int) -> list[int]:
    backend = make_backend([url], tiny_model_dir)
    ids: list[int] = []
    try:
        async for delta in backend.stream(trace(CHAT, max_tokens=max_tokens)):
            ids.extend(delta.token_ids)
    finally:
        await backend.aclose()
    return ids


# ---------------------------------------------------------------------------------------- routing


class Recording:
    """Wraps the backend; records the requests of every run through it."""

    def __init__(self, inner: VLLMServerBackend) -> None:
        self.inner = inner
        self.requests: list[TraceRequest] = []

    def stream(self, request: TraceRequest) -> AsyncIterator[TraceDelta]:
        self.requests.append(request)
        return self.inner.stream(request)

    async def abort(self, request_id: str) -> None:
        await self.inner.abort(request_id)

    def count_prompt_tokens(self, prompt: Prompt) -> int:
        return self.inner.count_prompt_tokens(prompt)


async def test_two_questions_at_once_each_keep_to_one_server(
    servers: tuple[VLLMServerProcess, VLLMServerProcess], tiny_model_dir: Path
) -> None:
    a, b = servers
    backend = make_backend([a.url, b.url], tiny_model_dir)
    recording = Recording(backend)
    runner = DeepPrune(
        recording,
        ConstantJudge(1.0),
        PruningConfig(n_traces=6, prefix=TokensPrefix(k=8), finalists=2, max_judge_batch=1),
        sampling=SamplingConfig(temperature=1.0, max_tokens=48),
    )
    try:
        results = await asyncio.gather(runner.run(CHAT), runner.run(OTHER))
    finally:
        await backend.aclose()
    assert all(r.totals.decoded_tokens > 0 for r in results)
    first, second = backend.endpoint_of(CHAT), backend.endpoint_of(OTHER)
    assert {first, second} == {a.url, b.url}  # the second question went to the idle server
    sent = {  # requests that reached a server (a resume at its budget does not)
        url: sum(
            1
            for r in recording.requests
            if backend.endpoint_of(r.prompt) == url and len(r.resume_token_ids) < 48
        )
        for url in (a.url, b.url)
    }
    # Each question's traces, resumes included, all went to its server and nowhere else.
    assert {s.url: s.requests for s in backend.endpoint_stats()} == sent
    assert all(s.in_flight == 0 for s in backend.endpoint_stats())


async def test_a_question_spills_over_past_the_affinity_limit(
    servers: tuple[VLLMServerProcess, VLLMServerProcess], tiny_model_dir: Path
) -> None:
    a, b = servers
    backend = make_backend([a.url, b.url], tiny_model_dir, affinity_limit=2)
    before = {s.url: await generated_tokens(s) for s in (a, b)}
    readers = [
        Reader(backend, trace(CHAT, max_tokens=600, index=i, greedy=False)) for i in range(6)
    ]
    try:
        await wait_for(lambda: all(r.tokens for r in readers))
        # Where each stream was sent, counted when it was sent: on a loaded machine one server
        # may have finished its three traces before the other's first token arrives, so the
        # streams in flight at one instant are not the routing.
        sent = {s.url: s.requests for s in backend.endpoint_stats()}
        assert sent == {a.url: 3, b.url: 3}, sent
        # Both servers decoded this question: read from their own counters (a gauge read at one
        # instant may already be 0 on a server that has decoded everything its client still reads).
        after = {s.url: await generated_tokens(s) for s in (a, b)}
        assert all(after[url] > before[url] for url in after), (before, after)
    finally:
        await stop_all(readers, backend)


# ---------------------------------------------------------------------------------------- failures


async def test_traces_recover_after_their_server_restarts_mid_run(
    servers: tuple[VLLMServerProcess, VLLMServerProcess], tiny_model_dir: Path
) -> None:
    a, b = servers
    b.require_own()
    total = 800  # context 1024
    reference = await greedy_reference(a.url, tiny_model_dir, total)
    backend = make_backend(
        [b.url],
        tiny_model_dir,
        # Patient enough to wait for a server start (minutes here), polling every 2 s at most.
        max_attempts=1000,
        retry_deadline_s=600,
        retry_max_wait_s=2.0,
    )
    readers: list[Reader] = []
    try:
        readers = await frozen_mid_trace(b, backend, total, count=2)
        b.kill()
        cut = [len(r.tokens) for r in readers]
        b.launch()  # the same port; the backend keeps retrying until it serves
        # The server's start fails the test (with its log) if it does not come back.
        await asyncio.wait_for(
            asyncio.gather(asyncio.to_thread(b.wait_ready), *(r.task for r in readers)), 600
        )
    finally:
        with contextlib.suppress(Exception):
            await stop_all(readers, backend)
    for reader, kept in zip(readers, cut, strict=True):
        assert reader.finish == "length"
        assert len(reader.tokens) == total and kept < total
        assert reader.tokens == reference  # resumed token-exact after the restart
    [stats] = backend.endpoint_stats()
    assert stats.failures >= 1 and stats.in_flight == 0


async def test_a_killed_servers_traces_resume_on_the_other_server(
    servers: tuple[VLLMServerProcess, VLLMServerProcess], tiny_model_dir: Path
) -> None:
    a, b = servers
    b.require_own()
    total = 800  # context 1024
    reference = await greedy_reference(a.url, tiny_model_dir, total)
    backend = make_backend([b.url, a.url], tiny_model_dir)  # the question pins to b, listed first
    readers: list[Reader] = []
    try:
        readers = await frozen_mid_trace(b, backend, total, count=3)
        assert backend.endpoint_of(CHAT) == b.url
        b.kill()  # left down: the last test of the module
        await asyncio.wait_for(asyncio.gather(*(r.task for r in readers)), 300)
    finally:
        with contextlib.suppress(Exception):
            await stop_all(readers, backend)
    for reader in readers:
        assert (reader.finish, reader.tokens) == ("length", reference)  # token-exact takeover
    stats = {s.url: s for s in backend.endpoint_stats()}
    assert stats[b.url].failures >= 1
    assert stats[a.url].requests >= len(readers)  # each trace resumed there
    assert all(s.in_flight == 0 for s in stats.values())
