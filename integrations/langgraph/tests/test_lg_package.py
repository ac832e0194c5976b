"""The package surface: ``__all__`` is exactly the public names, and the core never imports it."""

from __future__ import annotations

import subprocess
import sys
import types

import deepprune_langgraph


def test_public_api_is_exactly_all() -> None:
    exported = {
        name
        for name, value in vars(deepprune_langgraph).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert set(deepprune_langgraph.__all__) - {"__version__"} == exported


def test_the_core_does_not_import_the_integration() -> None:
    code = (
        "import sys, deepprune_lc, deepprune_lc.cli; "
        "from deepprune_lc import DeepPruneReasoner; "
        "print('deepprune_langgraph' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
