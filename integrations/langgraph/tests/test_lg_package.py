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


def test_a_reasoner_call_loads_no_langgraph() -> None:
    """The core knows nothing of LangGraph: invoking the reasoner, even in a stream, never imports
    it (the graph's stream writer reaches a run only through a handler this package adds)."""
    code = (
        "import sys; from deepprune_lc import DeepPruneReasoner; "
        "from deepprune_lc.demo import load_demo_pool; "
        "question = load_demo_pool().by_id('demo-bakery').problem; "
        "model = DeepPruneReasoner(backend='replay:demo'); "
        "assert model.invoke(question).response_metadata['deepprune']['answer']; "
        "assert len(list(model.stream(question))) == 1; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'langgraph'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
