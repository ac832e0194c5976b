"""DeepPrune end to end on the real engine: answers, parking/resume through the driver,
cancellation, and the LangChain surface on both the caller's loop and the background loop."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from deepprune_vllm import VLLMBackend
from vllm_helpers import QUESTION

from deepprune_lc import (
    DeepPrune,
    DeepPruneReasoner,
    LexicalJudge,
    PruningConfig,
    SamplingConfig,
    TokensPrefix,
    TraceDelta,
    TraceRequest,
)
from deepprune_lc.core.config import ProbeClustering
from deepprune_lc.core.events import DeepPruneEvent, TraceStarted
from deepprune_lc.core.ports import Prompt
from deepprune_lc.judges import ProbeJudge
from deepprune_lc.runtime import resolve_backend
from deepprune_lc.testing import ConstantJudge

CHAT = [{"role": "user", "content": QUESTION}]


class Recording:
    """Wraps a backend and records every request and the ids each stream delivered."""

    def __init__(self, inner: VLLMBackend) -> None:
        self.inner = inner
        self.requests: list[TraceRequest] = []
        self.delivered: dict[str, list[int]] = {}

    async def _record(self, request: TraceRequest) -> AsyncIterator[TraceDelta]:
        ids = self.delivered.setdefault(request.request_id, [])
        stream = self.inner.stream(request)
        try:
            async for delta in stream:
                ids.extend(delta.token_ids)
                yield delta
        finally:
            await stream.aclose()

    def stream(self, request: TraceRequest) -> AsyncIterator[TraceDelta]:
        self.requests.append(request)
        return self._record(request)

    async def abort(self, request_id: str) -> None:
        await self.inner.abort(request_id)

    def count_prompt_tokens(self, prompt: Prompt) -> int:
        return self.inner.count_prompt_tokens(prompt)


async def settle(backend: VLLMBackend, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while backend.live_requests() or await backend.core_has_work():
        if time.monotonic() > deadline:
            raise AssertionError(f"requests left behind: {backend.live_requests()}")
        await asyncio.sleep(0.05)


async def test_deepprune_with_the_lexical_judge_answers_and_reports_tokens(
    vllm_backend: VLLMBackend,
) -> None:
    runner = DeepPrune(
        vllm_backend,
        LexicalJudge(),
        PruningConfig(n_traces=8, prefix=TokensPrefix(k=12), finalists=4, seed=1),
        sampling=SamplingConfig(temperature=1.0, top_p=1.0, max_tokens=192),
    )
    result = await runner.run(CHAT)
    assert result.answer == "42"
    totals = result.totals
    assert totals.prompt_tokens == vllm_backend.count_prompt_tokens(CHAT) > 0
    assert totals.decoded_tokens == sum(t.tokens_decoded for t in result.traces) > 0
    assert totals.wall_time_s > 0 and totals.judge_calls >= 1
    assert {t.status for t in result.traces} <= {"finished", "pruned", "aborted"}
    assert any(t.voted and t.answer == "42" for t in result.traces)
    await settle(vllm_backend)


async def test_deepprune_with_the_probe_judge_clusters_by_engine_probes(
    vllm_backend: VLLMBackend,
) -> None:
    """The probe judge end to end on the engine: every trace is probed (a greedy request of its
    own), clustered by its answer class with no pair scored, and finalists are re-probed; the
    probes' tokens are counted and nothing is left in the engine."""
    runner = DeepPrune(
        vllm_backend,
        ProbeJudge(ProbeClustering(at_tokens=12, reprobe_every=12)),
        PruningConfig(n_traces=8, finalists=4, seed=1),
        sampling=SamplingConfig(temperature=1.0, top_p=1.0, max_tokens=192),
    )
    result = await runner.run(CHAT)
    assert result.answer == "42"
    totals = result.totals
    assert totals.judge_calls == 0 and totals.judge_pairs == 0
    assert totals.probe_calls >= 1
    assert totals.probe_prefill_tokens > 0 and totals.probe_decoded_tokens > 0
    assert totals.decoded_tokens == sum(t.tokens_decoded for t in result.traces)
    assert {t.status for t in result.traces} <= {"finished", "pruned", "aborted"}
    await settle(vllm_backend)


