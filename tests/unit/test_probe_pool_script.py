"""benchmarks/probe_pool.py: one pass of each configuration over a probe pool, side by side."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest
from probe_pool_files import write_probe_pool

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "probe_pool.py"


def _write_pool(path: Path) -> None:
    # Four traces that all end on 7, probed every 500 tokens: ESC's first window of two agrees,
    # so it decodes the first two traces only.
    lengths = [1000, 1500, 2000, 2500]
    traces = [{"tokens": n, "final_answer": "7", "probes": ["7"] * (n // 500)} for n in lengths]
    write_probe_pool(path, traces, every=500)


def test_esc_runs_beside_cons_and_decodes_one_window(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pool = tmp_path / "pool.jsonl"
    _write_pool(pool)
    argv = ["probe_pool.py", str(pool), "--n", "4", "--config", "esc:window=2"]
    monkeypatch.setattr("sys.argv", argv)
    runpy.run_path(str(SCRIPT), run_name="__main__")
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()[1:]}
    assert set(rows) == {"cons", "esc:window=2"}  # cons is added as the ratio baseline
    cons, esc = rows["cons"], rows["esc:window=2"]
    assert cons[1] == esc[1] == "100.0%"
    assert (int(cons[2]), int(esc[2])) == (7000, 2500)  # all four traces; the first two
    assert esc[3] == f"{2500 / 7000:.3f}"


def test_an_esc_option_that_does_not_validate_names_the_field(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pool = tmp_path / "pool.jsonl"
    _write_pool(pool)
    argv = ["probe_pool.py", str(pool), "--n", "4", "--config", "esc:window=0"]
    monkeypatch.setattr("sys.argv", argv)
    with pytest.raises(ValueError, match="window"):
        runpy.run_path(str(SCRIPT), run_name="__main__")


def test_thin_keeps_every_kth_probe_as_a_coarser_recording(tmp_path: Path) -> None:
    pool_path = tmp_path / "pool.jsonl"
    traces = [{"tokens": 2000, "final_answer": "7", "probes": ["1", "2", "3", "4"]}]
    write_probe_pool(pool_path, traces, every=500)
    script = runpy.run_path(str(SCRIPT))
    pool = script["load_trace_pool"](pool_path)
    thinned = script["thin_probes"](pool, 2).problems[0]
    assert thinned.probe_every_tokens == 1000
    assert thinned.traces[0].probes == ["2", "4"]  # the answers at 1000 and 2000 tokens
    assert pool.problems[0].traces[0].probes == ["1", "2", "3", "4"]  # the pool is not changed
    with pytest.raises(SystemExit, match="--thin"):
        script["thin_probes"](pool, 0)
