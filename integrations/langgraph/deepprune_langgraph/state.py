"""Graph state for DeepPrune nodes: the conversation plus what the last run decided.

``DeepPruneState`` is LangGraph's ``MessagesState`` (``messages`` with the ``add_messages`` reducer)
plus the run summary and the fields the escalating graph writes. Every extra key is optional
(``total=False``), so a graph's input can be just ``{"messages": [...]}``.

The summary is ``deepprune_lc.RunSummary`` (``DeepPruneResult.summary()``); ``RecordedSummary`` is
that plus the ``error`` a node running with ``on_error="record"`` adds when the run fails.
"""

from __future__ import annotations

from typing import Literal

from langgraph.graph import MessagesState
from typing_extensions import TypedDict

from deepprune_lc import RunSummary

#: The escalation steps ``create_escalating_graph`` can take when the traces disagree.
Escalation = Literal["more_traces", "stronger_model", "clarify"]
#: How the escalating graph reached its final message: ``"direct"`` (the first run was supported
#: well enough) or the last escalation step it took.
Route = Literal["direct", "more_traces", "stronger_model", "clarify"]


class RecordedSummary(RunSummary, total=False):
    """``RunSummary`` as a DeepPrune node records it in the state.

    ``error`` (``"GenerationError: ..."``) is set only when the run failed and the node runs with
    ``on_error="record"``: the other keys then describe the partial run up to the failure (traces
    started, tokens decoded, clusters formed), and ``answer`` is usually ``None``.
    """

    error: str


class Attempt(TypedDict):
    """One answer the escalating graph produced, kept even when a later step replaced it."""

    step: Route
    answer: str | None
    support: float | None
    n_traces: int | None


class DeepPruneState(MessagesState, total=False):
    """``messages`` (append/replace-by-id reducer) and the latest DeepPrune run.

    ``deepprune`` is ``DeepPruneResult.summary()`` of the run behind the last answer (``None`` when
    that answer came from a model that is not a ``DeepPruneReasoner``), or of the failed run, with
    its ``error``, when a node with ``on_error="record"`` caught one. The escalating graph also
    sets ``support`` (see ``vote_support``), ``route`` and ``attempts`` (one per answer, in order;
    reset at the start of every turn).
    """

    deepprune: RecordedSummary | None
    support: float | None
    route: Route
    attempts: list[Attempt]


__all__ = ["Attempt", "DeepPruneState", "Escalation", "RecordedSummary", "Route"]
