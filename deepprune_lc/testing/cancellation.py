"""Cancel a call after a number of event-loop turns and report what it left behind.

Every surface that starts a run (``DeepPrune.run``, the chat model's ``ainvoke`` and ``astream``, a
LangGraph graph with a DeepPrune node) must leave nothing behind when cancelled at any point: no
pending task and nothing reported to the loop's exception handler ("Task was destroyed but it is
pending!", "Task exception was never retrieved"). A property test draws the number of turns (and
sometimes a second cancellation while the first one unwinds) and checks ``CancelOutcome``; what is
live in the backend it checks itself, since that is the backend's to say.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["CancelOutcome", "cancel_after_turns", "leftover_tasks"]


@dataclass
class CancelOutcome:
    """What a cancelled call left: pending tasks, loop-reported errors, whether it had finished."""

    left: set[asyncio.Task[Any]] = field(default_factory=set)
    reported: list[str] = field(default_factory=list)
    #: The call had already returned when the cancellation came (the point was past its end).
    finished_first: bool = False


async def leftover_tasks() -> set[asyncio.Task[Any]]:
    """Tasks still pending besides the caller's, after letting finished ones settle."""
    for _ in range(5):
        await asyncio.sleep(0)
    gc.collect()
    current = asyncio.current_task()
    return {t for t in asyncio.all_tasks() if t is not current and not t.done()}


async def cancel_after_turns(
    call: Callable[[], Awaitable[Any]], turns: int, again: int | None = None
) -> CancelOutcome:
    """Start ``call()``, cancel it after ``turns`` loop turns (and again ``again`` turns later),
    wait for it to return, and report what is left. Run it on a fresh event loop: it installs an
    exception handler that records what the loop reports."""
    loop = asyncio.get_running_loop()
    outcome = CancelOutcome()
    loop.set_exception_handler(
        lambda _, context: outcome.reported.append(str(context.get("message")))
    )
    task = asyncio.ensure_future(call())
    for _ in range(turns):
        await asyncio.sleep(0)
    outcome.finished_first = task.done()
    task.cancel()
    if again is not None:
        for _ in range(again):
            await asyncio.sleep(0)
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    outcome.left = await leftover_tasks()
    del task
    gc.collect()
    await asyncio.sleep(0)
    return outcome
