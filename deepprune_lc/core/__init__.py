"""The pure core: ports, configs, events, results, errors, prefix monitors, answers, controllers.

Everything here is deterministic and free of IO: it imports only the standard library and pydantic
(plus math-verify, lazily, for symbolic answer equivalence). The import contracts in pyproject.toml
enforce that, so ``import deepprune_lc.core`` never loads LangChain, torch or an engine.
"""

from deepprune_lc.core.answers import AnswerRules, extract_answer, extract_choice, math_equivalent
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
    DYNASOR_PROBE_SUFFIX,
    AnswerProbing,
    FinishReason,
    GenerationBackend,
    Judge,
    JudgeScores,
    Lifecycle,
    PrefixPair,
    ProbeReply,
    Prompt,
    PromptTokenIds,
    TraceDelta,
    TraceRequest,
    close_stream,
)
from deepprune_lc.core.result import DeepPruneResult, RunSummary
from deepprune_lc.core.specs import Spec, SpecError, parse_spec

__all__ = [
    "DEFAULT_REASONING_WORDS",
    "DYNASOR_PROBE_SUFFIX",
    "AnswerProbing",
    "AnswerRules",
    "BackendDeadError",
    "BackendError",
    "DeepPruneError",
    "DeepPruneEvent",
    "DeepPruneResult",
    "DeepPruneTimeoutError",
    "EarlyStoppingConfig",
    "FinishReason",
    "GenerationBackend",
    "GenerationError",
    "Judge",
    "JudgeError",
    "JudgeScores",
    "Lifecycle",
    "PrefixPair",
    "ProbeReply",
    "Prompt",
    "PromptTokenIds",
    "PruningConfig",
    "ReasoningWordsPrefix",
    "RunSummary",
    "SamplingConfig",
    "Spec",
    "SpecError",
    "TokensPrefix",
    "TraceDelta",
    "TraceRequest",
    "close_stream",
    "extract_answer",
    "extract_choice",
    "math_equivalent",
    "parse_spec",
]
