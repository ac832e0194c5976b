"""Generation backends that ship in the core, and what backends share.

``ReplayBackend`` replays recorded trace pools (``TracePool``, read by ``load_trace_pool``) and
counts their tokens with ``RegexTokenizer``. Engine adapters (vLLM, transformers) live in
``integrations/``; importing this package never pulls in an engine.
"""

from deepprune_lc.backends.pool import TracePool, TracePoolError, load_trace_pool
from deepprune_lc.backends.replay import ReplayBackend
from deepprune_lc.backends.tokenizer import RegexTokenizer

__all__ = ["RegexTokenizer", "ReplayBackend", "TracePool", "TracePoolError", "load_trace_pool"]
