"""Fixtures for the LangGraph integration tests (helpers live in lg_helpers.py)."""

from __future__ import annotations

import pytest

from deepprune_lc.demo import load_demo_pool


@pytest.fixture(scope="session")
def bakery() -> str:
    return load_demo_pool().by_id("demo-bakery").problem


@pytest.fixture(params=[False, True], ids=["sync", "async"])
def asynchronous(request: pytest.FixtureRequest) -> bool:
    """Run a test through ``invoke``/``stream`` and through ``ainvoke``/``astream``."""
    return bool(request.param)
