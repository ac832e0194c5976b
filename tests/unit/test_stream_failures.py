"""What a run says when a trace's stream fails: where it failed, in words a user can act on.

A request that fails before it produced anything (an unknown prompt, an engine that is down) used to
read "failed mid-stream after 0 tokens".
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator

import pytest

from deepprune_lc.backends import ReplayBackend
from deepprune_lc.core import GenerationError, Prompt, PruningConfig, TokensPrefix
from deepprune_lc.core.ports import TraceDelta, TraceRequest
from deepprune_lc.judges import LexicalJudge
from deepprune_lc.runtime import DeepPrune

QUESTION = "A synthetic question: what is the answer?"


def _backend() -> ReplayBackend:
    return ReplayBackend.synthetic(8, 300, prompt=QUESTION, answers=["7", "12"], yield_every=1)


async def test_a_request_that_fails_before_any_token_says_so() -> None:
    backend = ReplayBackend.synthetic(4, 100, prompt=QUESTION)
    with pytest.raises(GenerationError) as caught:
        await DeepPrune(backend, LexicalJudge(), PruningConfig(n_traces=4)).run("Another question?")
    message = str(caught.value)
    assert "failed before its first token" in message
    assert "mid-stream" not in message and "after 0 tokens" not in message
    assert "prompt not found in replay pool" in message  # the backend's own reason
    assert backend.live_requests() == set()


class _FailsOnResume:
    """Replay, except that a resumed request fails before its first token (an engine gone away)."""

    def __init__(self, inner: ReplayBackend) -> None:
        self.inner = inner
        self.resumed_at: list[int] = []

    def stream(self, request: TraceRequest) -> AsyncGenerator[TraceDelta, None]:
        return self._stream(request)

    async def _stream(self, request: TraceRequest) -> AsyncGenerator[TraceDelta, None]:
        if request.resume_token_ids:
            self.resumed_at.append(len(request.resume_token_ids))
            raise ConnectionError("engine restarted")
        async with contextlib.aclosing(self.inner.stream(request)) as deltas:
            async for delta in deltas:
                yield delta

    async def abort(self, request_id: str) -> None:
        await self.inner.abort(request_id)

    def count_prompt_tokens(self, prompt: Prompt) -> int:
        return self.inner.count_prompt_tokens(prompt)


async def test_a_resumed_request_that_fails_at_once_names_its_resume_point() -> None:
    backend = _FailsOnResume(_backend())
    config = PruningConfig(n_traces=8, prefix=TokensPrefix(k=16), finalists=2)
    with pytest.raises(GenerationError, match="failed before its first token after resuming at"):
        await DeepPrune(backend, LexicalJudge(), config).run(QUESTION)  # type: ignore[arg-type]
    assert backend.resumed_at  # a parked trace was resumed, and that request failed
    assert backend.inner.live_requests() == set()
