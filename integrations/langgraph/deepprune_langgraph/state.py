"""Graph state for DeepPrune nodes: the conversation plus what the last run decided.

``DeepPruneState`` is LangGraph's ``MessagesState`` (``messages`` with the ``add_messages`` reducer)
plus the run summary and the fields the escalating graph writes. Every extra key is optional
(``total=False``), so a graph's input can be just ``{"messages": [...]}``.

The summary is ``deepprune_lc.RunSummary`` (``DeepPruneResult.summary()``); ``RecordedSummary`` is
that plus the ``error`` a node running with ``on_error="record"`` adds when the run fails.

Both DeepPrune keys have reducers, so DeepPrune nodes can run in one step (parallel branches, or a
``Send`` fan-out of many questions into one node): ``deepprune`` keeps the latest summary (one
value per step would otherwise be all LangGraph accepts), and ``deepprune_runs`` appends one
``DeepPruneRun`` per run, which names the question it answered and the id of its answer message,
so a map-reduce step can tell whose answer is whose.
"""

from __future__ import annotations

from typing import Annotated, Literal

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


class DeepPruneRun(TypedDict):
    """One DeepPrune run as a node logs it under ``deepprune_runs``: which question, which answer.

    ``question`` is the text of the last user message the run answered (``None`` when the
    conversation had none); ``message_id`` is the id of the answer's ``AIMessage`` in the messages
    key (``None`` when the run failed and the node recorded it without a message); ``node`` is
    the node's name, which tells parallel DeepPrune nodes apart.
    """

    node: str
    question: str | None
    message_id: str | None
    summary: RecordedSummary


def keep_last(
    current: RecordedSummary | None, update: RecordedSummary | None
) -> RecordedSummary | None:
    """Reducer of ``deepprune``: the newest summary replaces the previous one.

    A key without a reducer takes one value per step, so two DeepPrune runs finishing in the same
    step (parallel nodes, a ``Send`` fan-out) would fail the graph with ``InvalidUpdateError``.
    With this reducer the key still reads as one summary, the last applied; when several runs end
    in one step, ``deepprune_runs`` has every one of them.
    """
    return update


def append_runs(
    current: list[DeepPruneRun] | None, update: list[DeepPruneRun] | DeepPruneRun | None
) -> list[DeepPruneRun]:
    """Reducer of ``deepprune_runs``: runs are appended, in the order LangGraph applies them.

    Accepts one run or a list (``None`` adds nothing). To clear the log, write
    ``langgraph.types.Overwrite([])``.
    """
    runs = list(current or [])
    if update is None:
        return runs
    if isinstance(update, dict):
        return [*runs, update]
    return [*runs, *update]


class Attempt(TypedDict):
    """One answer the escalating graph produced, kept even when a later step replaced it."""

    step: Route
    answer: str | None
    support: float | None
    n_traces: int | None


class DeepPruneState(MessagesState, total=False):
    """``messages`` (append/replace-by-id reducer), the latest DeepPrune run and a log of all.

    ``deepprune`` is ``DeepPruneResult.summary()`` of the run behind the last answer (``None`` when
    that answer came from a model that is not a ``DeepPruneReasoner``), or of the failed run, with
    its ``error``, when a node with ``on_error="record"`` caught one. ``deepprune_runs`` lists
    every run of a ``DeepPruneNode`` (``DeepPruneRun``: question, answer message id, summary),
    appended in order, across parallel branches and turns alike. The escalating graph also sets
    ``support`` (see ``vote_support``), ``route`` and ``attempts`` (one per answer, in order;
    reset at the start of every turn).
    """

    deepprune: Annotated[RecordedSummary | None, keep_last]
    deepprune_runs: Annotated[list[DeepPruneRun], append_runs]
    support: float | None
    route: Route
    attempts: list[Attempt]


__all__ = [
    "Attempt",
    "DeepPruneRun",
    "DeepPruneState",
    "Escalation",
    "RecordedSummary",
    "Route",
    "append_runs",
    "keep_last",
]
