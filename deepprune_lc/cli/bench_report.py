"""What ``deepprune bench replay`` reports: per row, every resample's numbers and their spread.

``BenchReport`` is what ``--json`` writes and reads back (``load_report``), what the table and the
plot are drawn from, so a report can be re-tabled or re-plotted without re-running the bench.
"""

from __future__ import annotations

import math
import os
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from deepprune_lc.cli.bench_methods import BenchSettings

__all__ = [
    "METRICS",
    "BenchReport",
    "RowReport",
    "Spread",
    "load_report",
    "markdown_table",
    "rich_table",
    "summarise_resample",
]

#: The per-resample numbers of a row, in table order.
METRICS: tuple[str, ...] = (
    "accuracy",
    "agreement",
    "tokens",
    "latency_tokens",
    "judge_prefill_tokens",
    "probe_tokens",
    "probe_calls",
    "tokens_vs_cons",
    "latency_vs_cons",
    "traces_finished",
)


def summarise_resample(
    per_problem: Sequence[Mapping[str, int | bool]], cons: Sequence[Mapping[str, int | bool]]
) -> dict[str, float]:
    """One resample of one row: accuracy over problems, tokens summed over problems, latency as
    the mean per problem (a query waits for its own answer), and both as ratios to cons@N's numbers
    on the same resample."""
    n = len(per_problem)
    tokens = sum(int(p["tokens"]) for p in per_problem)
    latency = sum(int(p["latency_tokens"]) for p in per_problem) / n
    cons_tokens = sum(int(p["tokens"]) for p in cons)
    cons_latency = sum(int(p["latency_tokens"]) for p in cons) / len(cons)
    return {
        "accuracy": sum(bool(p["correct"]) for p in per_problem) / n,
        "agreement": sum(bool(p["agrees_with_cons"]) for p in per_problem) / n,
        "tokens": float(tokens),
        "latency_tokens": latency,
        "judge_prefill_tokens": float(sum(int(p["judge_prefill_tokens"]) for p in per_problem)),
        "probe_tokens": float(sum(int(p["probe_tokens"]) for p in per_problem)),
        "probe_calls": sum(int(p["probe_calls"]) for p in per_problem) / n,
        "tokens_vs_cons": tokens / cons_tokens if cons_tokens else math.nan,
        "latency_vs_cons": latency / cons_latency if cons_latency else math.nan,
        "traces_finished": sum(int(p["traces_finished"]) for p in per_problem) / n,
    }


class Spread(BaseModel):
    """Mean, standard deviation (ddof 1; 0 for one resample) and the 2.5-97.5% percentile range."""

    mean: float
    std: float
    low: float
    high: float


class RowReport(BaseModel):
    model_config = ConfigDict(extra="forbid")

    key: str
    method: str
    settings: str
    #: One dict of METRICS per resample, in resample order.
    resamples: list[dict[str, float]]

    def spread(self, metric: str) -> Spread:
        values = sorted(r[metric] for r in self.resamples)
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        return Spread(
            mean=statistics.fmean(values),
            std=std,
            low=_percentile(values, 2.5),
            high=_percentile(values, 97.5),
        )


