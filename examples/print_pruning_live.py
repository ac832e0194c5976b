"""Print every pruning decision as it happens, with a typed LangChain callback handler.

``DeepPruneCallbackHandler`` turns the reasoner's custom events into typed method calls
(``on_trace_parked(event: TraceParked, run_id=...)``, ...): override the ones you need and pass the
handler like any LangChain callback, per call or in the constructor.

Run: .venv/bin/python examples/print_pruning_live.py   (offline: the embedded trace pool)
"""

from __future__ import annotations

import asyncio
from uuid import UUID

from deepprune_lc import DeepPruneCallbackHandler, DeepPruneReasoner, PruningConfig, TokensPrefix
from deepprune_lc.core.events import (
    TraceAborted,
    TraceClustered,
    TraceFinished,
    TraceParked,
    TracePruned,
    TraceResumed,
    VoteCounted,
)
from deepprune_lc.demo import load_demo_pool


class PrintPruning(DeepPruneCallbackHandler):
    """One line per decision, stamped with the time since the run started."""

    def _say(self, elapsed_s: float, text: str) -> None:
        print(f"  [{elapsed_s * 1000:6.1f} ms] {text}")

    def on_trace_clustered(self, event: TraceClustered, *, run_id: UUID) -> None:
        if event.founded:
            self._say(event.elapsed_s, f"trace {event.trace_id} founds cluster {event.cluster_id}")
        else:
            score = f"{event.score:.2f}" if event.score is not None else "-"
            self._say(
                event.elapsed_s,
                f"trace {event.trace_id} joins cluster {event.cluster_id} (judge {score}, "
                f"cluster now {event.cluster_size})",
            )

    def on_trace_parked(self, event: TraceParked, *, run_id: UUID) -> None:
        self._say(
            event.elapsed_s,
            f"trace {event.trace_id} PARKED after {event.tokens_decoded} tokens (redundant)",
        )

    def on_trace_pruned(self, event: TracePruned, *, run_id: UUID) -> None:
        self._say(event.elapsed_s, f"trace {event.trace_id} pruned: it will not be resumed")

    def on_trace_resumed(self, event: TraceResumed, *, run_id: UUID) -> None:
        self._say(event.elapsed_s, f"trace {event.trace_id} resumed as a finalist")

    def on_trace_aborted(self, event: TraceAborted, *, run_id: UUID) -> None:
        self._say(
            event.elapsed_s,
            f"trace {event.trace_id} stopped ({event.reason}) after {event.tokens_decoded} tokens",
        )

    def on_trace_finished(self, event: TraceFinished, *, run_id: UUID) -> None:
        self._say(
            event.elapsed_s,
            f"trace {event.trace_id} finished: answer {event.answer} ({event.tokens_decoded} tokens)",
        )

    def on_vote(self, event: VoteCounted, *, run_id: UUID) -> None:
        votes = ", ".join(f"{v['answer']} x{v['weight']:g}" for v in event.votes)
        self._say(event.elapsed_s, f"vote: {votes} -> {event.answer}")


async def main() -> None:
    model = DeepPruneReasoner(
        backend="replay:demo",
        # The embedded traces are short, so the judge reads 40-token prefixes.
        pruning=PruningConfig(n_traces=8, prefix=TokensPrefix(k=40), finalists=3),
    )
    pool = load_demo_pool()

    question = pool.by_id("demo-bakery").problem
    print(f"Q: {question}")
    message = model.invoke(question, config={"callbacks": [PrintPruning()]})
    print(f"A: {message.response_metadata['deepprune']['answer']}\n")

    # The same handler works on the async path (events arrive in order, off the hot loop).
    question = pool.by_id("demo-train").problem
    print(f"Q: {question}")
    message = await model.ainvoke(question, config={"callbacks": [PrintPruning()]})
    print(f"A: {message.response_metadata['deepprune']['answer']}")


if __name__ == "__main__":
    asyncio.run(main())
