"""The README's code runs as written.

Every ```python block of README.md is run as a script of its own, in a fresh interpreter with the
repository root as the working directory (where a user who cloned the project stands), and must
exit cleanly. After the block, a few lines check that the run showed the product working (the
README says what it prints or returns). A block may be left out only when it is marked as needing
hardware this machine lacks: its first line is ``# needs: gpu``. The two commands the README
starts with (``make demo``, ``make test``) must exist as Makefile targets.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
_FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
#: The first line of a block that needs hardware the test machine lacks.
NEEDS_GPU = "# needs: gpu"


def code_blocks(language: str) -> list[str]:
    return [body for lang, body in _FENCE.findall(README.read_text("utf-8")) if lang == language]


PYTHON_BLOCKS = code_blocks("python")

#: What each block must show, checked in the block's own namespace right after it ran; keyed by a
#: line the block contains.
CHECKS = {
    "deepprune = DeepPrune(": (
        "assert result.answer == '24', result.answer\n"
        "assert result.totals.token_savings > 0, result.summary()\n"
        "assert len(result.traces) == 16\n"
    ),
    "model = DeepPruneReasoner(": (
        "summary = message.response_metadata['deepprune']\n"
        "assert summary['answer'] == '24', summary\n"
        "assert summary['token_savings'] > 0 and summary['trace_status'].get('aborted', 0) > 0\n"
        "assert '\\\\boxed{24}' in message.content\n"
        "assert message.usage_metadata['output_tokens'] == summary['decoded_tokens']\n"
    ),
}


def test_the_readme_has_python_examples() -> None:
    assert len(PYTHON_BLOCKS) >= 2
    for marker in CHECKS:
        assert any(marker in block for block in PYTHON_BLOCKS), marker


@pytest.mark.parametrize(
    "block", PYTHON_BLOCKS, ids=[f"block{i}" for i in range(len(PYTHON_BLOCKS))]
)
def test_readme_python_block_runs_as_written(block: str) -> None:
    if block.startswith(NEEDS_GPU):
        pytest.skip("marked as needing a GPU engine")
    checks = "".join(check for marker, check in CHECKS.items() if marker in block)
    out = subprocess.run(
        [sys.executable, "-c", block + "\n" + checks],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-4000:]


def test_the_first_example_prints_the_answer_first() -> None:
    """The "Use it" block's first line of output is the answer, then the summary."""
    (block,) = [b for b in PYTHON_BLOCKS if "deepprune = DeepPrune(" in b]
    out = subprocess.run(
        [sys.executable, "-c", block], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-4000:]
    first, *events = out.stdout.splitlines()
    assert first.startswith("24 {")
    names = [line.split()[0] for line in events]
    assert "deepprune.trace_pruned" in names and names[-1] == "deepprune.run_completed"


def test_the_readme_starts_with_make_demo_and_make_test() -> None:
    first_bash = code_blocks("bash")[0]
    commands = [line.split("#")[0].strip() for line in first_bash.splitlines()]
    assert commands == ["make demo", "make test"]
    makefile = (ROOT / "Makefile").read_text("utf-8")
    assert re.search(r"^demo:", makefile, re.MULTILINE)
    assert re.search(r"^test:", makefile, re.MULTILINE)
