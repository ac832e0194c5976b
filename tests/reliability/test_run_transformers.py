"""The run's fault handling on a real engine: the transformers backend with a tiny random model.

The same guarantees as on replay, checked against the engine's own state (``live_requests``,
``wait_idle``): a hung or malformed judge falls back, a deadline that meets a hung judge ends
promptly, a stalled stream ends the run, and cancellation at any point leaves the engine idle
with no trace decoding past the driver's abort slack (the steps-to-stop figure).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import statistics
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from reliability_faults import (
    CallableJudge,
    HungJudge,
    StallingBackend,
    cancel_at_tokens,
    leftover_tasks,
)

from deepprune_lc import (
    DeepPrune,
    GenerationError,
    LexicalJudge,
    PruningConfig,
    SamplingConfig,
    TokensPrefix,
)
from deepprune_lc.runtime.driver import ABORT_SLACK_TOKENS
from deepprune_lc.testing import RecordingBackend

transformers_backend = pytest.importorskip("deepprune_transformers")
testing = pytest.importorskip("deepprune_transformers.testing")

PROMPT = [{"role": "user", "content": "What is 6 times 7? Think step by step."}]
SAMPLING = SamplingConfig(max_tokens=48)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    path: Path = testing.build_tiny_qwen2(tmp_path_factory.mktemp("tiny-qwen2-reliability"))
    backend = transformers_backend.TransformersBackend(
        path, ignore_eos=True, num_threads=1, model_name="tiny-qwen2"
    )
    yield backend
    backend.close()


async def _idle(backend: Any) -> None:
    await asyncio.wait_for(backend.wait_idle(), timeout=60)
    assert backend.live_requests() == set()
    assert backend.engine_row_ids() == []


def _config(**overrides: Any) -> PruningConfig:
    base: dict[str, Any] = {"n_traces": 6, "prefix": TokensPrefix(k=8), "finalists": 2}
    return PruningConfig(**(base | overrides))


@pytest.mark.parametrize("judge_kind", ["hung", "plain_list"])
async def test_a_failing_judge_falls_back_on_the_engine(tiny: Any, judge_kind: str) -> None:
    judge: Any = HungJudge() if judge_kind == "hung" else CallableJudge(lambda p: [0.9] * len(p))
    runner = DeepPrune(tiny, judge, _config(judge_timeout_s=0.5), sampling=SAMPLING)
    result = await asyncio.wait_for(runner.run(PROMPT), timeout=120)
    assert result.fallback == "judge_error"
    assert result.error is not None and type(judge).__name__ in result.error
    assert all(t.status == "finished" and t.tokens_decoded == 48 for t in result.traces)
    await _idle(tiny)


async def test_a_deadline_meeting_a_hung_judge_ends_promptly_on_the_engine(tiny: Any) -> None:
    sampling = SamplingConfig(max_tokens=100_000)  # nobody finishes before the deadline
    runner = DeepPrune(tiny, HungJudge(), _config(deadline_s=1.0), sampling=sampling)
    result = await asyncio.wait_for(runner.run(PROMPT), timeout=120)
    assert result.fallback == "deadline" and result.answer is None
    assert result.error is not None and "HungJudge" in result.error
    assert result.totals.wall_time_s < 6.0
    await _idle(tiny)


async def test_a_stalled_stream_ends_the_run_and_frees_the_engine(tiny: Any) -> None:
    runner = DeepPrune(
        # Trace 2's stream stops being read after 5 deltas.
        StallingBackend(tiny, stall=[2], after=5),
        LexicalJudge(),
        _config(idle_timeout_s=0.5),
        sampling=SAMPLING,
    )
    with pytest.raises(GenerationError, match="trace 2 stalled"):
        await asyncio.wait_for(runner.run(PROMPT), timeout=120)
    await _idle(tiny)


async def test_cancelling_at_random_points_leaves_the_engine_idle(tiny: Any) -> None:
    rng = random.Random(7)
    runner = DeepPrune(tiny, LexicalJudge(), _config(), sampling=SamplingConfig(max_tokens=200))
    for _ in range(5):
        run = asyncio.ensure_future(runner.run(PROMPT))
        await asyncio.sleep(rng.uniform(0.0, 0.3))
        run.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await run
        await _idle(tiny)
        assert await leftover_tasks() == set()


async def test_traces_stop_within_the_abort_slack_after_a_cancel_on_the_engine(tiny: Any) -> None:
    """How many tokens the transformers engine still delivers for a run's traces once cancelled.

    6 seeded points, each a run of 6 end-of-sequence-free traces (200-token budget, no parking
    before 190) cancelled once its streams delivered a random number of tokens. Guards the abort
    on cancellation: every stream has ended when the cancelled call returns, none delivered more
    than the driver's ``ABORT_SLACK_TOKENS`` (plus the delta that crossed it) after its abort, and
    the engine's rows are free. A cancellation that left the traces decoding fails all three.
    Prints the figure in docs/reliability.md: per point, the most tokens one trace delivered
    after the cancellation (one token per engine step for a running row).
    """
    rng = random.Random(11)
    config = _config(prefix=TokensPrefix(k=190))
    after_cancel: list[int] = []
    after_abort: list[int] = []
    for _ in range(6):
        recorder = RecordingBackend(tiny)
        runner = DeepPrune(
            recorder, LexicalJudge(), config, sampling=SamplingConfig(max_tokens=200)
        )
        await cancel_at_tokens(runner.run(PROMPT), recorder, rng.randint(6, 6 * 150), poll_s=0.005)
        assert recorder.open == set()
        slack = ABORT_SLACK_TOKENS + recorder.largest_delta
        assert all(n <= slack for n in recorder.after_abort.values()), recorder.after_abort
        assert all(n <= slack for n in recorder.after_mark.values()), recorder.after_mark
        after_cancel.append(max(recorder.after_mark.values(), default=0))
        after_abort.append(max(recorder.after_abort.values(), default=0))
        await _idle(tiny)
        assert await leftover_tasks() == set()
    print(
        f"\ntransformers: tokens the last trace delivered after the cancel, per point: "
        f"{after_cancel} (median {statistics.median(after_cancel)}, max {max(after_cancel)}); "
        f"after its abort call: {after_abort}"
    )
