"""Trace DeepPrune runs in LangSmith, or see offline what a trace would contain.

Turn tracing on with three environment variables (no code change):

    export LANGSMITH_TRACING=true
    export LANGSMITH_API_KEY=lsv2_...
    export LANGSMITH_PROJECT=deepprune        # optional; "default" otherwise

Each reasoner call is then a chat-model run in LangSmith (model name, sampling parameters, token
usage with the reasoning tokens), with one child run per judge call (``deepprune_judge``: which
pairs were scored, with what probabilities). LangSmith does not record LangChain custom events, so
the run summary (vote, clusters, pruned traces, token savings) is in the output message's
``response_metadata["deepprune"]``.

Without an API key the example says tracing is off and runs offline (tracing is also kept off when
LANGSMITH_TRACING=true is set without a key, instead of failing to upload); it prints the run tree
it collected locally, which is what LangSmith would receive.

Run: .venv/bin/python examples/langsmith_tracing.py
"""

from __future__ import annotations

import contextlib
import os

from langchain_core.prompts import ChatPromptTemplate
from langchain_core.tracers.context import collect_runs
from langchain_core.tracers.langchain import wait_for_all_tracers
from langchain_core.tracers.schemas import Run
from langsmith.run_helpers import tracing_context
from langsmith.utils import tracing_is_enabled

from deepprune_lc import DeepPruneReasoner, PruningConfig, TokensPrefix
from deepprune_lc.demo import load_demo_pool


def langsmith_ready() -> bool:
    """Tracing requested (LANGSMITH_TRACING=true) and an API key to send it with."""
    api_key = os.environ.get("LANGSMITH_API_KEY") or os.environ.get("LANGCHAIN_API_KEY")
    return tracing_is_enabled() is True and bool(api_key)


def print_tree(run: Run, depth: int = 0) -> None:
    detail = ""
    if run.run_type == "llm":
        generation = (run.outputs or {}).get("generations", [[{}]])[0][0]
        summary = generation.get("message", {}).get("kwargs", {}).get("response_metadata", {})
        summary = summary.get("deepprune", {})
        detail = f"answer {summary.get('answer')}, votes {summary.get('votes')}"
    elif run.name == "deepprune_judge":
        detail = f"{len(run.inputs.get('pairs', []))} pairs scored"
    print(f"  {'  ' * depth}{run.run_type:5} {run.name}  {detail}".rstrip())
    for child in sorted(run.child_runs, key=lambda r: r.dotted_order or ""):
        print_tree(child, depth + 1)


def main() -> None:
    traced = langsmith_ready()
    if traced:
        project = os.environ.get("LANGSMITH_PROJECT", "default")
        print(f"LangSmith tracing is ON: runs go to project {project!r}.")
    else:
        print(
            "LangSmith tracing is off (set LANGSMITH_TRACING=true and LANGSMITH_API_KEY to turn "
            "it on); running offline and printing the run tree collected locally."
        )

    model = DeepPruneReasoner(
        backend="replay:demo",
        # The embedded traces are short, so the judge reads 40-token prefixes.
        pruning=PruningConfig(n_traces=8, prefix=TokensPrefix(k=40), finalists=3),
    )
    chain = ChatPromptTemplate.from_messages([("human", "{question}")]) | model
    problem = load_demo_pool().by_id("demo-bakery")

    # Without a key, keep tracing off even if LANGSMITH_TRACING=true is set.
    off: contextlib.AbstractContextManager[object] = (
        contextlib.nullcontext() if traced else tracing_context(enabled=False)
    )
    with off, collect_runs() as collector:
        message = chain.invoke(
            {"question": problem.problem},
            config={
                "run_name": "deepprune-example",
                "tags": ["deepprune", "example"],
                "metadata": {"problem_id": problem.id},
            },
        )

    summary = message.response_metadata["deepprune"]
    print(f"answer {summary['answer']} (truth {problem.answer}); usage {message.usage_metadata}")
    print("run tree:")
    for run in collector.traced_runs:
        print_tree(run)
    if traced:
        wait_for_all_tracers()  # flush the uploads before the process exits
        print("Runs sent; open the project in LangSmith to see them.")


if __name__ == "__main__":
    main()
