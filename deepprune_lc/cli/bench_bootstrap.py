"""The bootstrap behind ``deepprune bench replay``: B resamples of N traces per problem.

Resample ``b`` draws, for every problem, ``N`` of its recorded traces (with replacement by
default: the bootstrap; without, a random subset in random order) from a generator seeded by
``(seed, b)`` alone, so a resample is the same whatever the number of worker processes and
whichever resamples are run. Every method then runs on that same resampled pool.
"""

from __future__ import annotations

import multiprocessing
import random
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor

from deepprune_lc.backends.pool import TracePool
from deepprune_lc.backends.replay import ReplayBackend
from deepprune_lc.cli.bench_methods import (
    BenchSettings,
    JudgeUnavailableError,
    bench_rules,
    build_judge,
    measure_resample,
    plan_rows,
)
from deepprune_lc.cli.bench_report import BenchReport, RowReport, summarise_resample

__all__ = ["available_judges", "resample_pool", "run_bench"]


def resample_pool(
    pool: TracePool, n_traces: int, seed: int, resample: int, *, replace: bool
) -> TracePool:
    """The pool with ``n_traces`` traces per problem drawn for resample ``resample``."""
    rng = random.Random(f"deepprune-bench:{seed}:{resample}")
    problems = []
    for problem in pool.problems:
        k = len(problem.traces)
        if replace:
            picks = rng.choices(range(k), k=n_traces)
        elif k < n_traces:
            raise ValueError(
                f"problem {problem.id!r} has {k} recorded traces; drawing {n_traces} without "
                "replacement needs at least that many (resample with replacement, or lower "
                "--n-traces)"
            )
        else:
            picks = rng.sample(range(k), n_traces)
        problems.append(problem.model_copy(update={"traces": [problem.traces[i] for i in picks]}))
    return TracePool(problems=problems, source=pool.source)


def available_judges(settings: BenchSettings, pool: TracePool) -> tuple[list[str], list[str]]:
    """The judges that resolve here, and a note for every one that does not (its row is skipped)."""
    rules = bench_rules(settings.answers)
    usable, notes = [], []
    for name in dict.fromkeys(settings.judges):
        try:
            build_judge(name, pool, 0, rules)
        except JudgeUnavailableError as error:
            notes.append(f"judge {name!r} skipped (its rows are left out): {error}")
        else:
            usable.append(name)
    return usable, notes


def _one(
    args: tuple[BenchSettings, Sequence[str], TracePool, int],
) -> dict[str, list[dict[str, int | bool]]]:
    settings, judges, pool, b = args
    resampled = resample_pool(pool, settings.n_traces, settings.seed, b, replace=settings.replace)
    return measure_resample(settings, judges, resampled, b)


def run_bench(
    pool: TracePool,
    settings: BenchSettings,
    *,
    jobs: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> BenchReport:
    """Every row on every resample; ``jobs`` worker processes share the resamples."""
    if jobs < 1:
        raise ValueError(f"jobs: must be >= 1, got {jobs}")
    if not settings.replace:
        resample_pool(pool, settings.n_traces, settings.seed, 0, replace=False)  # fail early
    judges, notes = available_judges(settings, pool)
    rows = plan_rows(settings, judges)
    tasks = [(settings, judges, pool, b) for b in range(settings.resamples)]
    results: list[dict[str, list[dict[str, int | bool]]]] = []
    if jobs == 1 or settings.resamples == 1:
        for task in tasks:
            results.append(_one(task))
            if progress is not None:
                progress(len(results), settings.resamples)
    else:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(
            max_workers=min(jobs, settings.resamples), mp_context=context
        ) as ex:
            for result in ex.map(_one, tasks):
                results.append(result)
                if progress is not None:
                    progress(len(results), settings.resamples)
    reports = [
        RowReport(
            key=row.key,
            method=row.method,
            settings=row.settings,
            resamples=[summarise_resample(result[row.key], result["cons"]) for result in results],
        )
        for row in rows
    ]
    return BenchReport(
        pool=pool.source,
        problems=len(pool),
        tokenizer=ReplayBackend(pool).tokenizer.name,
        settings=settings,
        notes=notes,
        rows=reports,
    )
