"""Answer checking is bounded in time and memory and does not merge distinct exact values.

Every case here hung a vote (or merged two answers) before the bounds: a comparison runs in a
daemon thread so a hang fails the test after ``LIMIT_S`` instead of stalling the suite.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

from deepprune_lc import SelfConsistency
from deepprune_lc.backends.pool import PoolProblem, PoolTrace, TracePool
from deepprune_lc.backends.replay import ReplayBackend
from deepprune_lc.core.answers import equivalence
from deepprune_lc.core.answers.equivalence import math_equivalent

T = TypeVar("T")
#: Far above what a bounded comparison takes on a loaded 2-core machine (the first one also
#: starts the verifier process), far below "forever".
LIMIT_S = 60.0


def bounded(call: Callable[[], T], limit_s: float = LIMIT_S) -> T:
    """``call()``, failing the test if it has not returned within ``limit_s``."""
    box: dict[str, T] = {}

    def run() -> None:
        box["value"] = call()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(limit_s)
    if thread.is_alive():
        pytest.fail(f"still running after {limit_s} s")
    return box["value"]


def nested(command: str, depth: int, inner: str) -> str:
    text = inner
    for _ in range(depth):
        text = f"\\{command}{{{text}}}"
    return text


def nested_fraction(depth: int) -> str:
    text = "1"
    for _ in range(depth):
        text = f"\\frac{{1}}{{1+{text}}}"
    return text


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("(x+1)^{5000}", "(x+2)^{5000}"),  # sympy expands both: minutes
        ("{" * 250 + "1" + "}" * 250, "2"),  # 250-deep braces: the parser recurses per level
        (nested_fraction(40), nested_fraction(39)),  # 40-deep \frac
    ],
)
def test_pathological_answers_are_compared_within_bounds(a: str, b: str) -> None:
    assert bounded(lambda: math_equivalent(a, b)) is False
    assert bounded(lambda: math_equivalent(a, a)) is True  # identical strings: the fast path


def test_distinct_exact_values_closer_than_floats_are_not_merged() -> None:
    """60-deep square roots of 2 and of 3 are both 1 to double precision, not equal."""
    roots_of_2, roots_of_3 = nested("sqrt", 60, "2"), nested("sqrt", 60, "3")
    assert bounded(lambda: math_equivalent(roots_of_2, roots_of_3)) is False
    assert bounded(lambda: math_equivalent("1+10^{-20}", "1")) is False  # within the depth limit
    # Exact values that are equal still are; a decimal answer keeps math-verify's tolerance.
    assert bounded(lambda: math_equivalent(r"\sqrt{8}", r"2\sqrt{2}")) is True
    assert bounded(lambda: math_equivalent(r"\frac{1}{2}", "0.5")) is True
    assert bounded(lambda: math_equivalent("(x+1)^{2}", "x^{2}+2x+1")) is True


def test_a_comparison_past_the_timeout_is_killed_and_falls_back_to_strings(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A real slow comparison (20-deep radicals: 0.1-0.5 s of sympy) under a shorter timeout: the
    verifier process is killed and replaced, the answers compare as strings, and it is logged."""
    assert bounded(lambda: math_equivalent("0.25", r"\frac{1}{4}"))  # the verifier is up
    first = equivalence._verifier._proc
    assert first is not None
    # 20-deep radicals take 0.1 s (a verifier that has simplified radicals before) to 0.5 s
    # (a fresh one): a timeout well under both, so the comparison always runs past it.
    monkeypatch.setattr(equivalence, "VERIFY_TIMEOUT_S", 0.02)
    slow_a, slow_b = nested("sqrt", 20, "2"), nested("sqrt", 20, "5")
    with caplog.at_level(logging.WARNING, logger=equivalence.__name__):
        assert bounded(lambda: math_equivalent(slow_a, slow_b)) is False
    assert any("no verdict" in record.getMessage() for record in caplog.records)
    assert first.poll() is not None  # the hung process was killed
    # The slow answer is now compared as a string only: no second timeout, no new process.
    warnings = len(caplog.records)
    assert bounded(lambda: math_equivalent(slow_a, nested("sqrt", 19, "7"))) is False
    assert equivalence._verifier._proc is None and len(caplog.records) == warnings
    monkeypatch.setattr(equivalence, "VERIFY_TIMEOUT_S", 30.0)
    assert bounded(lambda: math_equivalent("0.75", r"\frac{3}{4}"))  # a fresh verifier serves
    assert equivalence._verifier._proc is not first


def test_the_verifier_process_runs_under_a_memory_limit() -> None:
    assert bounded(lambda: math_equivalent("0.2", r"\frac{1}{5}"))
    proc = equivalence._verifier._proc
    assert proc is not None
    limits = Path(f"/proc/{proc.pid}/limits").read_text()
    line = next(row for row in limits.splitlines() if row.startswith("Max address space"))
    assert str(equivalence.VERIFY_MEMORY_BYTES) in line


def _pool(question: str, answers: list[str]) -> TracePool:
    traces = [
        PoolTrace(text=f"Let me think about it, step {i}. The answer is \\boxed{{{a}}}.")
        for i, a in enumerate(answers)
    ]
    return TracePool(problems=[PoolProblem(id="q", problem=question, traces=traces)])


def test_a_run_with_pathological_answers_ends(caplog: pytest.LogCaptureFixture) -> None:
    """SelfConsistency(..., deadline_s=5) over such answers ran past 30 s; now it votes."""
    question = "Expand the power."
    answers = ["(x+1)^{5000}", "(x+2)^{5000}", "(x+1)^{5000}", "{" * 250 + "1" + "}" * 250]
    runner = SelfConsistency(
        ReplayBackend(_pool(question, answers)), n_traces=len(answers), deadline_s=5
    )
    result = bounded(lambda: asyncio.run(runner.run(question)))
    assert result.answer == "(x+1)^{5000}"
