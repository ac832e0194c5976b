"""deepprune-lc: DeepPrune parallel reasoning for LangChain and LangGraph.

Sample many chain-of-thought traces, let a judge spot the ones heading to the same answer from short
prefixes, stop the redundant ones early, finish a few, and vote.
"""

from deepprune_lc.answers import AnswerRules, extract_answer, extract_choice, math_equivalent
from deepprune_lc.backends.replay import ReplayBackend
from deepprune_lc.callbacks import DeepPruneCallbackHandler
from deepprune_lc.chat_model import DeepPruneReasoner
from deepprune_lc.config import (
    DEFAULT_REASONING_WORDS,
    EarlyStoppingConfig,
    PruningConfig,
    ReasoningWordsPrefix,
    SamplingConfig,
    TokensPrefix,
)
from deepprune_lc.errors import DeepPruneError, GenerationError, JudgeError
from deepprune_lc.events import DeepPruneEvent
from deepprune_lc.judges.lexical import LexicalJudge
from deepprune_lc.pool import TracePool, TracePoolError, load_trace_pool
from deepprune_lc.ports import (
    GenerationBackend,
    Judge,
    JudgeScores,
    PrefixPair,
    TraceDelta,
    TraceRequest,
)
from deepprune_lc.result import DeepPruneResult
from deepprune_lc.runner import DeepPrune, EarlyStoppingSelfConsistency, SelfConsistency

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_REASONING_WORDS",
    "AnswerRules",
    "DeepPrune",
    "DeepPruneCallbackHandler",
    "DeepPruneError",
    "DeepPruneEvent",
    "DeepPruneReasoner",
    "DeepPruneResult",
    "EarlyStoppingConfig",
    "EarlyStoppingSelfConsistency",
    "GenerationBackend",
    "GenerationError",
    "Judge",
    "JudgeError",
    "JudgeScores",
    "LexicalJudge",
    "PrefixPair",
    "PruningConfig",
    "ReasoningWordsPrefix",
    "ReplayBackend",
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
