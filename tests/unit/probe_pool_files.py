"""One-problem probe pools for the tests of the scripts in ``benchmarks/`` (not a test module)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from deepprune_lc.backends.pool import PoolProblem, TracePool

__all__ = ["probe_problem", "write_probe_pool"]


def probe_problem(traces: list[dict[str, Any]], *, every: int, answer: str = "7") -> PoolProblem:
    """Problem ``q`` (ground truth ``answer``) with text-free ``traces``, probed every ``every``."""
    return PoolProblem.model_validate(
        {
            "id": "q",
            "problem": "Q?",
            "answer": answer,
            "probe_every_tokens": every,
            "traces": traces,
        }
    )


def write_probe_pool(path: Path, traces: list[dict[str, Any]], *, every: int) -> Path:
    """Write ``probe_problem(traces)`` as a one-line pool file, in the product's own format."""
    TracePool(problems=[probe_problem(traces, every=every)], source=str(path)).write_jsonl(path)
    return path
