"""Spec checks at construction: a factory's ``check`` attribute (``registry.factory_check``).

``DeepPruneReasoner(backend="replay:/missing.jsonl")`` used to construct and fail only on its first
call, with a bare ``FileNotFoundError``. The core's ``replay`` kind now checks its argument when the
reasoner is built; a kind from an outside package is checked there only once its module is loaded
(construction never imports an engine), and on creation always. Last, how a spec is shown off
this machine (``spec_display_name``): without local directories, which LangSmith would receive.
"""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from deepprune_lc.core import Spec, SpecError
from deepprune_lc.demo import load_demo_pool
from deepprune_lc.langchain import DeepPruneReasoner
from deepprune_lc.runtime import (
    check_backend_spec,
    factory_check,
    refresh_plugins,
    register_backend,
    registry,
    resolve_backend,
    spec_display_name,
    unregister_backend,
)

MODULE = "checked_deepprune_plugin"


def test_a_missing_replay_pool_fails_at_construction_naming_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.jsonl"
    with pytest.raises(FileNotFoundError) as info:
        DeepPruneReasoner(backend=f"replay:{missing}")
    message = str(info.value)
    assert str(missing) in message and "does not exist" in message
    assert "replay:demo" in message  # what to do instead
    notes = "\n".join(getattr(info.value, "__notes__", []))
    assert "kind 'replay'" in notes


def test_a_directory_is_not_a_replay_pool(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="is a directory, not a file"):
        DeepPruneReasoner(backend=f"replay:{tmp_path}")


def test_replay_spec_errors_come_at_construction() -> None:
    with pytest.raises(ValueError, match="name the pool"):
        DeepPruneReasoner(backend="replay")
    with pytest.raises(ValueError, match="takes no options"):
        DeepPruneReasoner(backend="replay:demo?speed=2")


def test_resolving_the_spec_raises_the_same_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(registry, "_backends", {})
    missing = tmp_path / "gone.jsonl"
    with pytest.raises(FileNotFoundError, match="does not exist") as info:
        resolve_backend(f"replay:{missing}")
    assert str(missing) in str(info.value)


def test_an_existing_pool_file_passes_the_check(tmp_path: Path) -> None:
    pool = tmp_path / "pool.jsonl"
    pool.write_text(
        (Path(__file__).parents[2] / "deepprune_lc" / "demo" / "demo_pool.jsonl").read_text(
            encoding="utf-8"
        ),
        encoding="utf-8",
    )
    model = DeepPruneReasoner(backend=f"replay:{pool}")
    assert model.backend == f"replay:{pool}"
    check_backend_spec("replay:demo")


def test_a_code_registered_factory_is_checked_without_being_called() -> None:
    calls: list[str] = []

    def check(spec: Spec) -> None:
        calls.append(f"check {spec.arg}")
        if spec.arg != "ok":
            raise SpecError(f"backend {spec.raw!r}: only 'checked:ok' exists")

    @factory_check(check)
    def make(spec: Spec) -> Any:
        calls.append("create")
        from deepprune_lc.backends import ReplayBackend

        return ReplayBackend(load_demo_pool())

    register_backend("checked", make)
    try:
        check_backend_spec("checked:ok")
        assert calls == ["check ok"]  # checked, nothing created
        with pytest.raises(ValueError, match="only 'checked:ok' exists"):
            DeepPruneReasoner(backend="checked:nope")
    finally:
        unregister_backend("checked")


PLUGIN = """
from deepprune_lc.runtime import factory_check


def check(spec):
    if spec.arg != "ok":
        raise ValueError(f"checked plugin: only 'checkedplugin:ok' exists, not {spec.arg!r}")


@factory_check(check)
def make_backend(spec):
    from deepprune_lc.backends import ReplayBackend
    from deepprune_lc.demo import load_demo_pool

    return ReplayBackend(load_demo_pool())
"""


@pytest.fixture
def plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """An outside package whose factory has a check, installed on ``sys.path`` for the test."""
    (tmp_path / f"{MODULE}.py").write_text(PLUGIN, encoding="utf-8")
    info = tmp_path / "checked_deepprune_plugin-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: checked-deepprune-plugin\nVersion: 0.1.0\n", encoding="utf-8"
    )
    (info / "entry_points.txt").write_text(
        textwrap.dedent(f"""
            [deepprune.backends]
            checkedplugin = {MODULE}:make_backend
        """),
        encoding="utf-8",
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, MODULE, raising=False)
    monkeypatch.setattr(registry, "_backends", {})
    refresh_plugins()
    yield
    monkeypatch.undo()
    sys.modules.pop(MODULE, None)
    refresh_plugins()


@pytest.mark.usefixtures("plugin")
def test_an_outside_kind_is_checked_once_its_module_is_loaded() -> None:
    # Not imported yet: construction reads metadata only (it may be an engine), no check.
    DeepPruneReasoner(backend="checkedplugin:nope")
    assert MODULE not in sys.modules
    # Creating runs the check first, with the factory's own error.
    with pytest.raises(ValueError, match="only 'checkedplugin:ok' exists"):
        resolve_backend("checkedplugin:nope")
    assert MODULE in sys.modules
    # Loaded now: construction checks too.
    with pytest.raises(ValueError, match="only 'checkedplugin:ok' exists"):
        DeepPruneReasoner(backend="checkedplugin:nope")
    DeepPruneReasoner(backend="checkedplugin:ok")


@pytest.mark.parametrize(
    ("spec", "shown"),
    [
        ("replay:demo", "replay:demo"),
        ("replay:/home/someone/pools/dev.jsonl", "replay:dev.jsonl"),
        ("transformers:/srv/models/qwen3-8b/", "transformers:qwen3-8b"),
        ("transformers:~/models/smollm2.gguf", "transformers:smollm2.gguf"),
        ("vllm:Qwen/Qwen3-8B?max_model_len=8192", "vllm:Qwen/Qwen3-8B"),  # a hub id stays
        ("lexical?midpoint=0.6", "lexical"),
        ("not a spec ::", "not a spec ::"),
    ],
)
def test_specs_are_shown_without_local_directories_or_options(spec: str, shown: str) -> None:
    assert spec_display_name(spec) == shown


def test_a_relative_path_that_exists_is_shown_by_its_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "pools").mkdir()
    (tmp_path / "pools" / "dev.jsonl").write_text("", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    assert spec_display_name("replay:pools/dev.jsonl") == "replay:dev.jsonl"
    model = DeepPruneReasoner(backend="replay:demo", judge="lexical?midpoint=0.6")
    assert model.resolved_model_name == "replay:demo"
    assert model.resolved_judge_name == "lexical"
