"""Trace pool JSONL: the real dev pool loads, bad lines are reported with file and line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from deepprune_lc.backends.pool import (
    PoolProblem,
    PoolTrace,
    TracePool,
    TracePoolError,
    load_trace_pool,
)
from deepprune_lc.demo import DEMO_POOL_PATH, load_demo_pool

DEV_POOL = Path(__file__).resolve().parents[3] / "shared/data/traces/qwen25math_cot8_dev.jsonl"


def _problem(pid: str = "p1", **over: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": pid,
        "problem": f"Problem {pid}: what is 2+3?",
        "answer": "5",
        "traces": [{"text": "2+3=5, \\boxed{5}", "reference_answer": "5"}],
    }
    data.update(over)
    return data


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.mark.skipif(not DEV_POOL.exists(), reason="shared dev pool not available")
def test_real_dev_pool_loads_as_is() -> None:
    pool = load_trace_pool(DEV_POOL)
    assert len(pool) == 70
    assert all(len(problem.traces) == 8 for problem in pool)
    first = pool.problems[0]
    assert first.answer is not None
    assert "level" in first.extra and "source_model" in first.extra
    assert all(isinstance(t.reference_correct, bool) for t in first.traces)
    assert pool.by_id(first.id) is first
    assert pool.source == str(DEV_POOL)


def test_minimal_problem_and_extra_fields(tmp_path: Path) -> None:
    line = json.dumps(
        {"id": "a", "problem": "Q?", "traces": [{"text": "t", "logprob": -1.5}], "level": 3}
    )
    pool = load_trace_pool(_write(tmp_path / "pool.jsonl", [line]))
    problem = pool.by_id("a")
    assert problem.answer is None
    assert problem.extra == {"level": 3}
    assert problem.traces[0].reference_answer is None
    assert problem.traces[0].extra == {"logprob": -1.5}


def test_blank_lines_are_skipped(tmp_path: Path) -> None:
    lines = ["", json.dumps(_problem("a")), "   ", json.dumps(_problem("b")), ""]
    pool = load_trace_pool(_write(tmp_path / "pool.jsonl", lines))
    assert [p.id for p in pool] == ["a", "b"]


@pytest.mark.parametrize(
    ("bad_line", "expected"),
    [
        ("{not json", "invalid JSON"),
        (json.dumps({"id": "x", "problem": "Q"}), "traces: Field required"),
        (json.dumps(_problem("x", traces=[])), "traces: List should have at least 1 item"),
        (json.dumps(_problem("x", traces="abc")), "traces: Input should be a valid list"),
        (json.dumps(_problem("x", id=7)), "id: Input should be a valid string"),
        (json.dumps(_problem("x", traces=[{"txt": "a"}])), "traces.0.text: Field required"),
        (
            json.dumps(_problem("x", traces=[{"text": "a", "reference_correct": "yes"}])),
            "traces.0.reference_correct: Input should be a valid boolean",
        ),
        ("[1, 2]", "expected a JSON object, got list"),
        (json.dumps(_problem("p1")), "duplicate problem id 'p1' (first on line 1)"),
    ],
)
def test_malformed_line_names_file_and_line(tmp_path: Path, bad_line: str, expected: str) -> None:
    path = _write(tmp_path / "pool.jsonl", [json.dumps(_problem("p1")), "", bad_line])
    with pytest.raises(TracePoolError) as info:
        load_trace_pool(path)
    message = str(info.value)
    assert message.startswith(f"{path}:3: "), message
    assert expected in message
    assert isinstance(info.value, ValueError)


def test_write_jsonl_round_trips(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    lines = [json.dumps(_problem("a", level="L1")), json.dumps(_problem("b"))]
    pool = load_trace_pool(_write(source, lines))
    out = tmp_path / "out.jsonl"
    pool.write_jsonl(out)
    again = load_trace_pool(out)
    assert again.problems == pool.problems
    assert json.loads(out.read_text().splitlines()[0])["level"] == "L1"


def test_find_by_prompt_exact_contained_longest_and_missing() -> None:
    short = PoolProblem(id="s", problem="What is 2+3?", traces=[PoolTrace(text="5")])
    long = PoolProblem(
        id="l", problem="Tom asks: What is 2+3? Then double it.", traces=[PoolTrace(text="10")]
    )
    pool = TracePool(problems=[short, long])
    assert pool.find_by_prompt("  What is 2+3?\n") is short
    assert pool.find_by_prompt("Solve. What is 2+3? Box the answer.") is short
    assert pool.find_by_prompt("Solve. Tom asks: What is 2+3? Then double it. Box it.") is long
    assert pool.find_by_prompt("What is 4+4?") is None


def test_pool_iterates_over_problems_and_rejects_duplicate_ids() -> None:
    a = PoolProblem(id="a", problem="A?", traces=[PoolTrace(text="x")])
    pool = TracePool(problems=[a])
    assert list(pool) == [a]
    with pytest.raises(KeyError, match="'zz'"):
        pool.by_id("zz")
    with pytest.raises(ValueError, match="duplicate problem id 'a'"):
        TracePool(problems=[a, a])


GRADE_SCHOOL = ("demo-bakery", "demo-pencils", "demo-train")


def test_demo_pool_is_embedded_and_well_formed() -> None:
    pool = load_demo_pool()
    assert Path(str(DEMO_POOL_PATH)).name == "demo_pool.jsonl"
    assert [problem.id for problem in pool] == [*GRADE_SCHOOL, "demo-divisors"]
    for problem in (pool.by_id(problem_id) for problem_id in GRADE_SCHOOL):
        assert len(problem.traces) == 8
        assert problem.answer is not None
        correct = [t.reference_answer == problem.answer for t in problem.traces]
        assert 5 <= sum(correct) <= 7
        for trace in problem.traces:
            words = len(trace.text.split())
            assert 80 <= words <= 200, (problem.id, words)
            assert f"\\boxed{{{trace.reference_answer}}}" in trace.text
            assert trace.reference_correct == (trace.reference_answer == problem.answer)


def test_the_readme_question_has_long_traces_that_reach_the_default_prefix() -> None:
    """``demo-divisors`` is the README's question: 16 traces in a reasoning model's style, each
    reaching the default prefix (25 reasoning words) well before its end, so the library defaults
    can prune on it; most are right (24) and a few make a plausible mistake."""
    from deepprune_lc.backends.tokenizer import RegexTokenizer
    from deepprune_lc.core.config import ReasoningWordsPrefix
    from deepprune_lc.core.prefix import reasoning_word_prefix

    problem = load_demo_pool().by_id("demo-divisors")
    assert problem.problem == "How many positive divisors does 360 have?"
    assert problem.answer == "24" and len(problem.traces) == 16
    answers = [trace.reference_answer for trace in problem.traces]
    assert answers.count("24") == 13 and sorted(set(answers)) == ["18", "22", "24"]
    tokenizer = RegexTokenizer()
    for trace in problem.traces:
        assert f"\\boxed{{{trace.reference_answer}}}" in trace.text
        assert trace.reference_correct == (trace.reference_answer == "24")
        prefix = reasoning_word_prefix(trace.text, ReasoningWordsPrefix())
        assert prefix is not None, trace.text[:60]
        tokens, prefix_tokens = tokenizer.count(trace.text), tokenizer.count(prefix)
        assert 300 <= tokens <= 600 and prefix_tokens <= 0.85 * tokens, (tokens, prefix_tokens)
