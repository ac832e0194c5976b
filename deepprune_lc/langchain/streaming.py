"""How the one-chunk answer reaches ``stream``/``astream`` and streaming handlers.

The answer only exists once the traces have voted, so a DeepPrune "stream" is one chunk computed on
the generate path (see ``DeepPruneReasoner.stream`` for why). These helpers carry that chunk.
"""

from __future__ import annotations

import asyncio
from contextvars import ContextVar

from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage

__all__ = ["STREAM_CALL", "ChunkHandoff", "as_last_chunk"]


class ChunkHandoff:
    """Hands ``astream`` the answer chunk while the model run is still open.

    ``astream`` runs ``ainvoke`` as a task; its ``_agenerate`` delivers the chunk here and waits
    until the consumer has taken it, so the chunk is yielded before the run ends. That is what
    ``astream_events`` needs: it taps the stream of the run it started and drops chunks that arrive
    after the run's end.
    """

    def __init__(self) -> None:
        self.chunk: AIMessageChunk | None = None
        self.delivered = asyncio.Event()
        self.consumed = asyncio.Event()

    async def deliver(self, chunk: AIMessageChunk) -> None:
        if self.delivered.is_set():  # a nested reasoner call inside the run: not ours to report
            return
        self.chunk = chunk
        self.delivered.set()
        await self.consumed.wait()


#: Set while ``stream``/``astream`` run the generate path: the answer is then reported to the run's
#: handlers as its one token, as LangChain's own streaming would (``astream`` also hands it over).
STREAM_CALL: ContextVar[ChunkHandoff | bool] = ContextVar("deepprune_stream_call", default=False)


def as_last_chunk(message: BaseMessage) -> AIMessageChunk:
    """The final message as the stream's one (and last) chunk; adding it up gives it back."""
    if not isinstance(message, AIMessage):  # pragma: no cover - invoke always returns an AIMessage
        raise TypeError(f"expected an AIMessage, got {type(message).__name__}")
    return AIMessageChunk(
        content=message.content,
        id=message.id,
        additional_kwargs=dict(message.additional_kwargs),
        response_metadata=dict(message.response_metadata),
        usage_metadata=message.usage_metadata,
        chunk_position="last",
    )
