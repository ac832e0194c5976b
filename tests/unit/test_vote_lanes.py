"""benchmarks/vote_lanes.py: what collecting settled finished votes costs, lane by lane."""

from __future__ import annotations

import json
import runpy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from probe_pool_files import probe_problem

from deepprune_lc.backends.pool import PoolProblem
from deepprune_lc.core.answers import AnswerRules

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "vote_lanes.py"
RULES = AnswerRules.math()
RunLanes = Callable[..., Any]


def _problem(traces: list[tuple[int, str]]) -> PoolProblem:
    records = [{"tokens": n, "final_answer": a, "probes": []} for n, a in traces]
    return probe_problem(records, every=500)


@pytest.fixture(scope="module")
def run_lanes() -> RunLanes:
    function: RunLanes = runpy.run_path(str(SCRIPT))["run_lanes"]
    return function


def test_one_lane_is_sequential_sampling_until_a_lead_of_two(run_lanes: RunLanes) -> None:
    problem = _problem([(1000, "7"), (2000, "3"), (1000, "7.0"), (3000, "7")])
    run = run_lanes(problem, 1, 2, RULES)
    # 7 | 7 3 | 7 3 7 (lead 1) | 7 3 7 7 (lead 2): all four, one after another.
    assert (run.answer, run.tokens, run.latency) == ("7", 7000, 7000)
    run = run_lanes(problem, 2, 2, RULES)
    # Two lanes: trace 2 starts at 1000 when trace 0 ends, trace 3 at 2000; settled at 5000.
    assert (run.answer, run.tokens, run.latency) == ("7", 7000, 5000)


def test_a_settled_vote_stops_the_traces_still_running(run_lanes: RunLanes) -> None:
    run = run_lanes(_problem([(1000, "7"), (1000, "7"), (5000, "3")]), 3, 2, RULES)
    assert (run.answer, run.tokens, run.latency) == ("7", 3000, 1000)  # trace 2 ran 1000 of 5000


def test_no_answer_does_not_vote_and_an_unsettled_vote_takes_the_plurality(
    run_lanes: RunLanes,
) -> None:
    run = run_lanes(_problem([(1000, "ERR"), (1000, "3"), (1000, "7"), (1000, "3")]), 4, 2, RULES)
    assert (run.answer, run.tokens, run.latency) == ("3", 4000, 1000)  # 3:2 vs 7:1, all ran


def test_the_table_puts_lanes_beside_cons(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pool = tmp_path / "pool.jsonl"
    traces: list[dict[str, object]] = [
        {"tokens": n, "final_answer": "7", "probes": []} for n in (1000, 2000, 3000)
    ]
    record = {"id": "q", "problem": "Q?", "answer": "7", "probe_every_tokens": 500}
    pool.write_text(json.dumps({**record, "traces": traces}) + "\n")
    argv = ["vote_lanes.py", str(pool), "--n", "3", "--resamples", "1", "--lanes", "1,3"]
    monkeypatch.setattr("sys.argv", argv)
    runpy.run_path(str(SCRIPT), run_name="__main__")
    rows = {
        line[:10].strip(): line[10:].split() for line in capsys.readouterr().out.splitlines()[1:]
    }
    assert rows["cons"] == ["100.0%", "1.000", "1.000"]
    assert rows["K = 1"][0] == rows["K = 3"][0] == "100.0%"
    # Three lanes stop at the second finish; one lane runs the first two traces back to back.
    assert float(rows["K = 3"][2]) < float(rows["K = 1"][2])