def _percentile(ordered: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default), on sorted values."""
    position = (len(ordered) - 1) * q / 100
    below = math.floor(position)
    above = min(below + 1, len(ordered) - 1)
    return ordered[below] + (ordered[above] - ordered[below]) * (position - below)


class BenchReport(BaseModel):
    model_config = ConfigDict(extra="forbid")

    pool: str
    problems: int
    tokenizer: str
    settings: BenchSettings
    #: Why rows are missing (a judge that did not resolve), and anything else a reader must know.
    notes: list[str]
    rows: list[RowReport]

    def row(self, key: str) -> RowReport:
        return next(r for r in self.rows if r.key == key)

    def paired_difference(self, row: RowReport, metric: str, baseline: str = "cons") -> Spread:
        """``metric`` of ``row`` minus the baseline's, resample by resample.

        Both ran on the same resampled traces, so the spread of the difference is far smaller
        than either row's own spread: this is what says whether a method is better or worse.
        """
        base = self.row(baseline)
        diffs = RowReport(
            key=row.key,
            method=row.method,
            settings=row.settings,
            resamples=[
                {metric: r[metric] - b[metric]}
                for r, b in zip(row.resamples, base.resamples, strict=True)
            ],
        )
        return diffs.spread(metric)

    def write_json(self, path: str | os.PathLike[str]) -> None:
        Path(path).write_text(self.model_dump_json(indent=1) + "\n")

    def header(self) -> str:
        s = self.settings
        sampling = "with replacement" if s.replace else "without replacement"
        return (
            f"Pool: {self.pool} ({self.problems} problems); N = {s.n_traces} traces per problem "
            f"drawn {sampling}, {s.resamples} resamples (seed {s.seed}); mean ± std over "
            f"resamples; tokens counted with {self.tokenizer}; latency = lockstep decoding steps "
            "until the answer, mean per problem."
        )


def load_report(path: str | os.PathLike[str]) -> BenchReport:
    return BenchReport.model_validate_json(Path(path).read_text())


def _cell(row: RowReport, metric: str) -> str:
    if any(metric not in r for r in row.resamples):
        return "–"  # a report written before the metric existed
    spread = row.spread(metric)
    if metric in ("accuracy", "agreement"):
        return f"{spread.mean:.1%} ± {spread.std:.1%}"
    if metric.endswith("_vs_cons"):
        return f"{spread.mean:.3f} ± {spread.std:.3f}"
    if metric == "traces_finished":
        return f"{spread.mean:.2f}"
    if metric == "probe_calls":
        return f"{spread.mean:,.1f}" if spread.mean else "0"
    if metric in ("judge_prefill_tokens", "probe_tokens") and spread.mean == 0:
        return "0"
    return f"{spread.mean:,.0f} ± {spread.std:,.0f}"


_COLUMNS: tuple[tuple[str, str], ...] = (
    ("accuracy", "accuracy"),
    ("agreement", "same answer as cons@N"),
    ("tokens", "total tokens"),
    ("latency_tokens", "latency tokens"),
    ("judge_prefill_tokens", "judge prefill"),
    ("probe_tokens", "probe tokens"),
    ("probe_calls", "probes / problem"),
    ("tokens_vs_cons", "tokens / cons@N"),
    ("latency_vs_cons", "latency / cons@N"),
    ("traces_finished", "finished / problem"),
)


def _cells(report: BenchReport, row: RowReport) -> list[str]:
    cells = [_cell(row, metric) for metric, _ in _COLUMNS]
    paired = report.paired_difference(row, "accuracy")
    cells.insert(1, f"{paired.mean * 100:+.1f} ± {paired.std * 100:.1f}")
    return cells


_TITLES = [title for _, title in _COLUMNS]
_TITLES.insert(1, "accuracy − cons@N (points, paired)")


def markdown_table(report: BenchReport) -> str:
    lines = [
        report.header(),
        "",
        "| method | settings | " + " | ".join(_TITLES) + " |",
        "|---|---|" + "---|" * len(_TITLES),
    ]
    for row in report.rows:
        lines.append(f"| {row.method} | {row.settings} | " + " | ".join(_cells(report, row)) + " |")
    lines += [""] + [f"Note: {note}" for note in report.notes]
    return "\n".join(lines).rstrip() + "\n"


def rich_table(report: BenchReport) -> object:
    """The same table for a terminal (rich comes with the ``[cli]`` extra)."""
    from rich.table import Table

    table = Table(title=report.header(), title_justify="left")
    table.add_column("method")
    table.add_column("settings")
    for title in _TITLES:
        table.add_column(title, justify="right")
    for row in report.rows:
        table.add_row(row.method, row.settings, *_cells(report, row))
    if report.notes:
        table.caption = "\n".join(report.notes)
        table.caption_justify = "left"
    return table
