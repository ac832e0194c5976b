"""DeepPrune on vLLM: an ``AsyncLLM`` backend that parks pruned traces and resumes them token-exact.

>>> from deepprune_lc import DeepPruneReasoner
>>> reasoner = DeepPruneReasoner(backend="vllm:Qwen/Qwen3-8B", judge="lexical")

``"vllm:<model>"`` backend and judge specs are registered as entry points of this package
(``deepprune.backends`` / ``deepprune.judges``) and resolve through ``backend_from_spec`` and
``judge_from_spec``; engine arguments may follow the model as options:
``"vllm:Qwen/Qwen3-8B?max_model_len=8192&gpu_memory_utilization=0.85"``.

``VLLMServerBackend`` drives running vLLM servers through their OpenAI-compatible API instead
(``"vllm-server:http://127.0.0.1:8000/v1?model=Qwen/Qwen3-8B"``; docs/servers.md). It needs no
``vllm`` import, and is loaded on first use (with httpx), so ``import deepprune_vllm`` stays cheap.
"""

import importlib.metadata
from typing import TYPE_CHECKING, Any

from deepprune_vllm.backend import VLLMBackend
from deepprune_vllm.engine import SharedEngine, shutdown_engines
from deepprune_vllm.judge import VLLMJudge
from deepprune_vllm.spec import backend_from_spec, judge_from_spec, spec_arguments

if TYPE_CHECKING:
    from deepprune_vllm.server import ServerLoad, VLLMServerBackend
    from deepprune_vllm.server_routing import EndpointStats
    from deepprune_vllm.server_spec import server_backend_from_spec

#: Names loaded on first use (PEP 562), with the module that defines them.
_LAZY = {
    "EndpointStats": "deepprune_vllm.server_routing",
    "ServerLoad": "deepprune_vllm.server",
    "VLLMServerBackend": "deepprune_vllm.server",
    "server_backend_from_spec": "deepprune_vllm.server_spec",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'deepprune_vllm' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return list(__all__)


try:
    __version__ = importlib.metadata.version("deepprune-vllm")
except importlib.metadata.PackageNotFoundError:  # pragma: no cover - a source tree not installed
    __version__ = "0.0.0"

__all__ = [
    "EndpointStats",
    "ServerLoad",
    "SharedEngine",
    "VLLMBackend",
    "VLLMJudge",
    "VLLMServerBackend",
    "__version__",
    "backend_from_spec",
    "judge_from_spec",
    "server_backend_from_spec",
    "shutdown_engines",
    "spec_arguments",
]
