"""Judges: implementations of ``deepprune_lc.core.ports.Judge``.

Only the dependency-free judges are imported here (lexical overlap, constant and random
baselines, answer probes), so
importing this package never loads a model. What every LLM judge shares, whichever engine runs it
(settings, pair prompt, label tokens, P(yes), prefill count), is here too: ``deepprune_lc.judges.llm``.
"""

from deepprune_lc.judges.common import logistic
from deepprune_lc.judges.fixed import ConstantJudge, RandomJudge
from deepprune_lc.judges.lexical import LexicalJudge, LexicalJudgeConfig
from deepprune_lc.judges.llm import (
    ANSWER_CUE,
    DEFAULT_JUDGE_TEMPLATE,
    TRACE_QUOTE,
    LabelTokenizer,
    LLMJudgeSettings,
    distinct_prompts,
    judge_prefill_tokens,
    label_token_ids,
    quote_trace,
    special_token_strings,
    yes_probability,
)
from deepprune_lc.judges.probe import ProbeJudge

__all__ = [
    "ANSWER_CUE",
    "DEFAULT_JUDGE_TEMPLATE",
    "TRACE_QUOTE",
    "ConstantJudge",
    "LLMJudgeSettings",
    "LabelTokenizer",
    "LexicalJudge",
    "LexicalJudgeConfig",
    "ProbeJudge",
    "RandomJudge",
    "distinct_prompts",
    "judge_prefill_tokens",
    "label_token_ids",
    "logistic",
    "quote_trace",
    "special_token_strings",
    "yes_probability",
]
