"""Answer extraction, answer equivalence and the weighted vote over finished traces.

DeepPrune decides a question by majority vote over the answers its surviving traces reach, so two
things must be right for the vote to mean anything:

* **extraction** — pulling *the* final answer out of a long chain of thought (which mentions many
  intermediate numbers), and
* **equivalence** — deciding that ``0.5`` and ``\\frac12`` are the same vote, while ``2`` and ``3``
  are not.

Both are bundled into :class:`AnswerRules` so a task (competition math, multiple choice, exact
strings, or anything a user supplies) swaps them as one unit. :func:`group_votes` then turns
:class:`Ballot` s into ranked :class:`~deepprune_lc.core.result.VoteGroup` s.

This package is part of the engine-free core: it never imports torch, vllm or transformers.
``math_verify`` (sympy underneath) is imported lazily, on the first comparison that needs it, so
importing the package stays cheap.
"""

from deepprune_lc.core.answers.equivalence import (
    MAX_ANSWER_DIGITS,
    MAX_VERIFY_CHARS,
    choice_equivalent,
    exact_equivalent,
    math_equivalent,
)
from deepprune_lc.core.answers.extract import extract_answer, extract_choice
from deepprune_lc.core.answers.rules import AnswerRules
from deepprune_lc.core.answers.votes import Ballot, group_votes, vote_settled

__all__ = [
    "MAX_ANSWER_DIGITS",
    "MAX_VERIFY_CHARS",
    "AnswerRules",
    "Ballot",
    "choice_equivalent",
    "exact_equivalent",
    "extract_answer",
    "extract_choice",
    "group_votes",
    "math_equivalent",
    "vote_settled",
]
