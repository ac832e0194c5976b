"""Generation backends: adapters that implement ``deepprune_lc.ports.GenerationBackend``.

Only the dependency-free replay backend is imported here; engine adapters (vLLM, transformers) live
in their own modules so that importing this package never pulls in an engine.
"""

from deepprune_lc.backends.replay import ReplayBackend

__all__ = ["ReplayBackend"]
