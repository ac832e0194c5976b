"""Reliability of ``VLLMBackend`` on a real engine (CPU build, tiny trained Qwen2).

Faults that only a loaded or a dying engine shows: a wave of seeded prompts larger than one step's
token budget (the CPU build cannot rewind the generator of a request whose prefill is split), the
engine-core process killed mid-run (the engine is rebuilt on the next use), a token budget beyond
what vLLM can serialise, and a prompt that is not valid text. Then whole runs: 8 questions at once
(each gets its own traces), cancellation at seeded random points (vLLM is left idle), and how many
tokens a cancelled run's traces still decode (the figures in docs/reliability.md). This module
builds its own engine (other arguments than the session's), so killing it leaves the other tests'
engine alone.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import itertools
import logging
import os
import random
import signal
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from deepprune_vllm import VLLMBackend
from vllm_helpers import ENGINE_KWARGS, QUESTION

from deepprune_lc import (
    AnswerRules,
    DeepPrune,
    DeepPruneReasoner,
    LexicalJudge,
    PruningConfig,
    SamplingConfig,
    TokensPrefix,
    TraceRequest,
)
from deepprune_lc.core import BackendDeadError
from deepprune_lc.runtime import resolve_backend
from deepprune_lc.runtime.driver import ABORT_SLACK_TOKENS
from deepprune_lc.testing import RecordingBackend

#: Its own engine: one more sequence slot than the session engine's default would make no
#: difference to the model, but a different key gives this module a separate engine.
RELIABILITY_KWARGS: dict[str, Any] = {**ENGINE_KWARGS, "max_num_seqs": 48}
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


# ---------------------------------------------------------------------------------------------
# Load, cancellation and the steps to stop, on the module's engine


def continuation_prompt(i: int) -> str:
    """Question i: a distinct ~400-token text for the model to continue (plain text: no template,
    nothing shared with another question's prompt from its first token on)."""
    rng = random.Random(i)
    words = [f"{rng.choice(_WORDS)}{rng.randint(0, 999)}" for _ in range(45)]
    return f"Text {i}: " + " ".join(words)


_WORDS = ("alpha", "river", "stone", "cloud", "seven", "green", "north", "paper", "metal", "light")
#: The answer of a load run is the trace's whole text: it belongs to one question only.
WHOLE_TEXT = AnswerRules.custom(extract=lambda text: text, equivalent=str.__eq__, name="text")


async def pending_tasks() -> set[asyncio.Task[Any]]:
    """Tasks still pending besides the caller's, after letting finished ones settle."""
    for _ in range(5):
        await asyncio.sleep(0)
    current = asyncio.current_task()
    return {t for t in asyncio.all_tasks() if t is not current and not t.done()}


async def reset_prefix_cache(backend: VLLMBackend) -> bool:
    """Empty vLLM's prefix cache (on the engine's loop), so the next prompts are prefilled anew."""
    engine = backend.engine.engine_nowait()
    assert engine is not None
    done: concurrent.futures.Future[Any] = asyncio.run_coroutine_threadsafe(
        engine.reset_prefix_cache(), backend.engine.loop
    )
    return bool(await asyncio.wrap_future(done))


async def rerun(backend: VLLMBackend, request: TraceRequest, n_tokens: int) -> list[int]:
    """The first ``n_tokens`` the request gives when submitted again (a new id; the same prompt,
    seed and resume ids): seeded sampling makes them a function of the request alone."""
    budget = len(request.resume_token_ids) + n_tokens
    again = dataclasses.replace(
        request,
        request_id=f"rel-again-{next(_ids)}",
        sampling=request.sampling.model_copy(update={"max_tokens": budget}),
    )
    ids, _ = await drain(backend, again)
    return ids


async def test_eight_concurrent_questions_are_all_answered_each_with_its_own_traces(
    backend: VLLMBackend, tiny_model_dir: Path
) -> None:
    """8 distinct questions x 8 seeded traces at once (64 requests, 16 of them queued behind the
    engine's 48 slots; the first wave's prefill alone is over one step's token budget, on an empty
    prefix cache): the load the CPU build died under while chunked prefill split seeded prompts.

    Guards completion and isolation under load: every run returns a result; every request of the
    wave, submitted again afterwards with only its own question's requests on the engine (same
    prompt, seed and resume ids), gives exactly the tokens it delivered in the wave; each answer
    (here the winning trace's whole text) is the text its own question's requests delivered, and
    each run's token count is its own requests' tokens. A delta routed to the wrong request or run,
    a resume from another trace's ids, or a dead engine fails it. Nothing is left in vLLM's
    request table afterwards.
    """
    n_questions, max_tokens = 8, 32
    eos_free = VLLMBackend(
        str(tiny_model_dir), sampling_overrides={"ignore_eos": True}, **RELIABILITY_KWARGS
    )
    await eos_free.astart()
    prompts = [continuation_prompt(i) for i in range(n_questions)]
    engine = eos_free.engine.engine_nowait()
    assert engine is not None
    step_budget = engine.vllm_config.scheduler_config.max_num_batched_tokens
    prompt_tokens = sum(eos_free.count_prompt_tokens(p) for p in prompts)
    assert prompt_tokens > step_budget
    await settle(eos_free)
    assert await reset_prefix_cache(eos_free)

    recorder = RecordingBackend(eos_free)
    # A high temperature: the tiny model falls into a loop on some prompts, and traces that all
    # looped alike could swap unseen.
    sampling = SamplingConfig(temperature=2.0, top_p=1.0, max_tokens=max_tokens)
    runners = [
        DeepPrune(
            recorder,
            LexicalJudge(),
            PruningConfig(n_traces=8, prefix=TokensPrefix(k=8), finalists=2, seed=i),
            sampling=sampling,
            answers=WHOLE_TEXT,
        )
        for i in range(n_questions)
    ]
    started = time.perf_counter()
    results = await asyncio.wait_for(
        asyncio.gather(*(runner.run(p) for runner, p in zip(runners, prompts, strict=True))),
        timeout=900,
    )
    wave_s = time.perf_counter() - started
    assert recorder.open == set()
    await settle(eos_free)

    first_tokens = set()
    for i, result in enumerate(results):
        assert result.error is None and len(result.traces) == 8, f"question {i}"
        requests = [r for r in recorder.requests if r.prompt == prompts[i]]
        assert {r.trace_index for r in requests} == set(range(8))
        first_tokens |= {
            tuple(recorder.delivered[r.request_id]) for r in requests if not r.resume_token_ids
        }
        delivered = [recorder.delivered[r.request_id] for r in requests]
        again = await asyncio.gather(
            *(rerun(eos_free, r, len(ids)) for r, ids in zip(requests, delivered, strict=True))
        )
        assert again == delivered, f"question {i}: the wave's tokens are not its own"
        winner = [r for r in requests if r.trace_index == result.winning_trace]
        text = "".join(recorder.texts[r.request_id] for r in winner)
        assert result.text == text and result.answer == text, f"question {i}"
        assert result.totals.decoded_tokens == sum(map(len, delivered)), f"question {i}"
    # Every trace's first stream differs from every other's: a swap could not go unseen.
    assert len(first_tokens) == 8 * n_questions, len(first_tokens)
    await settle(eos_free)
    assert await pending_tasks() == set()
    print(
        f"\nvLLM load: {n_questions} questions x 8 traces ({len(recorder.requests)} requests, "
        f"{prompt_tokens} distinct prompt tokens, step budget {step_budget}) in {wave_s:.1f} s"
    )


async def cancel_after(
    task: asyncio.Future[Any],
    *,
    recorder: RecordingBackend | None = None,
    tokens: int = 0,
    seconds: float = 0.0,
) -> None:
    """Cancel ``task`` once ``recorder``'s streams delivered ``tokens`` and ``seconds`` passed
    (polled), or once it ended by itself; return when the cancelled task has."""
    deadline = time.monotonic() + seconds
    while not task.done() and (
        time.monotonic() < deadline or (recorder is not None and recorder.total_tokens() < tokens)
    ):
        await asyncio.sleep(0.005)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.wait_for(task, timeout=120)


async def test_cancelling_at_random_points_leaves_vllm_idle(
    backend: VLLMBackend, tiny_model_dir: Path
) -> None:
    """Cancel ``DeepPrune.run`` and ``ainvoke`` (on the ``vllm:`` spec of this engine) at seeded
    random points: after a number of delivered tokens from before the first (requests not yet in
    the engine) to past the judge's prefix (parked traces, judge calls, resumes), and after a
    random wait for ``ainvoke``.

    Guards the shutdown on cancellation on the real engine: after each point vLLM's own request
    table and the engine-core scheduler are empty within a bounded settle time, and no task of
    ours is pending. A cancelled run that left its traces running (or a bridged stream whose pump
    never aborted its request) fails ``settle``; one that left a task behind fails the last check.
    """
    rng = random.Random(12)
    config = PruningConfig(n_traces=8, prefix=TokensPrefix(k=8), finalists=2)
    sampling = SamplingConfig(temperature=1.0, top_p=1.0, max_tokens=64)
    chat = [{"role": "user", "content": QUESTION}]
    options = "&".join(f"{k}={str(v).lower()}" for k, v in RELIABILITY_KWARGS.items())
    spec = f"vllm:{tiny_model_dir}?{options}"
    assert resolve_backend(spec).engine is backend.engine  # type: ignore[attr-defined]
    reasoner = DeepPruneReasoner(backend=spec, pruning=config, sampling=sampling)
    await backend.astart()
    for point in range(8):
        task: asyncio.Future[Any]
        if point % 4 == 3:
            task = asyncio.ensure_future(reasoner.ainvoke(QUESTION))
            await cancel_after(task, seconds=rng.uniform(0.0, 2.0))
        else:
            recorder = RecordingBackend(backend)
            runner = DeepPrune(recorder, LexicalJudge(), config, sampling=sampling)
            task = asyncio.ensure_future(runner.run(chat))
            kind = rng.choice(["turns", "prefix", "later"])
            if kind == "turns":  # before any token: requests on their way to the engine
                for _ in range(rng.randint(1, 30)):
                    await asyncio.sleep(0)
            tokens = {"turns": 0, "prefix": rng.randint(1, 8 * 8), "later": rng.randint(64, 320)}
            await cancel_after(task, recorder=recorder, tokens=tokens[kind])
            assert recorder.open == set(), f"point {point}: streams still open"
        await settle(backend)
        assert await pending_tasks() == set(), f"point {point}"


async def test_traces_stop_within_the_abort_slack_after_a_cancel(
    backend: VLLMBackend, tiny_model_dir: Path
) -> None:
    """How many tokens vLLM still decodes for a run's traces once the run is cancelled.

    6 seeded points, each a run of 8 end-of-sequence-free traces (900-token budget, no parking
    before it) cancelled once its streams delivered a random number of tokens. Guards the abort
    on cancellation: every stream has ended when the cancelled call returns, and none delivered
    more than the driver's ``ABORT_SLACK_TOKENS`` (plus the delta that crossed it) after its
    abort. A cancellation that left traces decoding runs them to 900 tokens and fails both.
    Prints the figure in docs/reliability.md: per point, the most tokens one trace delivered
    after the cancellation (one token per engine step for a running request).
    """
    eos_free = VLLMBackend(
        str(tiny_model_dir), sampling_overrides={"ignore_eos": True}, **RELIABILITY_KWARGS
    )
    await eos_free.astart()
    rng = random.Random(3)
    config = PruningConfig(n_traces=8, prefix=TokensPrefix(k=600))
    sampling = SamplingConfig(temperature=1.0, top_p=1.0, max_tokens=900)
    after_cancel: list[int] = []
    after_abort: list[int] = []
    for _ in range(6):
        recorder = RecordingBackend(eos_free)
        runner = DeepPrune(recorder, LexicalJudge(), config, sampling=sampling)
        target = rng.randint(8, 8 * 100)
        task = asyncio.ensure_future(runner.run([{"role": "user", "content": QUESTION}]))
        while not task.done() and recorder.total_tokens() < target:
            await asyncio.sleep(0.005)
        assert not task.done()
        recorder.mark()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, timeout=120)
        assert recorder.open == set()
        assert all(len(ids) < 900 for ids in recorder.delivered.values())
        slack = ABORT_SLACK_TOKENS + recorder.largest_delta
        assert max(recorder.after_abort.values(), default=0) <= slack, recorder.after_abort
        assert max(recorder.after_mark.values(), default=0) <= slack, recorder.after_mark
        after_cancel.append(max(recorder.after_mark.values(), default=0))
        after_abort.append(max(recorder.after_abort.values(), default=0))
        await settle(eos_free)
    print(
        f"\nvLLM: tokens the last trace delivered after the cancel, per point: {after_cancel} "
        f"(median {statistics.median(after_cancel)}, max {max(after_cancel)}); "
        f"after its abort call: {after_abort}"
    )
