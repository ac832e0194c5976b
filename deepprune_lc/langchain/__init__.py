"""The LangChain surface: ``DeepPruneReasoner`` and the typed pruning callbacks.

The only part of ``deepprune_lc`` that imports ``langchain_core``.
"""

from deepprune_lc.langchain.callbacks import DeepPruneCallbackHandler
from deepprune_lc.langchain.chat_model import DeepPruneReasoner

__all__ = ["DeepPruneCallbackHandler", "DeepPruneReasoner"]
