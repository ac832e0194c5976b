"""The public API: what users import, what each module exports, and what importing costs.

In the style of langchain-ollama's ``test_imports.py``: the exported names are listed here, so a
change to the public surface is a visible change to this file.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

import deepprune_lc

ROOT = Path(__file__).resolve().parents[2]

EXPECTED_ALL = [
    "DEFAULT_REASONING_WORDS",
    "AnswerRules",
    "BackendDeadError",
    "BackendError",
    "DeepPrune",
    "DeepPruneCallbackHandler",
    "DeepPruneError",
    "DeepPruneEvent",
    "DeepPruneReasoner",
    "DeepPruneResult",
    "DeepPruneTimeoutError",
    "EarlyStoppingConfig",
    "EarlyStoppingSelfConsistency",
    "FinishReason",
    "GenerationBackend",
    "GenerationError",
    "Judge",
    "JudgeError",
    "JudgeScores",
    "LexicalJudge",
    "Lifecycle",
    "PrefixPair",
    "PruningConfig",
    "ReasoningWordsPrefix",
    "ReplayBackend",
    "RunSummary",
    "SamplingConfig",
    "SelfConsistency",
    "TokensPrefix",
    "TraceDelta",
    "TracePool",
    "TracePoolError",
    "TraceRequest",
    "__version__",
    "extract_answer",
    "extract_choice",
    "load_trace_pool",
    "math_equivalent",
]

#: Heavy or outer-layer modules that the pure core must never load.
NOT_IN_CORE = ("langchain_core", "langsmith", "langgraph", "torch", "vllm", "transformers", "numpy")


def test_all_is_exactly_the_public_api() -> None:
    assert sorted(deepprune_lc.__all__) == sorted(EXPECTED_ALL)
    for name in EXPECTED_ALL:
        assert getattr(deepprune_lc, name) is not None


def test_the_version_comes_from_package_metadata() -> None:
    assert deepprune_lc.__version__ == version("deepprune-lc")


def _modules_loaded_by(statement: str) -> set[str]:
    code = f"import sys; {statement}; print('\\n'.join(sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout
    return {line.split(".")[0] for line in out.split()}


@pytest.mark.parametrize(
    "statement",
    [
        "import deepprune_lc.core",
        "import deepprune_lc.core.controllers",
        "import deepprune_lc.runtime",
        "import deepprune_lc",
        "from deepprune_lc import DeepPrune, PruningConfig, ReplayBackend, LexicalJudge",
    ],
)
def test_importing_the_core_loads_no_langchain_torch_or_engine(statement: str) -> None:
    loaded = _modules_loaded_by(statement)
    assert loaded.isdisjoint(NOT_IN_CORE), sorted(loaded & set(NOT_IN_CORE))


def test_the_chat_model_loads_langchain_on_first_use() -> None:
    assert "langchain_core" in _modules_loaded_by("from deepprune_lc import DeepPruneReasoner")


def _all_modules() -> list[str]:
    names = ["deepprune_lc"]
    for info in pkgutil.walk_packages(deepprune_lc.__path__, "deepprune_lc."):
        names.append(info.name)
    return names


@pytest.mark.parametrize("module_name", _all_modules())
def test_every_module_declares_all_and_each_name_exists(module_name: str) -> None:
    module = importlib.import_module(module_name)
    exported = getattr(module, "__all__", None)
    assert isinstance(exported, list | tuple), f"{module_name} declares no __all__"
    for name in exported:
        assert hasattr(module, name), f"{module_name}.__all__ names {name!r}, which it lacks"


def _bound_at_top_level(tree: ast.Module) -> set[str]:
    """Names a module binds outside functions and classes (``if`` / ``try`` bodies included)."""
    names: set[str] = set()
    statements: list[ast.stmt] = list(tree.body)
    while statements:
        node = statements.pop()
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
        elif isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                names.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
        elif isinstance(node, ast.If | ast.Try):
            statements.extend(node.body + node.orelse)
            if isinstance(node, ast.Try):
                statements.extend(node.finalbody)
                for handler in node.handlers:
                    statements.extend(handler.body)
    return names


INTEGRATION_MODULES = sorted(ROOT.glob("integrations/*/deepprune_*/**/*.py"))


@pytest.mark.parametrize(
    "path", INTEGRATION_MODULES, ids=[str(p.relative_to(ROOT)) for p in INTEGRATION_MODULES]
)
def test_every_integration_module_declares_all(path: Path) -> None:
    """Read from the source, so engines (vLLM, torch) need not be importable for the check."""
    tree = ast.parse(path.read_text("utf-8"))
    declared = [
        node.value
        for node in tree.body
        if isinstance(node, ast.Assign)
        and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets)
    ]
    assert declared, f"{path.relative_to(ROOT)} declares no __all__"
    value = declared[-1]
    assert isinstance(value, ast.List | ast.Tuple), "__all__ is a literal list"
    exported = [ast.literal_eval(element) for element in value.elts]
    assert all(isinstance(name, str) for name in exported)
    if "__getattr__" in _bound_at_top_level(tree):
        return  # lazy exports (PEP 562): the package's own tests import them
    missing = sorted(set(exported) - _bound_at_top_level(tree))
    assert not missing, f"{path.relative_to(ROOT)}.__all__ names {missing}, which it lacks"


def _integration_imports() -> list[tuple[str, str, str]]:
    found = []
    for path in sorted(ROOT.glob("integrations/*/deepprune_*/**/*.py")):
        tree = ast.parse(path.read_text("utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("deepprune_lc"):
                for alias in node.names:
                    found.append((str(path.relative_to(ROOT)), node.module or "", alias.name))
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("deepprune_lc."):
                        found.append((str(path.relative_to(ROOT)), alias.name, ""))
    return found


def test_integrations_import_only_public_names() -> None:
    """Integrations use a package's ``__all__``, never a private module or a private name."""
    problems = []
    for where, module_name, name in _integration_imports():
        module = importlib.import_module(module_name)
        if not hasattr(module, "__path__"):
            problems.append(f"{where}: imports module {module_name}; import from its package")
        elif name and name not in getattr(module, "__all__", ()):
            problems.append(f"{where}: {name} is not in {module_name}.__all__")
    assert not problems, "\n".join(problems)


#: What the core may import besides the standard library: pydantic (and its typing backport), and
#: math-verify with its sympy, only in answer equivalence (lazily, on the first symbolic comparison).
CORE_ALLOWED = {"pydantic", "typing_extensions", "deepprune_lc"}
CORE_EXCEPTIONS = {
    ("deepprune_lc/core/answers/equivalence.py", "math_verify"),
    ("deepprune_lc/core/answers/equivalence.py", "sympy"),
}


def test_the_core_imports_only_the_standard_library_and_pydantic() -> None:
    problems = []
    for path in sorted((ROOT / "deepprune_lc" / "core").rglob("*.py")):
        where = str(path.relative_to(ROOT))
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top in sys.stdlib_module_names or top in CORE_ALLOWED:
                    continue
                if (where, top) not in CORE_EXCEPTIONS:
                    problems.append(f"{where}: imports {name}")
    assert not problems, "\n".join(problems)
