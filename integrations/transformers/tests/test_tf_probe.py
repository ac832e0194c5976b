"""Answer probes and the context-length budget on ``TransformersBackend``.

The shared probe contract (a probed trace completes token-exact, unknown ids raise ``KeyError``)
runs in test_tf_conformance.py; here are the parts that need a real tokenizer or model: the think
block closed before the suffix, the answer cut at the box's closing brace on the trained reasoner,
the probe's cost, a probe cancelled or refused, and a trace with no ``max_tokens`` stopping at the
end of the model's context with "length".
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import pytest
from deepprune_transformers import TransformersBackend
from deepprune_transformers.testing import REASONER_QUESTION, build_tiny_qwen2

from deepprune_lc.backends import THINK_CLOSE, probe_suffix_text, think_block_open, think_tokens
from deepprune_lc.core import SamplingConfig, TraceDelta, TraceRequest
from deepprune_lc.core.ports import DYNASOR_PROBE_SUFFIX, AnswerProbing, ProbeReply


def _request(
    request_id: str, *, max_tokens: int | None, resume: tuple[int, ...] = ()
) -> TraceRequest:
    return TraceRequest(
        request_id=request_id,
        trace_index=0,
        prompt=[{"role": "user", "content": REASONER_QUESTION}],
        sampling=SamplingConfig(temperature=0.0, max_tokens=max_tokens),
        seed=0,
        resume_token_ids=resume,
    )


async def _probe_after(
    backend: TransformersBackend, request: TraceRequest, k: int, **probe: Any
) -> tuple[list[TraceDelta], ProbeReply]:
    deltas: list[TraceDelta] = []
    reply: ProbeReply | None = None
    async with contextlib.aclosing(backend.stream(request)) as stream:
        async for delta in stream:
            deltas.append(delta)
            if reply is None and len(deltas) >= k and delta.finish_reason is None:
                reply = await backend.probe(request.request_id, **probe)
    assert reply is not None
    return deltas, reply


@pytest.fixture(scope="module")
def reasoner(tiny_reasoner_dir: Path) -> Any:
    backend = TransformersBackend(tiny_reasoner_dir, num_threads=1, ignore_eos=True)
    yield backend
    backend.close()


def test_the_backend_answers_probes(tiny: TransformersBackend) -> None:
    assert isinstance(tiny, AnswerProbing)


async def test_the_trained_reasoner_answers_inside_the_box(reasoner: TransformersBackend) -> None:
    """The default suffix ends in ``\\boxed{``: the model's next tokens are its answer, and the
    text ends at the brace that closes the box (nothing after it is decoded)."""
    deltas, reply = await _probe_after(reasoner, _request("box", max_tokens=40), 12)
    held = sum(len(d.token_ids) for d in deltas[:12])
    assert reply.at_tokens >= held
    assert "42" in reply.text, reply  # the tiny model's words, after the Dynasor suffix
    assert not reply.unknown and reply.answer is None  # the caller extracts from "\\boxed{" + text
    assert reply.decoded_tokens <= 20
    prompt = reasoner.count_prompt_tokens(_request("x", max_tokens=1).prompt)
    suffix = len(reasoner.tokenizer.encode(DYNASOR_PROBE_SUFFIX, add_special_tokens=False))
    assert reply.prefill_tokens == prompt + reply.at_tokens + suffix  # no think block here
    stats = reasoner.probe_stats
    assert stats.probes >= 1 and stats.decoded_tokens >= reply.decoded_tokens


async def test_the_answer_ends_at_the_brace_that_closes_the_box(
    reasoner: TransformersBackend,
) -> None:
    """With the words it was trained on before the box, the model writes ``42}`` and then
    ``.``: the probe stops at the brace."""
    _, reply = await _probe_after(
        reasoner,
        _request("brace", max_tokens=30),
        6,
        suffix=" Therefore the answer is \\boxed{",
        max_tokens=10,
    )
    assert reply.text == "42}", reply
    assert reply.decoded_tokens < 10


async def test_a_probe_budget_caps_what_it_decodes(reasoner: TransformersBackend) -> None:
    _, reply = await _probe_after(
        reasoner, _request("budget", max_tokens=30), 5, suffix="\\boxed{\\frac{", max_tokens=2
    )
    assert reply.decoded_tokens <= 2


async def test_a_probe_of_a_trace_waiting_for_a_row_sees_its_resumed_ids(
    reasoner: TransformersBackend,
) -> None:
    """A resumed trace is probeable as soon as its stream is open: it holds its resumed ids."""
    reference, _ = await _probe_after(reasoner, _request("ref", max_tokens=10), 1)
    ids = tuple(t for d in reference for t in d.token_ids)
    stream = reasoner.stream(_request("resumed", max_tokens=20, resume=ids[:6]))
    first = await stream.__anext__()
    reply = await reasoner.probe("resumed", max_tokens=4)
    assert reply.at_tokens >= 6 + len(first.token_ids) - 1
    await stream.aclose()
    await reasoner.wait_idle()
    assert reasoner.live_requests() == set() and reasoner.engine_row_ids() == []


async def test_probing_a_finished_trace_or_with_a_bad_budget(reasoner: TransformersBackend) -> None:
    deltas, _ = await _probe_after(reasoner, _request("done", max_tokens=6), 1)
    assert deltas[-1].finish_reason == "length"
    with pytest.raises(KeyError):
        await reasoner.probe("done")
    with pytest.raises(ValueError, match="max_tokens"):
        await reasoner.probe("done", max_tokens=0)


async def test_a_cancelled_probe_leaves_the_trace_whole(reasoner: TransformersBackend) -> None:
    reference, _ = await _probe_after(reasoner, _request("whole", max_tokens=24), 1)
    deltas: list[TraceDelta] = []
    async with contextlib.aclosing(reasoner.stream(_request("cut", max_tokens=24))) as stream:
        async for delta in stream:
            deltas.append(delta)
            if len(deltas) == 3:
                task = asyncio.ensure_future(reasoner.probe("cut"))
                await asyncio.sleep(0)
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
    assert [d.token_ids for d in deltas] == [d.token_ids for d in reference]
    await reasoner.wait_idle()
    assert reasoner.engine_row_ids() == []


# ---------------------------------------------------------------------- the think block


@pytest.fixture(scope="module")
def thinking_tokenizer(tiny_model_dir: Path) -> Any:
    """The tiny tokenizer with ``<think>``/``</think>`` as tokens of its own (as Qwen3's)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<think>", "</think>"]})
    return tokenizer


def test_the_think_block_is_closed_before_the_suffix_while_open(thinking_tokenizer: Any) -> None:
    encode = lambda text: thinking_tokenizer.encode(text, add_special_tokens=False)  # noqa: E731
    think = think_tokens(encode)
    assert think is not None
    start, end = think
    words = encode("so we add them")
    assert think_block_open(think, [*encode("question"), start, *words])
    assert think_block_open(think, words)  # not opened yet: the model opens it first
    assert not think_block_open(think, [start, *words, end, *words])  # answered already
    suffix = probe_suffix_text(None, close_think=True)
    assert suffix == THINK_CLOSE + DYNASOR_PROBE_SUFFIX
    assert encode(suffix)[0] == end  # one token: the block closes as the model would close it
    assert probe_suffix_text("</think> say it", close_think=True) == "</think> say it"


def test_a_tokenizer_without_think_tokens_has_no_think_block(tiny: TransformersBackend) -> None:
    tokenizer = tiny.tokenizer
    think = think_tokens(lambda text: tokenizer.encode(text, add_special_tokens=False))
    assert think is None
    assert not think_block_open(think, [1, 2, 3])
    assert probe_suffix_text(None, close_think=False) == DYNASOR_PROBE_SUFFIX


# ---------------------------------------------------------------------- the context window


@pytest.fixture(scope="module")
def short_context(tmp_path_factory: pytest.TempPathFactory) -> Any:
    path = build_tiny_qwen2(tmp_path_factory.mktemp("short-context"), max_position_embeddings=64)
    backend = TransformersBackend(path, ignore_eos=True, num_threads=1)
    yield backend
    backend.close()


async def _consume(backend: TransformersBackend, request: TraceRequest) -> list[TraceDelta]:
    async with contextlib.aclosing(backend.stream(request)) as stream:
        return [delta async for delta in stream]


async def test_no_max_tokens_runs_to_the_end_of_the_context(short_context: Any) -> None:
    """``max_tokens=None``: as far as the context allows, then "length" (not a silent cut)."""
    request = _request("ctx", max_tokens=None)
    prompt = short_context.count_prompt_tokens(request.prompt)
    deltas = await _consume(short_context, request)
    assert short_context.context_length() == 64
    assert sum(len(d.token_ids) for d in deltas) == 64 - prompt
    assert deltas[-1].finish_reason == "length"
    # A budget past the context ends at the context too; one within it, at the budget.
    capped = await _consume(short_context, _request("ctx-cap", max_tokens=1000))
    assert sum(len(d.token_ids) for d in capped) == 64 - prompt
    assert capped[-1].finish_reason == "length"
    # Resumed at the end of the context: nothing more to produce.
    ids = tuple(t for d in deltas for t in d.token_ids)
    resumed = await _consume(short_context, _request("ctx-full", max_tokens=None, resume=ids))
    assert [(list(d.token_ids), d.finish_reason) for d in resumed] == [([], "length")]


async def test_a_prompt_past_the_context_is_refused_by_name(short_context: Any) -> None:
    long = TraceRequest(
        request_id="too-long",
        trace_index=0,
        prompt="so we add them " * 40,
        sampling=SamplingConfig(temperature=0.0),
        seed=0,
    )
    with pytest.raises(ValueError, match="do not fit the model's context"):
        await _consume(short_context, long)
    assert short_context.live_requests() == set()


async def test_a_probe_at_the_end_of_the_context_answers_unknown(short_context: Any) -> None:
    request = _request("ctx-probe", max_tokens=None)
    prompt = short_context.count_prompt_tokens(request.prompt)
    suffix = len(short_context.tokenizer.encode(DYNASOR_PROBE_SUFFIX, add_special_tokens=False))
    deltas, reply = await _probe_after(short_context, request, 64 - prompt - suffix)
    assert deltas[-1].finish_reason == "length"
    assert reply.unknown and reply.text == "" and reply.prefill_tokens == 0
