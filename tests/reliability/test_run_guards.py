"""Exceptions raised outside the guarded stream loop end the run with a clear error, never a hang.

A ``stream()`` that raises before returning an iterator, a user ``extract`` or ``equivalent`` that
raises (or returns a non-string), and a listener that raises on any event type. Before, the first
two read "internal error in the DeepPrune driver"; listeners are observers and never stop a run.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from reliability_faults import (
    QUESTION,
    StallingBackend,
    SyncRaisingBackend,
    leftover_tasks,
    synthetic_backend,
)

from deepprune_lc import (
    AnswerRules,
    DeepPrune,
    DeepPruneError,
    DeepPruneEvent,
    EarlyStoppingConfig,
    EarlyStoppingSelfConsistency,
    GenerationError,
    LexicalJudge,
    PruningConfig,
    SelfConsistency,
    TokensPrefix,
    extract_answer,
)
from deepprune_lc.core import events
from deepprune_lc.core.answers import exact_equivalent

CONFIG = PruningConfig(n_traces=8, prefix=TokensPrefix(k=16), finalists=2)
RUNNERS = ["cons", "esc", "deepprune"]


def _runner(kind: str, backend: Any, answers: AnswerRules | str = "exact") -> Any:
    if kind == "cons":
        return SelfConsistency(backend, 8, answers=answers)
    if kind == "esc":
        return EarlyStoppingSelfConsistency(
            backend, EarlyStoppingConfig(n_traces=8, window=4), answers=answers
        )
    return DeepPrune(backend, LexicalJudge(), CONFIG, answers=answers)


@pytest.mark.parametrize("kind", RUNNERS)
async def test_a_stream_call_that_raises_at_once_is_a_generation_error(kind: str) -> None:
    backend = SyncRaisingBackend(synthetic_backend())
    with pytest.raises(GenerationError) as caught:
        await asyncio.wait_for(_runner(kind, backend).run(QUESTION), timeout=60)
    message = str(caught.value)
    assert "failed before its first token" in message
    assert "ConnectionRefusedError('engine refused the request')" in message
    assert "internal error" not in message
    assert isinstance(caught.value.__cause__, ConnectionRefusedError)
    assert caught.value.partial_result is not None
    assert await leftover_tasks() == set()


def _bad_extract(text: str) -> str | None:
    raise ValueError("extractor bug")


def _bad_equivalent(a: str, b: str) -> bool:
    raise KeyError("comparator bug")


RULES = {
    "extract_raises": (
        AnswerRules.custom(_bad_extract, exact_equivalent, name="mine"),
        "answer rules 'mine': extract raised ValueError('extractor bug')",
    ),
    "equivalent_raises": (
        AnswerRules.custom(extract_answer, _bad_equivalent, name="mine"),
        "answer rules 'mine': equivalent raised KeyError('comparator bug') comparing",
    ),
    "extract_returns_int": (
        AnswerRules.custom(lambda text: 7, exact_equivalent, name="mine"),  # type: ignore[arg-type,return-value]
        "answer rules 'mine': extract returned int 7, expected a string or None",
    ),
}


@pytest.mark.parametrize("kind", RUNNERS)
@pytest.mark.parametrize("case", sorted(RULES))
async def test_user_answer_rules_that_fail_end_the_run_with_a_clear_error(
    kind: str, case: str
) -> None:
    rules, expected = RULES[case]
    backend = synthetic_backend()
    with pytest.raises(DeepPruneError) as caught:
        await asyncio.wait_for(_runner(kind, backend, rules).run(QUESTION), timeout=60)
    assert type(caught.value).__name__ == "AnswerRulesError"
    assert expected in str(caught.value)
    assert "internal error" not in str(caught.value)
    partial = caught.value.partial_result
    assert partial is not None and partial.totals.decoded_tokens > 0
    assert backend.live_requests() == set()
    assert await leftover_tasks() == set()


async def test_an_equivalent_that_raises_at_the_deadline_vote_fails_the_run_cleanly() -> None:
    # Traces 0 and 1 finish (answers 7 and 12); the rest stall, so the vote runs at the deadline.
    backend = StallingBackend(synthetic_backend(), stall=range(2, 8))
    rules = AnswerRules.custom(extract_answer, _bad_equivalent, name="mine")
    runner = SelfConsistency(backend, 8, answers=rules, deadline_s=0.3, idle_timeout_s=None)
    with pytest.raises(DeepPruneError, match="equivalent raised") as caught:
        await asyncio.wait_for(runner.run(QUESTION), timeout=60)
    assert caught.value.partial_result is not None
    assert backend.live_requests() == set()


EVENT_TYPES = sorted(
    (
        cls
        for cls in vars(events).values()
        if isinstance(cls, type) and issubclass(cls, DeepPruneEvent) and cls is not DeepPruneEvent
    ),
    key=lambda cls: cls.__name__,
)


def test_every_event_type_is_covered() -> None:
    assert {cls.__name__ for cls in EVENT_TYPES} >= {
        "TraceStarted",
        "TraceFinished",
        "RunCompleted",
        "JudgeScored",
        "TracePruned",
    }


@pytest.mark.parametrize("event_type", EVENT_TYPES, ids=lambda cls: cls.__name__)
@pytest.mark.parametrize("kind", RUNNERS)
async def test_a_listener_raising_on_any_event_type_neither_stops_nor_changes_the_run(
    kind: str, event_type: type[DeepPruneEvent]
) -> None:
    seen: list[str] = []

    def listener(event: DeepPruneEvent) -> None:
        seen.append(type(event).__name__)
        if isinstance(event, event_type):
            raise RuntimeError(f"listener bug on {event_type.__name__}")

    expected = await _runner(kind, synthetic_backend()).run(QUESTION)
    backend = synthetic_backend()
    result = await asyncio.wait_for(
        _runner(kind, backend).run(QUESTION, listeners=[listener]), timeout=60
    )
    assert result.answer == expected.answer
    assert [t.status for t in result.traces] == [t.status for t in expected.traces]
    assert seen[-1] == "RunCompleted"
    assert backend.live_requests() == set()