async def test_parked_traces_resume_token_exact_through_the_driver(eos_free: VLLMBackend) -> None:
    """Greedy decoding: every finalist, resumed or not, must equal one uninterrupted greedy run."""
    # Long enough for the greedy chain to reach its box: finalists that voted nothing would be a
    # split vote, which resumes every parked trace and leaves none pruned.
    total = 128
    sampling = SamplingConfig(temperature=0.0, max_tokens=total)
    reference: list[int] = []
    texts: list[str] = []
    async for delta in eos_free.stream(TraceRequest("greedy-reference", 0, CHAT, sampling, seed=0)):
        reference.extend(delta.token_ids)
        texts.append(delta.text)
    assert len(reference) == total
    assert "\\boxed{42}" in "".join(texts), f"the greedy run boxes no answer: {''.join(texts)!r}"

    recording = Recording(eos_free)
    runner = DeepPrune(
        recording,
        ConstantJudge(1.0),  # every trace in one cluster
        PruningConfig(n_traces=6, prefix=TokensPrefix(k=8), finalists=3, max_judge_batch=1),
        sampling=sampling,
        answers="exact",
    )
    result = await runner.run(CHAT)
    resumed = [t for t in result.traces if t.resumed]
    assert resumed, "the run resumed no parked trace"
    for trace in result.traces:
        incarnations = [r for r in recording.requests if r.trace_index == trace.trace_id]
        produced: list[int] = []
        for request in incarnations:
            # The driver resumes with exactly the ids the earlier streams delivered...
            assert list(request.resume_token_ids) == produced
            produced += recording.delivered[request.request_id]
        assert len(produced) == trace.tokens_decoded
        # ...and the engine continues them exactly: a prefix of (or all of) the greedy run.
        assert produced == reference[: len(produced)]
        if trace.status == "finished":
            assert produced == reference
        if trace.resumed:
            assert len(incarnations) == 2 and trace.tokens_prefilled_on_resume > 0
    pruned = [t for t in result.traces if t.status == "pruned"]
    assert pruned and all(t.tokens_decoded < total for t in pruned)
    assert sum(t.tokens_after_abort for t in pruned) / len(pruned) <= 8
    await settle(eos_free)


async def test_cancelling_a_run_aborts_every_request(eos_free: VLLMBackend) -> None:
    started = asyncio.Event()

    def listener(event: DeepPruneEvent) -> None:
        if isinstance(event, TraceStarted):
            started.set()

    runner = DeepPrune(
        eos_free,
        LexicalJudge(),
        PruningConfig(n_traces=8, prefix=TokensPrefix(k=600)),
        sampling=SamplingConfig(temperature=1.0, max_tokens=900),
    )
    task = asyncio.ensure_future(runner.run(CHAT, listeners=[listener]))
    await started.wait()
    deadline = time.monotonic() + 30
    while len(eos_free.live_requests()) < 8 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert len(eos_free.live_requests()) == 8
    await asyncio.sleep(0.2)  # decoding
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert eos_free.live_requests() == set()  # run() returns only once every request is gone
    await settle(eos_free)


def test_reasoner_invoke_runs_on_the_background_loop(vllm_backend: VLLMBackend) -> None:
    reasoner = DeepPruneReasoner(
        backend=vllm_backend,
        pruning=PruningConfig(n_traces=4, prefix=TokensPrefix(k=12), finalists=2),
        sampling=SamplingConfig(temperature=1.0, top_p=1.0, max_tokens=192),
    )
    message = reasoner.invoke(QUESTION)
    assert message.response_metadata["deepprune"]["answer"] == "42"
    assert "42" in message.text
    usage = message.usage_metadata
    assert usage is not None and usage["output_tokens"] > 0 and usage["input_tokens"] > 0
    assert vllm_backend.live_requests() == set()


async def test_reasoner_ainvoke_and_invoke_at_once_from_two_loops(
    tiny_model_dir: Path, vllm_backend: VLLMBackend
) -> None:
    """The spec names the session's engine arguments, so it shares the running engine."""
    spec = f"vllm:{tiny_model_dir}?enforce_eager=true&dtype=float32&max_model_len=1024"
    assert resolve_backend(spec).engine is vllm_backend.engine  # type: ignore[attr-defined]
    reasoner = DeepPruneReasoner(
        backend=spec,
        pruning=PruningConfig(n_traces=4, prefix=TokensPrefix(k=12), finalists=2),
        sampling=SamplingConfig(temperature=1.0, top_p=1.0, max_tokens=192),
    )
    on_this_loop, on_the_background_loop = await asyncio.gather(
        reasoner.ainvoke(QUESTION), asyncio.to_thread(reasoner.invoke, QUESTION)
    )
    for message in (on_this_loop, on_the_background_loop):
        assert message.response_metadata["deepprune"]["answer"] == "42"
        assert message.usage_metadata is not None and message.usage_metadata["output_tokens"] > 0
    await settle(vllm_backend)
