"""Backend and judge kinds from packages outside this repository, found through entry points.

Each test writes a small installed package into ``tmp_path`` (a module plus a ``*.dist-info``
directory with ``METADATA`` and ``entry_points.txt``, which is all ``importlib.metadata`` reads) and
puts it on ``sys.path``; nothing in ``deepprune_lc`` names it.
"""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from deepprune_lc.backends import ReplayBackend
from deepprune_lc.core import PruningConfig, Spec, SpecError, TokensPrefix
from deepprune_lc.demo import load_demo_pool
from deepprune_lc.judges import LexicalJudge
from deepprune_lc.langchain import DeepPruneReasoner
from deepprune_lc.runtime import (
    DeepPrune,
    backend_kinds,
    check_backend_spec,
    check_judge_spec,
    judge_kinds,
    refresh_plugins,
    register_backend,
    register_judge,
    registry,
    resolve_backend,
    resolve_judge,
    run_sync,
    unregister_backend,
    unregister_judge,
)

MODULE = "toy_deepprune_plugin"
POOL = load_demo_pool()
BAKERY = POOL.by_id("demo-bakery").problem
PRUNING = PruningConfig(n_traces=8, prefix=TokensPrefix(k=40), finalists=3)

TOY_MODULE = '''
"""A third-party plugin: a backend and a judge for DeepPrune, registered by entry points."""

from deepprune_lc.backends import ReplayBackend
from deepprune_lc.demo import load_demo_pool
from deepprune_lc.judges import LexicalJudge


class ToyBackend(ReplayBackend):
    model_name = "toy-model"


class ToyJudge(LexicalJudge):
    def __init__(self, spec):
        super().__init__()
        self.spec = spec
        self.calls = 0

    async def score(self, pairs):
        self.calls += 1
        return await super().score(pairs)


def make_backend(spec):
    spec.check_options({"yield_every"})
    if spec.arg != "demo":
        raise ValueError(f"toy backend: only 'toy:demo' exists, not {spec.arg!r}")
    return ToyBackend(load_demo_pool(), yield_every=int(spec.options.get("yield_every", "1")))


def make_judge(spec):
    spec.check_options()
    return ToyJudge(spec)


def broken(spec):
    raise RuntimeError("the toy factory is broken")


def not_a_backend(spec):
    return object()
'''

TOY_ENTRY_POINTS = f"""
[deepprune.backends]
toy = {MODULE}:make_backend
toybroken = {MODULE}:broken
toyobject = {MODULE}:not_a_backend
toymissing = {MODULE}_absent:make_backend

[deepprune.judges]
toyjudge = {MODULE}:make_judge
"""


def write_distribution(root: Path, name: str, entry_points: str, version: str = "0.1.0") -> None:
    """An installed distribution as ``importlib.metadata`` sees it: METADATA + entry_points.txt."""
    info = root / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n", encoding="utf-8"
    )
    (info / "entry_points.txt").write_text(textwrap.dedent(entry_points), encoding="utf-8")


@pytest.fixture
def fresh_instances(monkeypatch: pytest.MonkeyPatch) -> tuple[dict[str, Any], dict[str, Any]]:
    """Empty shared-instance caches for this test (restored afterwards)."""
    backends: dict[str, Any] = {}
    judges: dict[str, Any] = {}
    monkeypatch.setattr(registry, "_backends", backends)
    monkeypatch.setattr(registry, "_judges", judges)
    return backends, judges


@pytest.fixture
def plugin_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_instances: Any
) -> Iterator[Path]:
    """The toy plugin installed on ``sys.path`` (and gone again after the test)."""
    (tmp_path / f"{MODULE}.py").write_text(TOY_MODULE, encoding="utf-8")
    write_distribution(tmp_path, "toy-deepprune-plugin", TOY_ENTRY_POINTS)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, MODULE, raising=False)
    refresh_plugins()
    yield tmp_path
    monkeypatch.undo()
    sys.modules.pop(MODULE, None)
    refresh_plugins()


