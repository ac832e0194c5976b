"""A deadline with nothing finished is a timeout error, as with ChatOpenAI; one that leaves voters
still answers, flagged; terminal events carry final token counts."""

from __future__ import annotations

import pytest
from langchain_core.language_models.fake_chat_models import FakeListChatModel
from langchain_core.output_parsers import StrOutputParser

from deepprune_lc import (
    DeepPruneError,
    DeepPruneReasoner,
    DeepPruneTimeoutError,
    PruningConfig,
    ReplayBackend,
    TokensPrefix,
)
from deepprune_lc.demo import load_demo_pool
from deepprune_lc.testing import StallingBackend

POOL = load_demo_pool()
QUESTION = POOL.problems[0].problem


def slow_model(timeout: float) -> DeepPruneReasoner:
    backend = ReplayBackend(POOL, seconds_per_token=0.01)
    pruning = PruningConfig(n_traces=4, prefix=TokensPrefix(k=10_000))
    return DeepPruneReasoner(backend=backend, pruning=pruning, timeout=timeout)


def test_a_timeout_with_nothing_finished_raises_a_timeout_error_with_the_partial_result() -> None:
    model = slow_model(0.1)
    with pytest.raises(DeepPruneTimeoutError, match=r"deadline \(0\.1 s\) passed before") as info:
        model.invoke(QUESTION)
    error = info.value
    assert isinstance(error, TimeoutError) and isinstance(error, DeepPruneError)
    partial = error.partial_result
    assert partial is not None and partial.fallback == "deadline"
    assert partial.totals.decoded_tokens > 0
    assert all(t.status == "aborted" for t in partial.traces)
    assert model._deepprune().backend.live_requests() == set()  # type: ignore[attr-defined]


async def test_async_and_stream_raise_it_too() -> None:
    model = slow_model(0.1)
    with pytest.raises(DeepPruneTimeoutError):
        await model.ainvoke(QUESTION)
    with pytest.raises(DeepPruneTimeoutError):
        async for _ in model.astream(QUESTION):
            pass


def test_with_fallbacks_and_str_output_parser_see_the_timeout() -> None:
    fallback = FakeListChatModel(responses=["the fallback answered"])
    chain = slow_model(0.1).with_fallbacks([fallback]) | StrOutputParser()
    assert chain.invoke(QUESTION) == "the fallback answered"


def test_a_deadline_that_leaves_voters_still_answers_flagged() -> None:
    # Traces 0 and 1 finish; the others stall until the deadline aborts them.
    backend = StallingBackend(ReplayBackend(POOL), stalled={2, 3, 4, 5}, after=5)
    pruning = PruningConfig(n_traces=6, prefix=TokensPrefix(k=10_000), deadline_s=1.0)
    message = DeepPruneReasoner(backend=backend, pruning=pruning).invoke(QUESTION)
    summary = message.response_metadata["deepprune"]
    assert summary["fallback"] == "deadline"
    assert message.content
    assert summary["trace_status"] == {"finished": 2, "aborted": 4}
