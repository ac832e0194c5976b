"""DeepPrune on vLLM: an ``AsyncLLM`` backend that parks pruned traces and resumes them token-exact.

>>> from deepprune_lc import DeepPruneReasoner
>>> reasoner = DeepPruneReasoner(backend="vllm:Qwen/Qwen3-8B", judge="lexical")

``"vllm:<model>"`` backend specs resolve through ``backend_from_spec`` and judge specs through
``judge_from_spec``; engine arguments may follow the
model as a query string: ``"vllm:Qwen/Qwen3-8B?max_model_len=8192&gpu_memory_utilization=0.85"``.
"""

from deepprune_vllm.backend import VLLMBackend
from deepprune_vllm.engine import SharedEngine, shutdown_engines
from deepprune_vllm.judge import VLLMJudge
from deepprune_vllm.spec import backend_from_spec, judge_from_spec, parse_spec

__version__ = "0.1.0"

__all__ = [
    "SharedEngine",
    "VLLMBackend",
    "VLLMJudge",
    "__version__",
    "backend_from_spec",
    "judge_from_spec",
    "parse_spec",
    "shutdown_engines",
]
