"""deepprune-langgraph: DeepPrune parallel reasoning inside LangGraph graphs.

- ``create_deepprune_node(model)``: a node (sync and async) that answers ``state["messages"]`` with a
  ``DeepPruneReasoner`` and writes the answer and the run summary back; pruning decisions stream as
  ``stream_mode="custom"`` chunks.
- ``DeepPruneState``: ``MessagesState`` plus the run summary and the escalating graph's fields.
- ``create_escalating_graph(model, ...)``: answer, and when the traces' vote is weak, escalate (more
  traces, a stronger model, or a clarifying question).
"""

from deepprune_langgraph.escalation import (
    ESCALATED_EVENT,
    create_escalating_graph,
    default_clarification,
    vote_support,
)
from deepprune_langgraph.node import create_deepprune_node
from deepprune_langgraph.state import Attempt, DeepPruneState, Escalation, Route

__version__ = "0.1.0"

__all__ = [
    "ESCALATED_EVENT",
    "Attempt",
    "DeepPruneState",
    "Escalation",
    "Route",
    "__version__",
    "create_deepprune_node",
    "create_escalating_graph",
    "default_clarification",
    "vote_support",
]
