"""Nothing the project reads is unpickled, evaluated or run as remote code by default.

Trace pools, specs, model directories and server replies are data: a scan of every module of the
package and its integrations for the ways Python turns data into code (``pickle`` and friends,
``eval``/``exec``, ``torch.load`` without ``weights_only=True``, unsafe YAML, ``trust_remote_code``
switched on), and a check that the one place a ``trust_remote_code`` is passed keeps it off unless
the caller's engine arguments turn it on.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = [
    ROOT / "deepprune_lc",
    *sorted(p for p in (ROOT / "integrations").glob("*/deepprune_*") if p.is_dir()),
]
_UNSAFE_MODULES = {"pickle", "cPickle", "dill", "cloudpickle", "marshal", "shelve", "joblib"}


def _sources() -> list[Path]:
    return sorted(path for package in PACKAGES for path in package.rglob("*.py"))


def _problems(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.name
        where = f"{shown}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Import):
            found += [f"{where} imports {a.name}" for a in node.names if a.name in _UNSAFE_MODULES]
        elif isinstance(node, ast.ImportFrom) and (node.module or "") in _UNSAFE_MODULES:
            found.append(f"{where} imports from {node.module}")
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
            keywords = {k.arg: k.value for k in node.keywords if k.arg}
            if isinstance(func, ast.Name) and name in {"eval", "exec", "compile", "__import__"}:
                found.append(f"{where} calls {name}()")
            if name == "load" and ast.unparse(func).startswith("torch."):
                safe = keywords.get("weights_only")
                if not (isinstance(safe, ast.Constant) and safe.value is True):
                    found.append(f"{where} torch.load without weights_only=True")
            if name in {"load", "load_all"} and ast.unparse(func).startswith("yaml."):
                found.append(f"{where} yaml.{name} (use yaml.safe_load)")
            remote = keywords.get("trust_remote_code")
            if isinstance(remote, ast.Constant) and remote.value is True:
                found.append(f"{where} trust_remote_code=True")
    return found


def test_the_scan_sees_the_sources() -> None:
    sources = _sources()
    assert len(sources) > 40
    assert any(p.name == "backend.py" and "vllm" in str(p) for p in sources)


@pytest.mark.parametrize(
    "snippet",
    [
        "import pickle",
        "from marshal import loads",
        "eval('1')",
        "torch.load(path)",
        "torch.load(path, weights_only=False)",
        "yaml.load(text)",
        "AutoModel.from_pretrained(p, trust_remote_code=True)",
    ],
)
def test_the_scan_flags_each_unsafe_form(tmp_path: Path, snippet: str) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text(snippet + "\n")
    assert _problems(probe)


def test_no_module_turns_data_into_code() -> None:
    problems = [problem for path in _sources() for problem in _problems(path)]
    assert problems == []


def test_the_vllm_tokenizer_fallback_keeps_remote_code_off(tmp_path: Path) -> None:
    """``VLLMBackend`` passes ``trust_remote_code`` only as the caller's engine arguments set it."""
    pytest.importorskip("vllm")
    testing = pytest.importorskip("deepprune_transformers.testing")
    from deepprune_vllm import VLLMBackend

    model = testing.build_tiny_qwen2(tmp_path / "tiny")
    backend = VLLMBackend(str(model))
    assert backend.engine_args.get("trust_remote_code", False) is False
    tokenizer = backend.tokenizer  # loaded through transformers: no engine starts
    assert tokenizer.encode("six times seven", add_special_tokens=False)
