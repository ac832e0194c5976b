"""``create_escalating_graph``: answer with DeepPrune, and escalate when the traces disagree.

A single LLM call returns an answer and no idea how sure it is. A DeepPrune run returns the answer
*and* the vote behind it, so a graph can branch on it: accept a well-supported answer, and when
support is low, spend more (more traces, a stronger model) or ask the user instead of guessing.

    reason --support >= min_support--> END
       |
       +--low--> more_traces --low--> stronger_model --low--> clarify --> END
                 (each step optional, in the order given by ``escalate``; any step whose answer is
                 supported well enough ends the graph)

Every escalation step *replaces* the previous low-support answer (same message id), so the
conversation ends with one answer; ``attempts`` in the state keeps them all.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, get_args

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.runnables import RunnableConfig
from langgraph._internal._runnable import RunnableCallable  # see node.py for why
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.types import Checkpointer, StreamWriter

from deepprune_langgraph.node import ainvoke_model, invoke_model, read_messages, run_summary
from deepprune_langgraph.state import Attempt, DeepPruneState, Escalation, Route
from deepprune_lc import DeepPruneReasoner, PruningConfig, RunSummary

#: Custom-stream event written when the graph escalates (besides the reasoner's own events).
ESCALATED_EVENT = "deepprune.escalated"
_MAX_TRACES = 4096  # PruningConfig.n_traces' upper bound

SupportFn = Callable[[RunSummary], float]
ClarifyFn = Callable[[RunSummary | None], str]


def vote_support(summary: RunSummary) -> float:
    """Share of the run's judged traces behind the answer, in [0, 1] (0 when nothing voted).

    ``winning weight / total weight`` of the vote, where the vote covers every cluster
    (``policy="diverse"``: each cluster's founder votes with the cluster's size). Under
    ``policy="majority"`` only finalists of the largest cluster vote, so their agreement alone is
    nearly always 1; there the vote share is multiplied by the largest cluster's share of the
    clustered traces. That is a lower bound: traces of other clusters were stopped before they
    answered, and some of them may have agreed.
    """
    weights = [float(v["weight"]) for v in summary.get("votes") or () if v.get("weight")]
    total = sum(weights)
    if total <= 0:
        return 0.0
    share = max(weights) / total
    clusters = [int(size) for size in summary.get("clusters") or ()]
    if summary.get("policy") == "majority" and sum(clusters) > 0:
        share *= max(clusters) / sum(clusters)
    return share


def default_clarification(summary: RunSummary | None) -> str:
    """The clarifying question the ``clarify`` step asks: it names the competing answers."""
    ballots = summary.get("votes") if summary is not None else None
    votes = [v for v in ballots or () if v.get("answer") is not None]
    if not votes:
        return (
            "I could not reach an answer I am confident in. Could you clarify the question or add "
            "the details that would settle it?"
        )
    options = ", ".join(f"{v['answer']} ({_weight(v['weight'])})" for v in votes[:4])
    return (
        f"My reasoning paths disagree on the answer: {options}. Rather than guess, could you "
        "clarify the question or add the details that would settle it?"
    )


def _weight(weight: float) -> str:
    n = int(weight) if float(weight).is_integer() else round(float(weight), 2)
    return f"{n} vote" if n == 1 else f"{n} votes"


def _with_n_traces(
    model: DeepPruneReasoner, n_traces: int, *, chosen: bool = True
) -> DeepPruneReasoner:
    """The same reasoner with more traces, built fresh.

    Not ``model.model_copy(update=...)``: a copy keeps the original's already-created runner (a
    private attribute), which would keep running with the old ``n_traces``. Re-validating the set
    fields gives a reasoner whose runner is created on first use from the new config; named engines
    are shared anyway.

    ``chosen=False`` (the graph's own default, not the caller's ``max_traces``) leaves ``n_traces``
    out of the config's set fields, so it counts as a default: on a backend with fewer distinct
    traces (a replay pool) the run uses what the backend holds instead of failing.
    """
    fields = {name: getattr(model, name) for name in model.model_fields_set}
    pruning = model.pruning.model_copy(update={"n_traces": n_traces})
    if not chosen:
        pruning = PruningConfig.model_construct(
            set(pruning.model_fields_set) - {"n_traces"}, **dict(pruning)
        )
    fields["pruning"] = pruning
    return type(model)(**fields)


def _normalise_ladder(escalate: Escalation | Sequence[Escalation]) -> tuple[Escalation, ...]:
    ladder = (escalate,) if isinstance(escalate, str) else tuple(escalate)
    allowed = get_args(Escalation)
    for step in ladder:
        if step not in allowed:
            raise ValueError(f"escalate: unknown step {step!r}; expected one of {allowed}")
    if not ladder:
        raise ValueError("escalate: name at least one step")
    if len(set(ladder)) != len(ladder):
        raise ValueError(f"escalate: each step may appear once, got {ladder}")
    if "clarify" in ladder[:-1]:
        raise ValueError("escalate: 'clarify' ends the graph, so it must be the last step")
    return ladder


def create_escalating_graph(
    model: DeepPruneReasoner,
    *,
    min_support: float = 0.6,
    escalate: Escalation | Sequence[Escalation] = "more_traces",
    stronger_model: BaseChatModel | None = None,
    max_traces: int | None = None,
    support: SupportFn = vote_support,
    clarification: ClarifyFn = default_clarification,
    checkpointer: Checkpointer = None,
    name: str = "deepprune_escalating",
) -> CompiledStateGraph[Any, Any, Any, Any]:
    """A compiled graph over ``DeepPruneState`` that escalates when the vote is weak.

    Node ``"reason"`` answers with ``model``. If ``support(summary) >= min_support`` the graph ends
    (``route="direct"``); otherwise it takes the ``escalate`` steps in order until one answers with
    enough support:

    * ``"more_traces"``: run DeepPrune again with ``n_traces=max_traces`` (default: 4x the model's,
      at most 4096);
    * ``"stronger_model"``: answer with ``stronger_model``, any chat model (a ``DeepPruneReasoner``
      over a bigger model has a vote to check; any other chat model's answer is accepted as is);
    * ``"clarify"`` (last): end with an ``AIMessage`` asking a clarifying question that names the
      competing answers (``clarification(summary)`` writes it), ``route="clarify"``.

    The state ends with ``route`` (the last step taken), ``support`` and ``deepprune`` of the final
    answer, and ``attempts`` (every answer produced this turn). If the last step's answer is still
    weakly supported it is kept and ``support`` says so. Each escalation also writes
    ``{"event": "deepprune.escalated", "data": {"step", "support", "min_support"}}`` to
    ``stream_mode="custom"``, next to the reasoner's own events.
    """
    if not isinstance(model, DeepPruneReasoner):
        raise TypeError(f"model: expected a DeepPruneReasoner, got {type(model).__name__}")
    if isinstance(min_support, bool) or not 0.0 < float(min_support) <= 1.0:
        raise ValueError(f"min_support: expected a number in (0, 1], got {min_support!r}")
    ladder = _normalise_ladder(escalate)
    if ("stronger_model" in ladder) != (stronger_model is not None):
        raise ValueError(
            "stronger_model: required when escalate includes 'stronger_model'"
            if stronger_model is None
            else "stronger_model: given, but escalate does not include 'stronger_model'"
        )
    if stronger_model is not None and not isinstance(stronger_model, BaseChatModel):
        raise TypeError(
            f"stronger_model: expected a chat model, got {type(stronger_model).__name__}"
        )
    n_traces = model.pruning.n_traces
    max_traces_chosen = max_traces is not None
    if max_traces is None:
        max_traces = min(_MAX_TRACES, 4 * n_traces)
    elif "more_traces" not in ladder:
        raise ValueError("max_traces: given, but escalate does not include 'more_traces'")
    if "more_traces" in ladder and not n_traces < max_traces <= _MAX_TRACES:
        raise ValueError(
            f"max_traces: must be greater than the model's n_traces ({n_traces}) and at most "
            f"{_MAX_TRACES}, got {max_traces}"
        )
    threshold = float(min_support)

    models: dict[Route, BaseChatModel] = {"direct": model}
    if "more_traces" in ladder:
        models["more_traces"] = _with_n_traces(model, max_traces, chosen=max_traces_chosen)
    if stronger_model is not None:
        models["stronger_model"] = stronger_model

    def answer_step(step: Route) -> RunnableCallable:
        """A node that answers with ``models[step]``, replacing the previous answer if escalating."""
        chat_model = models[step]

        def prepare(
            state: Mapping[str, Any], writer: StreamWriter
        ) -> tuple[list[BaseMessage], str | None]:
            messages = read_messages(state, "messages")
            if step == "direct":
                return messages, None
            previous = messages[-1]  # the weakly supported answer this step replaces
            writer(_escalation_event(step, state, threshold))
            return messages[:-1], previous.id

        def update(
            state: Mapping[str, Any], message: AIMessage, replaces: str | None
        ) -> dict[str, Any]:
            summary = run_summary(message)
            if replaces is not None:
                message = message.model_copy(update={"id": replaces})
            score = support(summary) if summary is not None else None
            pruning = getattr(chat_model, "pruning", None)
            # The traces the run sampled (a replay pool may hold fewer than configured).
            sampled = sum(summary["trace_status"].values()) if summary is not None else 0
            configured = pruning.n_traces if isinstance(pruning, PruningConfig) else None
            attempt = Attempt(
                step=step,
                answer=summary.get("answer") if summary is not None else message.text,
                support=score,
                n_traces=sampled or configured,
            )
            earlier = [] if step == "direct" else list(state.get("attempts") or [])
            return {
                "messages": [message],
                "deepprune": summary,
                "support": score,
                "route": step,
                "attempts": [*earlier, attempt],
            }

        # LangGraph passes each body the node's config and the graph's stream writer.
        def run(
            state: Mapping[str, Any], config: RunnableConfig, writer: StreamWriter
        ) -> dict[str, Any]:
            messages, replaces = prepare(state, writer)
            return update(state, invoke_model(chat_model, messages, config, writer), replaces)

        async def arun(
            state: Mapping[str, Any], config: RunnableConfig, writer: StreamWriter
        ) -> dict[str, Any]:
            messages, replaces = prepare(state, writer)
            message = await ainvoke_model(chat_model, messages, config, writer)
            return update(state, message, replaces)

        name = "reason" if step == "direct" else step
        return RunnableCallable(run, arun, name=name, trace=False, recurse=False)

    def clarify(state: Mapping[str, Any], writer: StreamWriter) -> dict[str, Any]:
        writer(_escalation_event("clarify", state, threshold))
        previous = read_messages(state, "messages")[-1]
        question = AIMessage(clarification(state.get("deepprune")), id=previous.id)
        return {"messages": [question], "route": "clarify"}

    async def aclarify(state: Mapping[str, Any], writer: StreamWriter) -> dict[str, Any]:
        return clarify(state, writer)

    def route_to(following: str) -> Callable[[Mapping[str, Any]], str]:
        """Edge function: END when the answer is supported well enough, else ``following``."""

        def next_node(state: Mapping[str, Any]) -> str:
            score = state.get("support")
            if score is None or score >= threshold:
                return END
            return following

        return next_node

    clarify_node = RunnableCallable(clarify, aclarify, name="clarify", trace=False, recurse=False)
    graph = StateGraph(DeepPruneState)
    graph.add_node("reason", answer_step("direct"))
    graph.add_edge(START, "reason")
    previous_node = "reason"
    for step in ladder:
        graph.add_node(step, clarify_node if step == "clarify" else answer_step(step))
        graph.add_conditional_edges(previous_node, route_to(step), [step, END])
        previous_node = step
    graph.add_edge(previous_node, END)  # the last step's answer stands, however weak
    return graph.compile(checkpointer=checkpointer, name=name)


def _escalation_event(
    step: Escalation, state: Mapping[str, Any], threshold: float
) -> dict[str, Any]:
    """The custom-stream chunk an escalation step writes before it runs."""
    data = {"step": step, "support": state.get("support"), "min_support": threshold}
    return {"event": ESCALATED_EVENT, "data": data}


__all__ = ["ESCALATED_EVENT", "create_escalating_graph", "default_clarification", "vote_support"]
