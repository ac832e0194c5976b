"""deepprune-lc: DeepPrune parallel reasoning for LangChain and LangGraph.

Sample many chain-of-thought traces, let a judge spot the ones heading to the same answer from short
prefixes, stop the redundant ones early, finish a few, and vote.

Importing the package is cheap: every public name is loaded on first use (PEP 562), so code that
only needs the core never imports LangChain, and the chat model loads when it is first named.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from deepprune_lc.backends.pool import TracePool, TracePoolError, load_trace_pool
    from deepprune_lc.backends.replay import ReplayBackend
    from deepprune_lc.core.answers import (
        AnswerRules,
        extract_answer,
        extract_choice,
        math_equivalent,
    )
    from deepprune_lc.core.config import (
        DEFAULT_REASONING_WORDS,
        EarlyStoppingConfig,
        PruningConfig,
        ReasoningWordsPrefix,
        SamplingConfig,
        TokensPrefix,
    )
    from deepprune_lc.core.errors import (
        BackendDeadError,
        BackendError,
        DeepPruneError,
        DeepPruneTimeoutError,
        GenerationError,
        JudgeError,
    )
    from deepprune_lc.core.events import DeepPruneEvent
    from deepprune_lc.core.ports import (
        FinishReason,
        GenerationBackend,
        Judge,
        JudgeScores,
        Lifecycle,
        PrefixPair,
        TraceDelta,
        TraceRequest,
    )
    from deepprune_lc.core.result import DeepPruneResult, RunSummary
    from deepprune_lc.judges.lexical import LexicalJudge
    from deepprune_lc.langchain.callbacks import DeepPruneCallbackHandler
    from deepprune_lc.langchain.chat_model import DeepPruneReasoner
    from deepprune_lc.runtime.runner import DeepPrune, EarlyStoppingSelfConsistency, SelfConsistency

try:
    __version__ = version("deepprune-lc")
except PackageNotFoundError:  # pragma: no cover - running from a source tree that is not installed
    __version__ = "0.0.0"

#: Public name -> the module that defines it.
_EXPORTS: dict[str, str] = {
    "AnswerRules": "deepprune_lc.core.answers",
    "extract_answer": "deepprune_lc.core.answers",
    "extract_choice": "deepprune_lc.core.answers",
    "math_equivalent": "deepprune_lc.core.answers",
    "DEFAULT_REASONING_WORDS": "deepprune_lc.core.config",
    "EarlyStoppingConfig": "deepprune_lc.core.config",
    "PruningConfig": "deepprune_lc.core.config",
    "ReasoningWordsPrefix": "deepprune_lc.core.config",
    "SamplingConfig": "deepprune_lc.core.config",
    "TokensPrefix": "deepprune_lc.core.config",
    "BackendDeadError": "deepprune_lc.core.errors",
    "BackendError": "deepprune_lc.core.errors",
    "DeepPruneError": "deepprune_lc.core.errors",
    "DeepPruneTimeoutError": "deepprune_lc.core.errors",
    "GenerationError": "deepprune_lc.core.errors",
    "JudgeError": "deepprune_lc.core.errors",
    "DeepPruneEvent": "deepprune_lc.core.events",
    "FinishReason": "deepprune_lc.core.ports",
    "GenerationBackend": "deepprune_lc.core.ports",
    "Judge": "deepprune_lc.core.ports",
    "JudgeScores": "deepprune_lc.core.ports",
    "Lifecycle": "deepprune_lc.core.ports",
    "PrefixPair": "deepprune_lc.core.ports",
    "TraceDelta": "deepprune_lc.core.ports",
    "TraceRequest": "deepprune_lc.core.ports",
    "DeepPruneResult": "deepprune_lc.core.result",
    "RunSummary": "deepprune_lc.core.result",
    "ReplayBackend": "deepprune_lc.backends.replay",
    "TracePool": "deepprune_lc.backends.pool",
    "TracePoolError": "deepprune_lc.backends.pool",
    "load_trace_pool": "deepprune_lc.backends.pool",
    "LexicalJudge": "deepprune_lc.judges.lexical",
    "DeepPrune": "deepprune_lc.runtime.runner",
    "EarlyStoppingSelfConsistency": "deepprune_lc.runtime.runner",
    "SelfConsistency": "deepprune_lc.runtime.runner",
    "DeepPruneCallbackHandler": "deepprune_lc.langchain.callbacks",
    "DeepPruneReasoner": "deepprune_lc.langchain.chat_model",
}

__all__ = [
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


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'deepprune_lc' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return __all__
