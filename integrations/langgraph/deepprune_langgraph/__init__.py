"""deepprune-langgraph: DeepPrune parallel reasoning inside LangGraph graphs.

- ``create_deepprune_node(model)``: a ``DeepPruneNode`` (sync and async) that answers
  ``state["messages"]`` (or a message list) with a ``DeepPruneReasoner`` and writes the answer and
  the run summary back; pruning decisions stream as ``stream_mode="custom"`` chunks;
  ``on_error="record"`` keeps a failed run's partial summary in the state.
- ``StreamWriterCallbackHandler`` / ``with_stream_writer(config, writer)``: the same custom-stream
  events for a hand-written node that calls the reasoner itself.
- ``DeepPruneState``: ``MessagesState`` plus the latest run summary (``RecordedSummary``), the log
  of every run (``DeepPruneRun``), both with reducers so DeepPrune nodes run in parallel branches
  and ``Send`` fan-out, and the escalating graph's fields.
- ``create_escalating_graph(model, ...)``: answer, and when the traces' vote is weak, escalate (more
  traces, a stronger model, or a clarifying question).
"""

import importlib.metadata

from deepprune_langgraph.escalation import (
    ESCALATED_EVENT,
    create_escalating_graph,
    default_clarification,
    vote_support,
)
from deepprune_langgraph.node import (
    DeepPruneNode,
    OnError,
    StreamWriterCallbackHandler,
    create_deepprune_node,
    with_stream_writer,
)
from deepprune_langgraph.state import (
    Attempt,
    DeepPruneRun,
    DeepPruneState,
    Escalation,
    RecordedSummary,
    Route,
    append_runs,
    keep_last,
)

try:
    __version__ = importlib.metadata.version("deepprune-langgraph")
except importlib.metadata.PackageNotFoundError:  # pragma: no cover - a source tree not installed
    __version__ = "0.0.0"

__all__ = [
    "ESCALATED_EVENT",
    "Attempt",
    "DeepPruneNode",
    "DeepPruneRun",
    "DeepPruneState",
    "Escalation",
    "OnError",
    "RecordedSummary",
    "Route",
    "StreamWriterCallbackHandler",
    "__version__",
    "append_runs",
    "create_deepprune_node",
    "create_escalating_graph",
    "default_clarification",
    "keep_last",
    "vote_support",
    "with_stream_writer",
]
