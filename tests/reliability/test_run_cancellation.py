"""Cancelling a run at any point aborts every trace and leaves nothing behind.

A property over random cancellation points (event-loop turns into the run; sometimes a second
cancellation while the first one's shutdown is under way) on the replay backend, for every surface
that starts a run: ``DeepPrune.run``, ``DeepPrune.stream``, ``ainvoke`` and ``astream``. Each
example runs on a fresh event loop and checks, once the cancelled call has returned: no request
live in the backend, no task of ours still pending, and nothing reported to the loop's exception
handler ("Task was destroyed but it is pending!", "Task exception was never retrieved"), and no
coroutine warned "never awaited".

Before, ``astream`` left its ``delivered.wait()`` task pending on every cancelled call, and a second
cancellation interrupted the driver's shutdown with streams still open. The last test counts the
tokens a cancelled run's traces still deliver (the steps-to-stop figure in docs/reliability.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import statistics
import warnings
from collections.abc import Awaitable, Callable
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reliability_faults import QUESTION, cancel_at_tokens, leftover_tasks, synthetic_backend

from deepprune_lc import (
    DeepPrune,
    DeepPruneReasoner,
    LexicalJudge,
    PruningConfig,
    ReplayBackend,
    SelfConsistency,
    TokensPrefix,
)
from deepprune_lc.runtime.driver import ABORT_SLACK_TOKENS
from deepprune_lc.testing import RecordingBackend, cancel_after_turns

CONFIG = PruningConfig(n_traces=8, prefix=TokensPrefix(k=16), finalists=2)


def _surface(name: str, backend: ReplayBackend, method: str) -> Callable[[], Awaitable[Any]]:
    if method == "cons":
        runner: Any = SelfConsistency(backend, 8, answers="exact")
    else:
        runner = DeepPrune(backend, LexicalJudge(), CONFIG, answers="exact")
    model = DeepPruneReasoner(
        backend=backend, judge=LexicalJudge(), pruning=CONFIG, answers="exact"
    )

    async def run() -> Any:
        return await runner.run(QUESTION)

    async def stream() -> Any:
        return [event async for event in runner.stream(QUESTION)]

    async def ainvoke() -> Any:
        return await model.ainvoke(QUESTION)

    async def astream() -> Any:
        return [chunk async for chunk in model.astream(QUESTION)]

    return {"run": run, "stream": stream, "ainvoke": ainvoke, "astream": astream}[name]


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,
)
@given(
    surface=st.sampled_from(["run", "stream", "ainvoke", "astream"]),
    method=st.sampled_from(["deepprune", "cons"]),
    turns=st.integers(0, 400),
    again=st.none() | st.integers(0, 20),
)
def test_cancelling_at_any_point_aborts_everything_and_leaks_nothing(
    surface: str, method: str, turns: int, again: int | None
) -> None:
    backend = synthetic_backend()
    if surface in ("ainvoke", "astream") and method == "cons":
        method = "deepprune"  # the chat model runs DeepPrune
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        outcome = asyncio.run(cancel_after_turns(_surface(surface, backend, method), turns, again))
    never_awaited = [str(w.message) for w in caught if "never awaited" in str(w.message)]
    assert never_awaited == []
    assert backend.live_requests() == set()
    assert outcome.left == set(), f"tasks left pending: {outcome.left}"
    assert outcome.reported == [], outcome.reported


async def test_a_cancelled_astream_leaves_no_task_even_when_repeated() -> None:
    backend = synthetic_backend()
    model = DeepPruneReasoner(
        backend=backend, judge=LexicalJudge(), pruning=CONFIG, answers="exact"
    )
    loop = asyncio.get_running_loop()
    reported: list[str] = []
    loop.set_exception_handler(lambda _, context: reported.append(str(context.get("message"))))
    for turns in range(0, 60, 5):
        consumer = asyncio.ensure_future(_drain(model))
        for _ in range(turns):
            await asyncio.sleep(0)
        consumer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await consumer
        assert await leftover_tasks() == set()
        assert backend.live_requests() == set()
        assert reported == [], f"after {turns} turns: {reported}"
    loop.set_exception_handler(None)


async def _drain(model: DeepPruneReasoner) -> list[Any]:
    return [chunk async for chunk in model.astream(QUESTION)]


async def test_traces_stop_within_the_abort_slack_after_a_cancel_on_replay() -> None:
    """How many tokens the replay backend still delivers for a run's traces once it is cancelled.

    12 seeded points, each a run of 8 traces of 200 tokens (no parking before 190) cancelled once
    its streams delivered a random number of tokens. Guards the abort on cancellation: every
    stream has ended when the cancelled call returns, and none delivered more than the driver's
    ``ABORT_SLACK_TOKENS`` after its abort (replay aborts exactly: none). A cancellation that left
    the traces running fails both. Prints the figure in docs/reliability.md: per point, the most
    tokens one trace delivered after the cancellation (replay: one token per loop turn).
    """
    rng = random.Random(5)
    config = PruningConfig(n_traces=8, prefix=TokensPrefix(k=190), finalists=2)
    after_cancel: list[int] = []
    for _ in range(12):
        recorder = RecordingBackend(synthetic_backend())
        runner = DeepPrune(recorder, LexicalJudge(), config, answers="exact")
        await cancel_at_tokens(runner.run(QUESTION), recorder, rng.randint(8, 8 * 150))
        assert recorder.open == set()
        assert all(n <= ABORT_SLACK_TOKENS for n in recorder.after_abort.values())
        assert all(n == 0 for n in recorder.after_abort.values())  # replay: an exact abort
        assert all(n <= ABORT_SLACK_TOKENS for n in recorder.after_mark.values())
        after_cancel.append(max(recorder.after_mark.values(), default=0))
        assert recorder.inner.live_requests() == set()
        assert await leftover_tasks() == set()
    print(
        f"\nreplay: tokens the last trace delivered after the cancel, per point: {after_cancel} "
        f"(median {statistics.median(after_cancel)}, max {max(after_cancel)})"
    )
