"""The ``deepprune`` command line: a demo, one-off questions over a trace pool, and the benchmarks."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from deepprune_lc.backends.replay import ReplayBackend
from deepprune_lc.config import PruningConfig, ReasoningWordsPrefix, TokensPrefix
from deepprune_lc.events import (
    DeepPruneEvent,
    TraceAborted,
    TraceClustered,
    TraceFinished,
    TracePruned,
    TraceResumed,
)
from deepprune_lc.judges.lexical import LexicalJudge
from deepprune_lc.pool import TracePool, load_trace_pool
from deepprune_lc.result import DeepPruneResult
from deepprune_lc.runner import DeepPrune

app = typer.Typer(
    add_completion=False, help="DeepPrune: parallel reasoning without redundant traces."
)
bench_app = typer.Typer(add_completion=False, help="Benchmarks (numbers go to docs/benchmarks.md).")
app.add_typer(bench_app, name="bench")
console = Console()

#: Demo settings: the embedded traces are short (about 150-250 tokens), so the prefix is the first
#: 40 tokens rather than the paper's 25 reasoning words, which these traces barely reach.
DEMO_PREFIX_TOKENS = 40
DEMO_FINALISTS = 3


def _prefix(
    prefix_tokens: int | None, reasoning_words: int | None
) -> ReasoningWordsPrefix | TokensPrefix:
    if prefix_tokens is not None and reasoning_words is not None:
        raise typer.BadParameter("give --prefix-tokens or --reasoning-words, not both")
    if prefix_tokens is not None:
        return TokensPrefix(k=prefix_tokens)
    if reasoning_words is not None:
        return ReasoningWordsPrefix(k=reasoning_words)
    return ReasoningWordsPrefix()


def _live_printer(event: DeepPruneEvent) -> None:
    """One line per pruning decision, as it happens."""
    t = f"[dim]{event.elapsed_s * 1000:7.1f} ms[/dim]"
    if isinstance(event, TraceClustered):
        how = "founded" if event.founded else ("forced into" if event.forced else "joined")
        score = "" if event.score is None else f" (score {event.score:.2f})"
        console.print(f"{t} trace {event.trace_id:>2} {how} cluster {event.cluster_id}{score}")
    elif isinstance(event, TracePruned):
        console.print(
            f"{t} trace {event.trace_id:>2} [yellow]pruned[/yellow] after {event.tokens_decoded} tokens"
        )
    elif isinstance(event, TraceResumed):
        console.print(f"{t} trace {event.trace_id:>2} [cyan]resumed[/cyan] as a finalist")
    elif isinstance(event, TraceAborted):
        console.print(f"{t} trace {event.trace_id:>2} [red]aborted[/red] ({event.reason})")
    elif isinstance(event, TraceFinished):
        console.print(f"{t} trace {event.trace_id:>2} [green]finished[/green]: {event.answer}")


def print_result(result: DeepPruneResult, truth: str | None = None) -> None:
    table = Table(title="traces", show_lines=False)
    for column in ("trace", "status", "cluster", "tokens", "prefix", "answer", "voted"):
        table.add_column(column)
    for trace in result.traces:
        table.add_row(
            str(trace.trace_id),
            trace.status,
            "-" if trace.cluster_id is None else str(trace.cluster_id),
            str(trace.tokens_decoded),
            "-" if trace.prefix_tokens is None else str(trace.prefix_tokens),
            str(trace.answer),
            "yes" if trace.voted else "",
        )
    console.print(table)
    totals = result.totals
    savings = "n/a" if totals.token_savings is None else f"{totals.token_savings:.0%}"
    console.print(
        f"[bold]answer[/bold] {result.answer}"
        + ("" if truth is None else f"   (ground truth {truth})")
        + f"\nvotes {[(v.answer, v.weight) for v in result.votes]}"
        + f"\nclusters {[c.size for c in result.clusters]}"
        + f"\ntokens decoded {totals.decoded_tokens} vs ~{totals.estimated_full_tokens or 0:.0f} "
        f"for all {totals.n_traces} traces: {savings} saved"
        + f"\njudge calls {totals.judge_calls}, pairs {totals.judge_pairs}"
        + ("" if result.fallback is None else f"\n[red]fallback[/red] {result.fallback}")
    )


def _load_pool(pool: Path | None) -> TracePool:
    if pool is None:
        from deepprune_lc.demo import load_demo_pool

        return load_demo_pool()
    return load_trace_pool(pool)


@app.command()
def demo(
    pool: Annotated[Path | None, typer.Option(help="Trace pool JSONL (default: embedded)")] = None,
    problems: Annotated[int, typer.Option(min=1, help="How many problems to run")] = 3,
    n_traces: Annotated[int, typer.Option(min=1)] = 8,
    prefix_tokens: Annotated[int | None, typer.Option(min=1)] = DEMO_PREFIX_TOKENS,
    reasoning_words: Annotated[int | None, typer.Option(min=1)] = None,
    finalists: Annotated[int, typer.Option(min=1)] = DEMO_FINALISTS,
    threshold: Annotated[float, typer.Option()] = 0.5,
    verbose: Annotated[bool, typer.Option(help="Print every decision as it happens")] = True,
) -> None:
    """Run DeepPrune over a replayed trace pool with the lexical judge and show what it pruned."""
    trace_pool = _load_pool(pool)
    if reasoning_words is not None:
        prefix_tokens = None
    config = PruningConfig(
        n_traces=n_traces,
        prefix=_prefix(prefix_tokens, reasoning_words),
        finalists=finalists,
        threshold=threshold,
    )
    backend = ReplayBackend(trace_pool, yield_every=1)
    deepprune = DeepPrune(backend, LexicalJudge(), config)
    console.print(
        f"[bold]DeepPrune demo[/bold] on {trace_pool.source} ({len(trace_pool)} problems)"
    )
    for problem in trace_pool.problems[:problems]:
        console.rule(problem.id)
        console.print(problem.problem)
        listeners = [_live_printer] if verbose else []
        result = asyncio.run(deepprune.run(problem.problem, listeners=listeners))
        print_result(result, truth=problem.answer)


@app.command()
def ask(
    question: Annotated[str, typer.Argument(help="A question present in the pool")],
    pool: Annotated[Path, typer.Option(help="Trace pool JSONL to replay")],
    n_traces: Annotated[int, typer.Option(min=1)] = 8,
    prefix_tokens: Annotated[int | None, typer.Option(min=1)] = None,
    reasoning_words: Annotated[int | None, typer.Option(min=1)] = None,
    finalists: Annotated[int, typer.Option(min=1)] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print the full result as JSON")] = False,
) -> None:
    """Answer one question by replaying its recorded traces through DeepPrune."""
    config = PruningConfig(
        n_traces=n_traces, prefix=_prefix(prefix_tokens, reasoning_words), finalists=finalists
    )
    deepprune = DeepPrune(
        ReplayBackend(load_trace_pool(pool), yield_every=1), LexicalJudge(), config
    )
    result = asyncio.run(deepprune.run(question))
    if as_json:
        typer.echo(json.dumps(result.model_dump(mode="json"), indent=2))
    else:
        print_result(result)


@bench_app.command("replay")
def bench_replay(
    pool: Annotated[Path, typer.Option(help="Trace pool JSONL")] = Path(
        "../shared/data/traces/qwen25math_cot8_dev.jsonl"
    ),
    output: Annotated[Path | None, typer.Option(help="Write the table as markdown here")] = None,
) -> None:
    """Accuracy and tokens of DeepPrune (a tau x K2 x prefix sweep), self-consistency and ESC."""
    from deepprune_lc.bench import replay_sweep

    table = asyncio.run(replay_sweep(load_trace_pool(pool)))
    typer.echo(table)
    if output is not None:
        output.write_text(table + "\n")


@bench_app.command("driver")
def bench_driver(
    n_traces: Annotated[int, typer.Option(min=1)] = 512,
    tokens: Annotated[int, typer.Option(min=1)] = 2000,
    repeats: Annotated[int, typer.Option(min=1)] = 3,
) -> None:
    """Driver throughput (deltas/s) and wall time against merely draining the same streams."""
    from deepprune_lc.bench import driver_overhead

    typer.echo(asyncio.run(driver_overhead(n_traces, tokens, repeats)))


if __name__ == "__main__":
    app()