def test_a_package_outside_the_repository_adds_a_backend_and_a_judge(plugin_dir: Path) -> None:
    assert {"toy", "replay"} <= set(backend_kinds())
    assert {"toyjudge", "lexical"} <= set(judge_kinds())

    model = DeepPruneReasoner(backend="toy:demo", judge="toyjudge", pruning=PRUNING)
    assert MODULE not in sys.modules  # construction read metadata only
    message = model.invoke(BAKERY)
    assert MODULE in sys.modules

    summary = message.response_metadata["deepprune"]
    assert summary["answer"] == "216" and "216" in message.text
    runner = model._deepprune()
    toy = sys.modules[MODULE]
    assert isinstance(runner.backend, toy.ToyBackend)
    assert isinstance(runner.judge, toy.ToyJudge)
    assert runner.judge.calls == summary["judge_calls"] >= 1
    assert runner.judge.spec == Spec("toyjudge")
    # Shared: the same spec names the same instances.
    assert resolve_backend("toy:demo") is runner.backend
    assert resolve_judge("toyjudge") is runner.judge
    assert resolve_backend("toy:demo?yield_every=1") is not runner.backend  # another spec

    # The runtime's own runner takes the same spec strings through resolve_*.
    result = run_sync(
        DeepPrune(resolve_backend("toy:demo"), resolve_judge("toyjudge"), PRUNING).run(BAKERY)
    )
    assert result.answer == "216"


def test_a_factory_that_raises_names_the_kind_and_the_entry_point(plugin_dir: Path) -> None:
    check_backend_spec("toybroken")  # registered: construction-time checks pass
    with pytest.raises(RuntimeError, match="the toy factory is broken") as info:
        resolve_backend("toybroken")
    notes = "\n".join(getattr(info.value, "__notes__", []))
    assert "kind 'toybroken'" in notes
    assert f"entry point 'toybroken = {MODULE}:broken'" in notes
    assert "toy-deepprune-plugin 0.1.0" in notes
    assert "toybroken" not in registry._backends  # nothing half-made is shared

    with pytest.raises(ValueError, match="only 'toy:demo' exists") as bad_arg:
        resolve_backend("toy:other")  # the factory's own error type is kept
    assert "kind 'toy'" in "\n".join(getattr(bad_arg.value, "__notes__", []))


def test_factories_that_cannot_load_or_return_the_wrong_thing_fail_clearly(
    plugin_dir: Path,
) -> None:
    with pytest.raises(ImportError, match=r"kind 'toymissing' could not be loaded") as info:
        resolve_backend("toymissing")
    assert f"toymissing = {MODULE}_absent:make_backend" in str(info.value)
    assert "pip install toy-deepprune-plugin" in str(info.value)
    with pytest.raises(
        TypeError, match=r"kind 'toyobject'.*returned object, not a GenerationBackend"
    ):
        resolve_backend("toyobject")


def test_a_kind_an_installed_release_lacks_fails_clearly(plugin_dir: Path) -> None:
    # An older release of a package whose entry point names a factory its module does not have.
    write_distribution(
        plugin_dir,
        "deepprune-x",
        "[deepprune.judges]\nolderjudge = deepprune_lc.judges:no_such_factory\n",
    )
    refresh_plugins()
    check_judge_spec("olderjudge:release")
    with pytest.raises(NotImplementedError, match=r"deepprune-x does not provide it"):
        resolve_judge("olderjudge:release")


def test_unknown_option_keys_raise(plugin_dir: Path) -> None:
    with pytest.raises(SpecError, match=r"unknown option 'speed'; kind 'toy' takes 'yield_every'"):
        resolve_backend("toy:demo?speed=3")
    with pytest.raises(SpecError, match=r"unknown option 'bogus'.*takes 'cache_size', 'midpoint'"):
        resolve_judge("lexical?midpoint=0.5&bogus=1")
    with pytest.raises(SpecError, match="takes no options"):
        resolve_backend("replay:demo?speed=2")
    with pytest.raises(SpecError, match="midpoint"):
        resolve_judge("lexical?midpoint=2")  # out of the config's range
    with pytest.raises(SpecError, match="takes no argument"):
        resolve_judge("lexical:strict")
    with pytest.raises(SpecError, match="name the pool"):
        resolve_backend("replay")
    tuned = resolve_judge("lexical?ngram=3&midpoint=0.5")
    assert isinstance(tuned, LexicalJudge)
    assert (tuned.config.ngram, tuned.config.midpoint) == (3, 0.5)
    assert resolve_judge("lexical?midpoint=0.5&ngram=3") is tuned  # one instance per canonical spec


