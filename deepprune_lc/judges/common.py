"""What every judge shares: the logistic map from a score to a probability.

The lexical, embedding and LLM judges all turn a real-valued score (an overlap, a cosine, a logit
margin) into P(same final answer) with it. What only LLM judges share (the prompt template, the
label words, the prefill count) is in ``deepprune_lc.judges.llm``.
"""

from __future__ import annotations

import math

__all__ = ["logistic"]


def logistic(z: float) -> float:
    """1 / (1 + exp(-z)), without overflow for large ``|z|``."""
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)
