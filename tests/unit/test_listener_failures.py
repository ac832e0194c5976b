"""A listener or callback that raises observes the run; it can never stop or hang it."""

from __future__ import annotations

import asyncio
import logging
from typing import Any
from uuid import UUID

import pytest
from langchain_core.callbacks import BaseCallbackHandler

from deepprune_lc import (
    DeepPrune,
    DeepPruneEvent,
    DeepPruneReasoner,
    LexicalJudge,
    PruningConfig,
    ReplayBackend,
    TokensPrefix,
)
from deepprune_lc.core.events import TracePruned
from deepprune_lc.demo import load_demo_pool

CONFIG = PruningConfig(n_traces=8, prefix=TokensPrefix(k=16), finalists=2, deadline_s=3)


def raise_on_pruned(event: DeepPruneEvent) -> None:
    if isinstance(event, TracePruned):
        raise RuntimeError("listener bug")


def raise_always(event: DeepPruneEvent) -> None:
    raise RuntimeError("listener bug")


@pytest.mark.parametrize("listener", [raise_on_pruned, raise_always])
async def test_a_raising_listener_neither_hangs_nor_changes_the_run(
    listener: Any, caplog: pytest.LogCaptureFixture
) -> None:
    pool = load_demo_pool()
    question = pool.problems[0].problem
    backend = ReplayBackend(pool, yield_every=1)
    runner = DeepPrune(backend, LexicalJudge(), CONFIG)
    expected = await runner.run(question)
    assert any(t.status == "pruned" for t in expected.traces)  # the listener will be called
    with caplog.at_level(logging.ERROR, logger="deepprune_lc.runtime.driver"):
        # Before the fix, the emit raised between a decision and its actions: RunDone was lost
        # and run() waited forever, deadline or not. The timeout turns a hang into a failure.
        result = await asyncio.wait_for(runner.run(question, listeners=[listener]), timeout=60)
    assert result.answer == expected.answer
    assert [t.status for t in result.traces] == [t.status for t in expected.traces]
    assert result.fallback is None
    assert backend.live_requests() == set()
    assert "listener bug" in caplog.text
    assert "listener" in caplog.text and "the run goes on" in caplog.text


class RaisingHandler(BaseCallbackHandler):
    """A LangChain handler that asks for its errors to be raised, then raises on every event."""

    raise_error = True
    run_inline = True

    def on_custom_event(self, name: str, data: Any, *, run_id: UUID, **kwargs: Any) -> None:
        raise RuntimeError(f"handler bug on {name}")


def test_a_raising_callback_handler_does_not_hang_invoke(caplog: pytest.LogCaptureFixture) -> None:
    model = DeepPruneReasoner(backend="replay:demo", pruning=CONFIG)
    question = load_demo_pool().problems[0].problem
    expected = model.invoke(question)
    with caplog.at_level(logging.ERROR, logger="deepprune_lc.runtime.driver"):
        message = model.invoke(question, config={"callbacks": [RaisingHandler()]})
    assert message.content == expected.content
    assert "handler bug" in caplog.text
