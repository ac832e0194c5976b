"""Generation backends that ship in the core, and what backends share.

``ReplayBackend`` replays recorded trace pools (``TracePool``, read by ``load_trace_pool``) and
counts their tokens with ``RegexTokenizer``. ``BoundedBackend`` wraps any backend with a bound on
the streams open at once, shared fairly between questions (``deepprune_lc.backends.bounded``).
Engine adapters (vLLM, transformers) live in ``integrations/``; importing this package never pulls
in an engine. What those adapters share lives here: ``PromptRenderer`` / ``render_prompt_ids`` turn
a prompt into the ids an engine prefills, by one rule for every engine
(``deepprune_lc.backends.rendering``), and ``StopMatcher`` applies stop strings as vLLM does
(``deepprune_lc.backends.stops``) for backends whose engine does not, and answer probes build
their suffix and cut their answer by one rule (``deepprune_lc.backends.probes``).
"""

from deepprune_lc.backends.bounded import AdmissionStats, BoundedBackend
from deepprune_lc.backends.pool import TracePool, TracePoolError, load_trace_pool
from deepprune_lc.backends.probes import (
    THINK_CLOSE,
    ProbeStats,
    box_end,
    check_probe_tokens,
    model_probe_reply,
    probe_suffix_text,
    think_block_open,
    think_tokens,
)
from deepprune_lc.backends.rendering import (
    DEFAULT_PROMPT_CACHE_SIZE,
    PromptRenderer,
    PromptTokenizer,
    has_chat_template,
    prompt_cache_key,
    render_prompt_ids,
)
from deepprune_lc.backends.replay import ReplayBackend
from deepprune_lc.backends.stops import StopMatcher
from deepprune_lc.backends.tokenizer import RegexTokenizer

__all__ = [
    "DEFAULT_PROMPT_CACHE_SIZE",
    "THINK_CLOSE",
    "AdmissionStats",
    "BoundedBackend",
    "ProbeStats",
    "PromptRenderer",
    "PromptTokenizer",
    "RegexTokenizer",
    "ReplayBackend",
    "StopMatcher",
    "TracePool",
    "TracePoolError",
    "box_end",
    "check_probe_tokens",
    "has_chat_template",
    "load_trace_pool",
    "model_probe_reply",
    "probe_suffix_text",
    "prompt_cache_key",
    "render_prompt_ids",
    "think_block_open",
    "think_tokens",
]
