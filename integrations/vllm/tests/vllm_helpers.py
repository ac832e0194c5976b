"""Shared pieces of the vLLM tests: the tiny trained model and the session engine's arguments.

``build_tiny_reasoner`` (from deepprune-transformers' testing module) trains a tiny Qwen2 for a few
seconds to answer one question, ``QUESTION``, with ``\\boxed{42}``; no download.
"""

from __future__ import annotations

from deepprune_transformers.testing import REASONER_QUESTION as QUESTION
from deepprune_transformers.testing import build_tiny_reasoner

__all__ = ["ENGINE_KWARGS", "QUESTION", "build_tiny_reasoner"]

#: Engine arguments of the test session's engine (spec strings with the same arguments share it).
ENGINE_KWARGS = {"enforce_eager": True, "dtype": "float32", "max_model_len": 1024}
