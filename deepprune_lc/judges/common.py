"""What every judge implementation shares: the default LLM-judge prompt and the logistic map.

The prompt lives in the core so that a judge model sees the same text whichever engine runs it
(``deepprune_vllm.VLLMJudge``, ``deepprune_transformers.TransformersJudge``); the exact template of
the paper's trained judge is not public, so every LLM judge takes its own ``template`` too.
"""

from __future__ import annotations

import math

__all__ = ["DEFAULT_JUDGE_TEMPLATE", "logistic"]

DEFAULT_JUDGE_TEMPLATE = (
    "Two reasoning traces for the same problem were stopped early.\n\n"
    "Trace A:\n{prefix_a}\n\n"
    "Trace B:\n{prefix_b}\n\n"
    "Will both traces reach the same final answer? Answer Yes or No."
)


def logistic(z: float) -> float:
    """1 / (1 + exp(-z)), without overflow for large ``|z|``."""
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)
