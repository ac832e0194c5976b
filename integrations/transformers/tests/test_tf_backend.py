"""TransformersBackend on the tiny random Qwen2: batching, exact abort, token-exact resume, removal.

Every check reads the engine's own state (``live_requests``, ``engine_row_ids``, the batch size of
every decode forward) rather than trusting what the streams say.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from deepprune_transformers import TransformersBackend, backend_from_spec

from deepprune_lc import DeepPrune, LexicalJudge, PruningConfig, SamplingConfig, TokensPrefix
from deepprune_lc.core import SpecError, parse_spec
from deepprune_lc.core.events import DeepPruneEvent, TracePruned
from deepprune_lc.core.ports import GenerationBackend, Prompt, TraceDelta, TraceRequest
from deepprune_lc.runtime import resolve_backend
from deepprune_lc.testing import ConstantJudge

PROMPT: Prompt = [{"role": "user", "content": "What is 6 times 7? Think step by step."}]
_ids = iter(range(10**9))


def _request(
    *,
    trace: int = 0,
    max_tokens: int = 16,
    temperature: float = 0.8,
    seed: int = 0,
    resume: tuple[int, ...] = (),
    prompt: Prompt = PROMPT,
    stop: tuple[str, ...] = (),
) -> TraceRequest:
    return TraceRequest(
        request_id=f"req-{next(_ids)}",
        trace_index=trace,
        prompt=prompt,
        sampling=SamplingConfig(
            temperature=temperature, top_p=0.95, max_tokens=max_tokens, stop=stop
        ),
        seed=seed,
        resume_token_ids=resume,
    )


async def _collect(stream: AsyncIterator[TraceDelta]) -> list[TraceDelta]:
    return [delta async for delta in stream]


def _ids_of(deltas: list[TraceDelta]) -> list[int]:
    return [token for delta in deltas for token in delta.token_ids]


async def _idle(backend: TransformersBackend) -> None:
    await backend.wait_idle()
    assert backend.live_requests() == set()
    assert backend.engine_row_ids() == []


# ---------------------------------------------------------------------- construction


def test_backend_satisfies_the_protocol_and_constructs_without_loading(
    tiny_model_dir: Path,
) -> None:
    started = time.perf_counter()
    backend = TransformersBackend(tiny_model_dir)
    assert time.perf_counter() - started < 0.5
    assert isinstance(backend, GenerationBackend)
    assert backend.engine_row_ids() == [] and backend.live_requests() == set()
    assert backend._engine is None and backend._tokenizer is None  # nothing loaded yet
    assert backend.model_name == tiny_model_dir.name


def test_hub_ids_and_missing_paths_fail_clearly(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="local models only"):
        TransformersBackend("someone/some-model-that-is-not-cached")
    with pytest.raises(ValueError, match="not a local directory"):
        backend_from_spec(parse_spec(f"transformers:{tmp_path / 'missing'}"))
    with pytest.raises(ValueError, match="max_batch_size"):
        TransformersBackend(tmp_path, max_batch_size=0)


def test_specs_resolve_through_the_core(tiny_model_dir: Path) -> None:
    backend = resolve_backend(f"transformers:{tiny_model_dir}")
    assert isinstance(backend, TransformersBackend)
    assert resolve_backend(f"transformers:{tiny_model_dir}") is backend  # shared
    with pytest.raises(SpecError, match="takes no options"):
        resolve_backend(f"transformers:{tiny_model_dir}?device=cpu")
    smollm2 = backend_from_spec(parse_spec("transformers:smollm2"))
    assert smollm2.model_name == "SmolLM2-135M-Instruct"
    assert smollm2._engine is None


def test_prompts_use_the_chat_template(tiny: TransformersBackend) -> None:
    templated = tiny.tokenizer.apply_chat_template(
        list(PROMPT), add_generation_prompt=True, tokenize=True, return_dict=False
    )
    assert tiny.count_prompt_tokens(PROMPT) == len(templated)
    assert tiny.count_prompt_tokens("plain text") == len(tiny.tokenizer("plain text")["input_ids"])


# ---------------------------------------------------------------------- batching


async def test_traces_stream_concurrently_in_one_batch(tiny: TransformersBackend) -> None:
    tiny.reset_stats()
    order: list[int] = []

    async def consume(trace: int) -> list[TraceDelta]:
        deltas = []
        async for delta in tiny.stream(_request(trace=trace, seed=trace, max_tokens=12)):
            order.append(trace)
            deltas.append(delta)
        return deltas

    results = await asyncio.gather(*(consume(t) for t in range(6)))
    for deltas in results:
        assert len(_ids_of(deltas)) == 12
        assert deltas[-1].finish_reason == "length"
        assert all(d.finish_reason is None for d in deltas[:-1])
    # One prefill for the six (same prompt), then every decode step carried all six rows.
    assert tiny.stats.prefill_forwards == 1
    assert tiny.step_batch_sizes == [6] * 11
    # The streams interleave: no trace got all its tokens before another got its first.
    assert order[:6] != [order[0]] * 6
    await _idle(tiny)


async def test_batched_rows_decode_as_they_would_alone(tiny: TransformersBackend) -> None:
    """Left padding, per-row positions and cache merging do not change what a row computes."""
    prompts: list[Prompt] = [
        "Short.",
        "A much longer prompt, so that rows need different amounts of left padding.",
        PROMPT,
    ]
    alone = []
    for prompt in prompts:
        deltas = await _collect(tiny.stream(_request(prompt=prompt, temperature=0, max_tokens=10)))
        alone.append(_ids_of(deltas))

    async def staggered(index: int) -> list[int]:
        await asyncio.sleep(0.01 * index)  # join a batch that is already decoding
        request = _request(prompt=prompts[index], temperature=0, max_tokens=10)
        return _ids_of(await _collect(tiny.stream(request)))

    together = await asyncio.gather(*(staggered(i) for i in range(len(prompts))))
    assert together == alone
    await _idle(tiny)


async def test_waiting_requests_are_admitted_as_rows_free_up(tiny_model_dir: Path) -> None:
    backend = TransformersBackend(tiny_model_dir, ignore_eos=True, max_batch_size=2)
    results = await asyncio.gather(
        *(_collect(backend.stream(_request(trace=t, seed=t, max_tokens=6))) for t in range(5))
    )
    assert [len(_ids_of(r)) for r in results] == [6] * 5
    assert max(backend.step_batch_sizes) == 2
    await _idle(backend)
    backend.close()


# ---------------------------------------------------------------------- abort and resume
# (The shared contract: exact abort, token-exact resume, budgets, closing early, concurrency, is
# test_tf_conformance.py's; what follows is this engine's own: rows, admission, stop strings.)


async def test_removed_rows_are_no_longer_computed(tiny: TransformersBackend) -> None:
    tiny.reset_stats()
    requests = [_request(trace=t, seed=t, max_tokens=40) for t in range(4)]
    aborted = {requests[0].request_id, requests[1].request_id}
    boundary: list[int] = []

    async def consume(request: TraceRequest) -> list[TraceDelta]:
        deltas: list[TraceDelta] = []
        async for delta in tiny.stream(request):
            deltas.append(delta)
            if request.request_id in aborted and len(deltas) == 3:
                await tiny.abort(request.request_id)
        if request.request_id in aborted:
            # The stream has ended: from the next decode step on, the row must be gone.
            boundary.append(len(tiny.step_batch_sizes))
            assert request.request_id not in tiny.engine_row_ids()
        return deltas

    results = await asyncio.gather(*(consume(r) for r in requests))
    assert [len(_ids_of(r)) for r in results] == [3, 3, 40, 40]
    assert [r[-1].finish_reason for r in results] == ["abort", "abort", "length", "length"]
    sizes = tiny.step_batch_sizes
    assert sizes[0] == 4
    assert all(size == 2 for size in sizes[max(boundary) :])
    assert sizes == sorted(sizes, reverse=True)  # rows only ever left
    assert tiny.stats.decoded_tokens == sum(sizes)
    # After its abort call a row is computed at most once more: the forward already running.
    assert tiny.computed_after_abort <= 2
    await _idle(tiny)


async def test_abort_while_waiting_for_a_row(tiny_model_dir: Path) -> None:
    backend = TransformersBackend(tiny_model_dir, ignore_eos=True, max_batch_size=1)
    first, second = _request(max_tokens=30), _request(max_tokens=30)
    running = asyncio.ensure_future(_collect(backend.stream(first)))
    waiting_stream = backend.stream(second)
    waiting = asyncio.ensure_future(_collect(waiting_stream))
    while second.request_id not in backend.live_requests():
        await asyncio.sleep(0.005)
    await backend.abort(second.request_id)
    assert (await waiting) == [TraceDelta((), "", "abort")]
    assert len(_ids_of(await running)) == 30
    assert second.request_id not in set(backend.engine_row_ids())
    await _idle(backend)
    backend.close()


async def test_stop_strings_end_the_trace(tiny: TransformersBackend) -> None:
    full = await _collect(tiny.stream(_request(seed=3, max_tokens=40)))
    text = "".join(d.text for d in full)
    stop = text[10:13]
    assert len(stop) == 3, text
    deltas = await _collect(tiny.stream(_request(seed=3, max_tokens=40, stop=(stop,))))
    assert deltas[-1].finish_reason == "stop"
    streamed = "".join(d.text for d in deltas)
    assert streamed == text[: text.index(stop)]
    await _idle(tiny)


async def test_a_stop_string_across_the_park_point_ends_the_resumed_trace(
    tiny: TransformersBackend,
) -> None:
    full = await _collect(tiny.stream(_request(seed=4, max_tokens=40)))
    pieces = [d.text for d in full]
    text = "".join(pieces)
    for k in range(3, 30):  # park where a 4-character stop string straddles the park point
        sent = len("".join(pieces[:k]))
        stop = text[sent - 2 : sent + 2]
        if len(stop) == 4 and text.find(stop) == sent - 2 and pieces[k]:
            break
    else:
        pytest.skip("no suitable park point in this sample")
    request = _request(seed=4, max_tokens=40, stop=(stop,))
    parked: list[TraceDelta] = []
    async for delta in tiny.stream(request):
        parked.append(delta)
        if len(parked) == k:
            await tiny.abort(request.request_id)
    resumed = await _collect(
        tiny.stream(_request(seed=4, max_tokens=40, stop=(stop,), resume=tuple(_ids_of(parked))))
    )
    assert resumed[-1].finish_reason == "stop"
    # The stop string began before the park point: the parked stream held its first two characters
    # back (they could start a stop string), and the resumed one, primed with them, caught the stop,
    # so no part of the stop string was ever streamed.
    assert "".join(d.text for d in parked + resumed) == text[: sent - 2]
    assert _ids_of(parked) + _ids_of(resumed) == _ids_of(full)[: k + len(_ids_of(resumed))]
    await _idle(tiny)


def test_a_new_event_loop_takes_the_backend_over(tiny: TransformersBackend) -> None:
    for _ in range(2):  # asyncio.run closes its loop; the next run must still work
        deltas = asyncio.run(_collect(tiny.stream(_request(max_tokens=5))))
        assert len(_ids_of(deltas)) == 5


# ---------------------------------------------------------------------- through DeepPrune


async def test_cancelling_a_run_aborts_everything(tiny: TransformersBackend) -> None:
    config = PruningConfig(n_traces=6, prefix=TokensPrefix(k=400))  # nobody reaches a prefix
    deepprune = DeepPrune(tiny, LexicalJudge(), config, sampling=SamplingConfig(max_tokens=2000))
    run = asyncio.ensure_future(deepprune.run(PROMPT))
    while len(tiny.live_requests()) < 6 or not tiny.step_batch_sizes:
        await asyncio.sleep(0.01)
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    await _idle(tiny)


async def test_deepprune_prunes_on_the_engine(tiny: TransformersBackend) -> None:
    """Traces that stop at their prefix really stop: decoded tokens are what the engine did."""
    events: list[DeepPruneEvent] = []

    tiny.reset_stats()
    # The paper's MV: exactly the K2 finalists finish (robust finalisation would resume more when
    # the tiny model's finalists disagree, which they do).
    config = PruningConfig(n_traces=8, prefix=TokensPrefix(k=8), finalists=2, finalisation="paper")
    deepprune = DeepPrune(tiny, ConstantJudge(1.0), config, sampling=SamplingConfig(max_tokens=48))
    result = await deepprune.run(PROMPT, listeners=[events.append])
    await _idle(tiny)
    statuses = sorted(t.status for t in result.traces)
    assert statuses.count("finished") == 2
    assert any(isinstance(e, TracePruned) for e in events)
    assert result.totals.decoded_tokens == sum(t.tokens_decoded for t in result.traces)
    # Two finalists of 48 tokens, six traces stopped near their 8-token prefix.
    assert result.totals.decoded_tokens <= 2 * 48 + 6 * (8 + 2)
    finished = [t for t in result.traces if t.status == "finished"]
    assert all(t.tokens_decoded == 48 for t in finished)
    assert sum(t.tokens_after_abort for t in result.traces) <= 2 * 6


async def test_one_backend_serves_concurrent_runs(tiny: TransformersBackend) -> None:
    tiny.reset_stats()
    config = PruningConfig(n_traces=4, prefix=TokensPrefix(k=6), finalists=2)
    deepprune = DeepPrune(tiny, LexicalJudge(), config, sampling=SamplingConfig(max_tokens=24))
    first, second = await asyncio.gather(
        deepprune.run(PROMPT), deepprune.run([{"role": "user", "content": "Another question?"}])
    )
    assert first.totals.decoded_tokens > 0 and second.totals.decoded_tokens > 0
    assert max(tiny.step_batch_sizes) == 8  # both runs' traces decoded in one batch
    await _idle(tiny)


async def test_a_failing_forward_ends_every_stream_and_the_engine_recovers(
    tiny: TransformersBackend,
) -> None:
    from deepprune_transformers import EngineError

    await _collect(tiny.stream(_request(max_tokens=2)))  # loaded
    engine = tiny._engine
    assert engine is not None
    model = engine.model
    calls = 0

    def broken(**kwargs: object) -> object:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise RuntimeError("out of memory (simulated)")
        return model(**kwargs)

    engine.model = broken
    try:
        results = await asyncio.gather(
            *(_collect(tiny.stream(_request(trace=t, max_tokens=30))) for t in range(3)),
            return_exceptions=True,
        )
    finally:
        engine.model = model
    assert all(isinstance(r, EngineError) for r in results), results
    assert tiny.live_requests() == set()
    deltas = await _collect(tiny.stream(_request(max_tokens=5)))  # a fresh batch works
    assert len(_ids_of(deltas)) == 5
    await _idle(tiny)


def test_two_running_event_loops_cannot_share_a_backend(tiny_model_dir: Path) -> None:
    import threading

    backend = TransformersBackend(tiny_model_dir, ignore_eos=True)
    other = asyncio.new_event_loop()
    thread = threading.Thread(target=other.run_forever, daemon=True)
    thread.start()
    try:
        elsewhere = backend.stream(_request(max_tokens=2000))
        started = asyncio.run_coroutine_threadsafe(elsewhere.__anext__(), other)
        started.result(timeout=60)  # streaming on the other loop now

        async def here() -> None:
            with pytest.raises(RuntimeError, match="another event loop"):
                await backend.stream(_request(max_tokens=2)).__anext__()

        asyncio.run(here())
    finally:
        asyncio.run_coroutine_threadsafe(elsewhere.aclose(), other).result(timeout=30)
        assert backend.live_requests() == set()
        other.call_soon_threadsafe(other.stop)
        thread.join(timeout=10)
        other.close()
        backend.close()


async def test_large_admissions_prefill_in_chunks_and_decode_as_alone(
    tiny: TransformersBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    import deepprune_transformers.engine as engine_module

    full = [
        _ids_of(await _collect(tiny.stream(_request(seed=s, temperature=0.8, max_tokens=20))))
        for s in range(4)
    ]
    monkeypatch.setattr(engine_module, "PREFILL_TOKEN_BUDGET", 40)  # a prefill per input or two
    tiny.reset_stats()
    resumed = await asyncio.gather(
        *(
            _collect(tiny.stream(_request(seed=s, max_tokens=20, resume=tuple(full[s][: 2 + s]))))
            for s in range(4)
        )
    )
    assert tiny.stats.prefill_forwards >= 3
    for s in range(4):
        assert full[s][: 2 + s] + _ids_of(resumed[s]) == full[s]
    await _idle(tiny)
