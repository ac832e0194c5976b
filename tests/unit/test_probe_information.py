"""benchmarks/probe_information.py: the probe-information tables docs/method.md cites."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import pytest
from probe_pool_files import write_probe_pool

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "probe_information.py"


def _write_pool(path: Path) -> None:
    # Three traces, probes every 1000 tokens. Trace 0 ends on 7 and probes 5, 7, 7; trace 1 ends
    # on 7 and probes 5, 5, 7; trace 2 ends on 9 and probes 5, 5, 5 (a value it only passes
    # through is never its answer).
    traces = [
        {"tokens": 3000, "final_answer": "7", "probes": ["5", "7", "7"]},
        {"tokens": 3000, "final_answer": "7.0", "probes": ["5", "5", "7"]},
        {"tokens": 3000, "final_answer": "9", "probes": ["5", "5", "5"]},
    ]
    write_probe_pool(path, traces, every=1000)


def test_the_tables_count_stable_probes_and_the_largest_class(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pool = tmp_path / "pool.jsonl"
    _write_pool(pool)
    monkeypatch.setattr("sys.argv", ["probe_information.py", str(pool), "--n", "3"])
    runpy.run_path(str(SCRIPT), run_name="__main__")
    out = capsys.readouterr().out
    # 0-2000 band: probes at 1000 (5, 5, 5): none right; none stable.
    # 2000-4000 band: at 2000 (7, 5, 5) and 3000 (7, 7, 5): 3 of 6 right ("7.0" is 7 under the
    # math rules); stable ones are 7@3000 (right, majority), 5@2000 twice and 5@3000 (wrong).
    assert "0.000 (    3)" in out
    assert "0.500 (    6)" in out
    assert "0.250 (    4)" in out
    assert "1.000 (    1)" in out
    # Largest class: none at 500 tokens (before the first probe); at 2000 (7, 5, 5) the two 5s,
    # one ending on the majority answer 7; at 4000 and on, the last probes (7, 7, 5): the two 7s.
    assert "       500" not in out
    assert "      2000 0.500 (2 traces)" in out
    assert "      4000 1.000 (2 traces)" in out
    assert "any trace 0.667" in out


def test_a_pool_without_probes_is_refused_by_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pool = tmp_path / "text.jsonl"
    pool.write_text(json.dumps({"id": "q", "problem": "Q?", "traces": [{"text": "\\boxed{1}"}]}))
    monkeypatch.setattr("sys.argv", ["probe_information.py", str(pool)])
    with pytest.raises(SystemExit, match="no problem records answer probes"):
        runpy.run_path(str(SCRIPT), run_name="__main__")
