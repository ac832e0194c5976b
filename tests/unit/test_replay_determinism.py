"""Replay runs are reproducible, and ``invoke`` and ``ainvoke`` decode the same tokens.

The replay backend advances every live trace by one token per event-loop turn, so a run's decisions
depend only on the order of turns: how many tokens each trace holds when a judge verdict lands.
``invoke`` (on the background loop, a sync callback manager) and ``ainvoke`` (the caller's loop, an
async one) must take the same number of turns between a judge request and its verdict. They did not:
the judge's child run (``TracedJudge``) awaited LangChain's async ``on_chain_end``, which is
``@shielded`` (it runs in a task of its own, two turns even with no handler at all), so on the async
path every trace decoded a couple of tokens more per judge call (2057 against 2084 tokens on a
recorded pool). Handlers that really are async (``astream_events``) still take turns of their own,
as real time does on an engine; with none, or only sync ones (LangSmith's tracer), both paths agree.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from langchain_core.messages import AIMessage

from deepprune_lc.backends import ReplayBackend
from deepprune_lc.core import PruningConfig
from deepprune_lc.demo import load_demo_pool
from deepprune_lc.langchain import DeepPruneReasoner

QUESTION = "A synthetic question: what is the answer?"
DEMO_QUESTIONS = [problem.problem for problem in load_demo_pool().problems]


def _outcome(message: AIMessage) -> dict[str, Any]:
    """What must not depend on the path: usage and the summary (wall time aside)."""
    summary = dict(message.response_metadata["deepprune"])
    summary.pop("wall_time_s")
    return {"usage": message.usage_metadata, "summary": summary, "content": message.content}


def _synthetic(answers: list[str]) -> DeepPruneReasoner:
    backend = ReplayBackend.synthetic(16, 400, prompt=QUESTION, answers=answers, yield_every=1)
    return DeepPruneReasoner(backend=backend, pruning=PruningConfig(n_traces=16))


@pytest.mark.parametrize("answers", [["7", "12"], ["7", "7", "12"]])
def test_the_same_call_twice_decodes_the_same_tokens(answers: list[str]) -> None:
    model = _synthetic(answers)
    first, again = model.invoke(QUESTION), model.invoke(QUESTION)
    assert _outcome(first) == _outcome(again)
    a, b = (asyncio.run(model.ainvoke(QUESTION)) for _ in range(2))
    assert _outcome(a) == _outcome(b)


def test_invoke_and_ainvoke_decode_the_same_tokens() -> None:
    calls = [(_synthetic(answers), QUESTION) for answers in (["7", "12"], ["7", "7", "12"])]
    demo = DeepPruneReasoner(backend="replay:demo", pruning=PruningConfig(seed=7))
    calls += [(demo, question) for question in DEMO_QUESTIONS]
    for model, question in calls:
        sync = _outcome(model.invoke(question))
        assert sync == _outcome(asyncio.run(model.ainvoke(question))), question
