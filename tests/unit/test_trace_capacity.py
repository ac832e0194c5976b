"""A run's default ``n_traces`` fits a replay pool, and ``replay:`` specs never cycle silently.

The default of 16 traces is a sampling engine's. A replay pool holds a fixed number of recorded
traces per question (8 for the demo's grade-school questions); asking for more used to replay the
same traces again, so duplicates agreed with themselves. Now a backend may say how many distinct
traces it has (``TraceCapacity.max_traces``), a run left at the default uses at most that many, a
``replay:`` spec refuses to repeat a trace (the error names the pool size), and an ``n_traces``
the caller set is never changed.
"""

from __future__ import annotations

import asyncio

import pytest

from deepprune_lc import (
    DeepPrune,
    DeepPruneReasoner,
    GenerationError,
    LexicalJudge,
    PruningConfig,
    ReplayBackend,
    TokensPrefix,
)
from deepprune_lc.backends.pool import PoolProblem
from deepprune_lc.core.ports import TraceCapacity
from deepprune_lc.demo import load_demo_pool
from deepprune_lc.runtime.runner import fit_n_traces
from deepprune_lc.testing import FailingBackend

POOL = load_demo_pool()
BAKERY = POOL.by_id("demo-bakery").problem
DIVISORS = POOL.by_id("demo-divisors").problem


def _texts_of(backend: ReplayBackend, prompt: str, n: int) -> list[str]:
    problem = backend.problem_for(prompt)
    return [problem.traces[i % len(problem.traces)].text for i in range(n)]


def test_replay_backend_reports_its_distinct_traces_per_prompt() -> None:
    backend = ReplayBackend(POOL)
    assert isinstance(backend, TraceCapacity)
    assert backend.max_traces(BAKERY) == 8
    assert backend.max_traces(DIVISORS) == 16
    assert backend.max_traces([{"role": "user", "content": BAKERY}]) == 8
    assert backend.max_traces("a question the pool does not hold") is None


def test_a_default_run_uses_each_recorded_trace_once() -> None:
    """``DeepPruneReasoner(backend="replay:demo")`` with defaults: 8 traces, not 16 over 8."""
    message = DeepPruneReasoner(backend="replay:demo").invoke(BAKERY)
    summary = message.response_metadata["deepprune"]
    assert sum(summary["trace_status"].values()) == 8


@pytest.mark.parametrize("problem", POOL.problems, ids=[problem.id for problem in POOL.problems])
def test_the_defaults_answer_every_demo_question_right(problem: PoolProblem) -> None:
    """A first run on ``replay:demo`` with no settings votes the right answer on each question."""
    message = DeepPruneReasoner(backend="replay:demo").invoke(problem.problem)
    assert message.response_metadata["deepprune"]["answer"] == problem.answer


def test_default_n_traces_adapts_per_question_and_an_explicit_one_is_kept() -> None:
    backend = ReplayBackend(POOL, yield_every=1)  # the constructor's default: reuse="cycle"
    defaults = DeepPrune(backend, LexicalJudge())
    assert len(asyncio.run(defaults.run(BAKERY)).traces) == 8
    assert len(asyncio.run(defaults.run(DIVISORS)).traces) == 16
    # Other settings given, n_traces left alone: it still adapts.
    tuned = DeepPrune(backend, LexicalJudge(), PruningConfig(prefix=TokensPrefix(k=40)))
    assert len(asyncio.run(tuned.run(BAKERY)).traces) == 8
    # An n_traces the caller set is kept, even at the default's value: this backend cycles.
    explicit = DeepPrune(backend, LexicalJudge(), PruningConfig(n_traces=16))
    assert len(asyncio.run(explicit.run(BAKERY)).traces) == 16
    assert explicit.config.n_traces == defaults.config.n_traces == 16  # the configs are unchanged


def test_a_replay_spec_refuses_more_traces_than_recorded_and_names_the_pool_size() -> None:
    model = DeepPruneReasoner(backend="replay:demo", pruning=PruningConfig(n_traces=32))
    with pytest.raises(GenerationError, match=r"recorded 8 traces of problem 'demo-bakery'") as e:
        model.invoke(BAKERY)
    assert "n_traces=8" in str(e.value)
    # The question with 16 recorded traces serves 16, and the run's settings are as given.
    sixteen = DeepPruneReasoner(backend="replay:demo", pruning=PruningConfig(n_traces=16))
    summary = sixteen.invoke(DIVISORS).response_metadata["deepprune"]
    assert sum(summary["trace_status"].values()) == 16


def test_backends_without_the_capability_are_left_alone() -> None:
    """A backend that does not advertise a capacity (an engine, a wrapper) runs the default 16."""
    wrapped = FailingBackend(ReplayBackend(POOL, yield_every=1), trace_index=99, after=10**6)
    assert not isinstance(wrapped, TraceCapacity)
    config = PruningConfig()
    assert fit_n_traces(config, wrapped, BAKERY) is config
    result = asyncio.run(DeepPrune(wrapped, LexicalJudge()).run(BAKERY))
    assert len(result.traces) == 16


def test_fit_n_traces_only_ever_lowers_an_unset_default() -> None:
    backend = ReplayBackend(POOL)
    assert fit_n_traces(PruningConfig(), backend, BAKERY).n_traces == 8
    assert fit_n_traces(PruningConfig(), backend, DIVISORS).n_traces == 16
    assert fit_n_traces(PruningConfig(), backend, "not in the pool").n_traces == 16
    assert fit_n_traces(PruningConfig(n_traces=4), backend, BAKERY).n_traces == 4
    assert fit_n_traces(PruningConfig(n_traces=12), backend, BAKERY).n_traces == 12


def test_a_timeout_does_not_pin_the_default_n_traces() -> None:
    """A deadline is not a trace count: the default still fits the pool with ``timeout`` given."""
    model = DeepPruneReasoner(
        backend="replay:demo", pruning=PruningConfig(prefix=TokensPrefix(k=40))
    )
    summary = model.invoke(BAKERY, timeout=30).response_metadata["deepprune"]
    assert sum(summary["trace_status"].values()) == 8
