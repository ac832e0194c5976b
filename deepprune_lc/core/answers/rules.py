"""``AnswerRules``: extraction and equivalence swapped together, as one unit per task."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

from deepprune_lc.core.answers.equivalence import (
    choice_equivalent,
    exact_equivalent,
    math_equivalent,
)
from deepprune_lc.core.answers.extract import extract_answer, extract_choice

__all__ = ["AnswerRules"]


@dataclass(frozen=True)
class AnswerRules:
    """How a task reads an answer out of a trace and decides two answers agree.

    Extraction and equivalence are swapped together because they must match: letters extracted
    by :func:`extract_choice` only make sense compared by :func:`choice_equivalent`.
    """

    extract: Callable[[str], str | None]
    equivalent: Callable[[str, str], bool]
    name: str

    @classmethod
    def math(cls) -> AnswerRules:
        """Competition math: boxed/phrase extraction, symbolic equivalence."""
        return cls(extract=extract_answer, equivalent=math_equivalent, name="math")

    @classmethod
    def multiple_choice(cls, letters: str = "ABCD") -> AnswerRules:
        """Multiple choice over ``letters``; ``functools.partial`` keeps the rules picklable."""
        extract: Callable[[str], str | None] = functools.partial(extract_choice, letters=letters)
        return cls(extract=extract, equivalent=choice_equivalent, name="multiple_choice")

    @classmethod
    def exact(cls) -> AnswerRules:
        """Boxed/phrase extraction, but answers must match as strings (modulo whitespace)."""
        return cls(extract=extract_answer, equivalent=exact_equivalent, name="exact")

    @classmethod
    def custom(
        cls,
        extract: Callable[[str], str | None],
        equivalent: Callable[[str, str], bool],
        name: str = "custom",
    ) -> AnswerRules:
        """User-supplied rules, for tasks none of the built-ins fit."""
        return cls(extract=extract, equivalent=equivalent, name=name)

    @classmethod
    def resolve(cls, spec: AnswerRules | str | None) -> AnswerRules:
        """Turn a config value (rules object, built-in name, or None for math) into rules."""
        if isinstance(spec, AnswerRules):
            return spec
        if spec is None:
            return cls.math()
        builders: dict[str, Callable[[], AnswerRules]] = {
            "math": cls.math,
            "multiple_choice": cls.multiple_choice,
            "exact": cls.exact,
        }
        if isinstance(spec, str) and spec in builders:
            return builders[spec]()
        allowed = ", ".join(repr(name) for name in builders)
        raise ValueError(
            f"unknown answer rules {spec!r}: expected one of {allowed}, None, or an AnswerRules"
        )
