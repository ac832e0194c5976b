"""Judges: implementations of ``deepprune_lc.core.ports.Judge``.

Only the dependency-free lexical judge is imported here, so importing this package never loads a model.
"""

from deepprune_lc.judges.lexical import LexicalJudge, LexicalJudgeConfig

__all__ = ["LexicalJudge", "LexicalJudgeConfig"]