def test_unknown_kinds_list_the_registered_ones_and_how_to_install_first_party_ones(
    plugin_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(SpecError, match=r"unknown kind 'nope'.*registered backend kinds: .*'toy'"):
        check_backend_spec("nope:model")
    with pytest.raises(
        SpecError, match=r"unknown kind 'magic'.*registered judge kinds: .*'toyjudge'"
    ):
        check_judge_spec("magic")
    with pytest.raises(SpecError, match=r"expected a GenerationBackend or a spec string.*got int"):
        check_backend_spec(42)

    # A machine without deepprune-vllm / deepprune-transformers: their kinds are not registered.
    def without_integrations(group: str) -> list[importlib.metadata.EntryPoint]:
        installed = importlib.metadata.entry_points(group=group)
        return [ep for ep in installed if ep.name not in {"vllm", "transformers", "embedding"}]

    monkeypatch.setattr(registry, "entry_points", without_integrations)
    refresh_plugins()
    with pytest.raises(
        SpecError, match=r"kind 'vllm' comes with deepprune-vllm: pip install deepprune-vllm"
    ):
        check_backend_spec("vllm:Qwen/Qwen3-8B")
    with pytest.raises(SpecError, match="pip install deepprune-transformers"):
        check_judge_spec("embedding")
    with pytest.raises(SpecError, match="pip install deepprune-transformers"):
        resolve_backend("transformers:smollm2")


def test_two_packages_claiming_one_kind_is_an_error(plugin_dir: Path) -> None:
    write_distribution(plugin_dir, "other-plugin", "[deepprune.backends]\ntoy = other:make\n")
    refresh_plugins()
    with pytest.raises(SpecError, match="registered more than once") as info:
        check_backend_spec("toy:demo")
    assert "toy-deepprune-plugin" in str(info.value) and "other-plugin" in str(info.value)


def test_construction_imports_no_integration() -> None:
    code = (
        "import sys; from deepprune_lc import DeepPruneReasoner; "
        "DeepPruneReasoner(backend='vllm:/no/model?max_model_len=512', judge='embedding'); "
        "DeepPruneReasoner(backend='transformers:smollm2', judge='transformers:smollm2'); "
        "print(sorted(m for m in ('deepprune_vllm', 'deepprune_transformers', 'vllm', 'torch') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# -- registering from code --------------------------------------------------------------------------


def test_kinds_registered_in_code_resolve_like_entry_points(fresh_instances: Any) -> None:
    made: list[Spec] = []

    def make(spec: Spec) -> ReplayBackend:
        made.append(spec)
        return ReplayBackend(POOL, yield_every=1)

    def make_judge(spec: Spec) -> LexicalJudge:
        return LexicalJudge()

    register_backend("notebook", make)
    register_judge("notebook-judge", make_judge)
    try:
        register_backend("notebook", make)  # the same function again (a re-run cell): fine
        with pytest.raises(ValueError, match="already registered"):
            register_backend("notebook", lambda spec: ReplayBackend(POOL))
        with pytest.raises(ValueError, match="already registered"):
            register_backend("replay", make)  # an entry point's kind
        with pytest.raises(SpecError, match="kind"):
            register_backend("not a kind", make)
        assert "notebook" in backend_kinds() and "notebook-judge" in judge_kinds()

        model = DeepPruneReasoner(
            backend="notebook:x?b=2&a=1", judge="notebook-judge", pruning=PRUNING
        )
        assert model.invoke(BAKERY).response_metadata["deepprune"]["answer"] == "216"
        assert resolve_backend("notebook:x?a=1&b=2") is model._deepprune().backend
        assert made == [Spec("notebook", "x", {"a": "1", "b": "2"})]

        replacement = ReplayBackend(POOL, yield_every=1)
        register_backend("notebook", lambda spec: replacement, replace=True)
        assert resolve_backend("notebook:x?a=1&b=2") is replacement  # old instances dropped
    finally:
        unregister_backend("notebook")
        unregister_judge("notebook-judge")
    with pytest.raises(SpecError, match="unknown kind 'notebook'"):
        check_backend_spec("notebook:x")
    with pytest.raises(KeyError, match="not registered in code"):
        unregister_backend("replay")


def test_one_shared_instance_per_spec_across_threads(fresh_instances: Any) -> None:
    created: list[ReplayBackend] = []
    entered = threading.Barrier(8)

    def make(spec: Spec) -> ReplayBackend:
        backend = ReplayBackend(POOL, yield_every=1)
        created.append(backend)
        return backend

    def resolve() -> Any:
        entered.wait()
        return resolve_backend("threaded:demo")

    register_backend("threaded", make)
    try:
        results: list[Any] = []
        threads = [threading.Thread(target=lambda: results.append(resolve())) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(created) == 1
        assert len(results) == 8 and all(result is created[0] for result in results)
    finally:
        unregister_backend("threaded")
