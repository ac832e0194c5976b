"""DeepPrune on vLLM: an ``AsyncLLM`` backend that parks pruned traces and resumes them token-exact.

>>> from deepprune_lc import DeepPruneReasoner
>>> reasoner = DeepPruneReasoner(backend="vllm:Qwen/Qwen3-8B", judge="lexical")

``"vllm:<model>"`` backend and judge specs are registered as entry points of this package
(``deepprune.backends`` / ``deepprune.judges``) and resolve through ``backend_from_spec`` and
``judge_from_spec``; engine arguments may follow the model as options:
``"vllm:Qwen/Qwen3-8B?max_model_len=8192&gpu_memory_utilization=0.85"``.
"""

import importlib.metadata

from deepprune_vllm.backend import VLLMBackend
from deepprune_vllm.engine import SharedEngine, shutdown_engines
from deepprune_vllm.judge import VLLMJudge
from deepprune_vllm.spec import backend_from_spec, judge_from_spec, spec_arguments

try:
    __version__ = importlib.metadata.version("deepprune-vllm")
except importlib.metadata.PackageNotFoundError:  # pragma: no cover - a source tree not installed
    __version__ = "0.0.0"

__all__ = [
    "SharedEngine",
    "VLLMBackend",
    "VLLMJudge",
    "__version__",
    "backend_from_spec",
    "judge_from_spec",
    "shutdown_engines",
    "spec_arguments",
]
