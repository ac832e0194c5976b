"""Events add up: one terminal event per trace, with final token counts, matching the summary."""

from __future__ import annotations

from collections import Counter

import pytest

from deepprune_lc import (
    DeepPrune,
    DeepPruneEvent,
    LexicalJudge,
    PruningConfig,
    ReplayBackend,
    TokensPrefix,
)
from deepprune_lc.core.events import TraceAborted, TraceFinished, TraceParked, TracePruned
from deepprune_lc.demo import load_demo_pool
from deepprune_lc.judges import ConstantJudge
from deepprune_lc.testing import StallingBackend

POOL = load_demo_pool()
TERMINAL = (TraceFinished, TracePruned, TraceAborted)


def check(events: list[DeepPruneEvent], summary: dict[str, object], decoded: int) -> None:
    terminal = [e for e in events if isinstance(e, TERMINAL)]
    per_trace = Counter(e.trace_id for e in terminal)  # type: ignore[attr-defined]
    assert set(per_trace.values()) == {1}, per_trace  # exactly one each
    kinds = Counter(
        {"deepprune.trace_finished": "finished", "deepprune.trace_pruned": "pruned"}.get(
            e.name, "aborted"
        )
        for e in terminal
    )
    assert dict(kinds) == summary["trace_status"]
    assert sum(e.tokens_decoded for e in terminal) == decoded  # type: ignore[attr-defined]


@pytest.mark.parametrize("problem", range(len(POOL.problems)))
async def test_pruned_events_match_the_traces_that_end_pruned(problem: int) -> None:
    config = PruningConfig(n_traces=8, prefix=TokensPrefix(k=16), finalists=2)
    events: list[DeepPruneEvent] = []
    result = await DeepPrune(ReplayBackend(POOL, yield_every=1), ConstantJudge(1.0), config).run(
        POOL.problems[problem].problem, listeners=[events.append]
    )
    parked = [e for e in events if isinstance(e, TraceParked)]
    assert len(parked) > result.summary()["trace_status"].get("pruned", 0)  # some resumed
    check(events, dict(result.summary()), result.totals.decoded_tokens)


async def test_events_add_up_when_the_deadline_aborts_stalled_traces() -> None:
    backend = StallingBackend(ReplayBackend(POOL), stalled={3, 4, 5, 6, 7}, after=20)
    config = PruningConfig(n_traces=8, prefix=TokensPrefix(k=8), finalists=3, deadline_s=1.0)
    events: list[DeepPruneEvent] = []
    result = await DeepPrune(backend, LexicalJudge(), config).run(
        POOL.problems[0].problem, listeners=[events.append]
    )
    assert result.fallback == "deadline"
    check(events, dict(result.summary()), result.totals.decoded_tokens)
