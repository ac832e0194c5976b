"""Answer equivalence: ``0.5`` and ``\\frac12`` are the same vote, ``2`` and ``3`` are not.

``math_verify`` (sympy underneath) is imported lazily, on the first comparison that needs it, so
importing the core stays cheap; it is the one import of the core beyond the standard library and
pydantic (an explicit exception in the import contracts).
"""

from __future__ import annotations

import functools
import logging
import math
import re
from collections.abc import Mapping
from typing import Any

__all__ = [
    "MAX_ANSWER_DIGITS",
    "MAX_VERIFY_CHARS",
    "choice_equivalent",
    "exact_equivalent",
    "math_equivalent",
]


#: Longest answer (after normalisation) that is handed to math-verify. We must disable its
#: ``signal.alarm`` timeout to run off the main thread, so this length cap is what bounds the cost
#: of one symbolic comparison instead. Real final answers are far shorter; anything longer is
#: almost always a runaway extraction, which only string equality may match.
MAX_VERIFY_CHARS = 512

#: Largest number, in decimal digits, an answer may denote before math-verify compares it. The
#: length cap alone does not bound the work: ``parse`` keeps expressions unevaluated, but
#: ``verify`` evaluates them, and sympy computes integer powers and factorials exactly, so the
#: 13-character ``9^{9^{9^{9}}}`` would never finish. Real answers are far below this.
MAX_ANSWER_DIGITS = 100_000

#: An exponent or factorial argument with more digits than this is unbounded for our purposes.
_MAX_EXPONENT_DIGITS = 15.0

#: Sums and products are expanded term by term; more terms than this count as unbounded.
_MAX_TERMS = 1000


#: Pure typesetting that never changes a math answer's value.
_LATEX_NOISE_RE = re.compile(r"\\left|\\right|\\!|\\,|\\;|\\:|\\ |\$|\s")


def _normalise_math(answer: str) -> str:
    """Canonical string for the fast path: typesetting noise, ``\\dfrac``/``\\tfrac`` and a
    trailing period removed, so most agreeing answers never reach sympy."""
    text = _LATEX_NOISE_RE.sub("", answer)
    text = text.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    return text.rstrip(".")


def _as_latex(answer: str) -> str:
    """Wrap an answer in ``$...$`` so math-verify's LaTeX extractor sees a math environment.

    Existing dollars (math delimiters, or ``\\$`` currency) are dropped first so the wrapper
    cannot end up unbalanced.
    """
    body = answer.replace("\\$", "").replace("$", "").strip().rstrip(".").strip()
    return f"${body}$"


class _DropTimeoutDisabledWarning(logging.Filter):
    """Hide math-verify's "Timeout is disabled" warning: we disable it on purpose and bound the
    cost ourselves (:data:`MAX_VERIFY_CHARS`, :data:`MAX_ANSWER_DIGITS`), so it would only alarm."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Timeout is disabled")


_TIMEOUT_WARNING_FILTER = _DropTimeoutDisabledWarning()
for _logger_name in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(_logger_name).addFilter(_TIMEOUT_WARNING_FILTER)


def _int_digits(value: int) -> float:
    """Decimal digits of an integer, from its bit length (no costly ``str`` of a huge int)."""
    return max(1.0, math.ceil(abs(value).bit_length() * math.log10(2)))


#: Upper bounds on ``|symbol|`` for the index variables of enclosing sums and products.
_Bounds = Mapping[Any, float]


def _value_bound(node: Any, bounds: _Bounds) -> float:
    """Upper bound on ``|node|`` where it matters exactly (exponents, factorials, sum limits).

    Plain numbers and bounded index variables are exact, so ``x^{1/2}`` or ``n^{2}`` for
    ``n <= 100`` stay cheap; anything else falls back to ``10 ** digits``.
    """
    import sympy  # type: ignore[import-untyped]

    if isinstance(node, sympy.Symbol) and node in bounds:
        return bounds[node]
    if isinstance(node, (sympy.Rational, sympy.Float)):
        return abs(float(node)) if abs(node) < 10**_MAX_EXPONENT_DIGITS else math.inf
    digits = _digit_bound(node, bounds)
    return 10.0**digits if digits <= _MAX_EXPONENT_DIGITS else math.inf


def _sum_bound(node: Any, bounds: _Bounds) -> float:
    """Digits of a sum or product: its term count times the digits of its largest term.

    Only limits that are integers or enclosing index variables are bounded: sympy's symbolic
    series machinery (``\\sum_{n=1}^{\\infty}``) has no useful cost bound, and was seen running
    for minutes on one-line series. sympy lists limits innermost first, so they are read outermost
    first to know every index variable before it is used as a limit.
    """
    import sympy

    inner = dict(bounds)
    terms = 1.0
    for var, low, high in reversed(node.limits):
        if not all(isinstance(end, (sympy.Integer, sympy.Symbol)) for end in (low, high)):
            return math.inf
        if any(isinstance(end, sympy.Symbol) and end not in inner for end in (low, high)):
            return math.inf
        if isinstance(low, sympy.Integer) and isinstance(high, sympy.Integer):
            terms *= max(0, int(high) - int(low) + 1)
        else:  # an enclosing index variable, as in \sum_{i=1}^{10} \sum_{j=1}^{i}
            terms *= _value_bound(low, inner) + _value_bound(high, inner) + 1.0
        inner[var] = max(_value_bound(low, inner), _value_bound(high, inner))
    if terms > _MAX_TERMS:
        return math.inf
    return terms * (1.0 + _digit_bound(node.function, inner))


def _digit_bound(node: Any, bounds: _Bounds | None = None) -> float:
    """Upper bound on the decimal digits of the number a parsed answer evaluates to.

    Computed from the unevaluated sympy tree, so it costs nothing however large the number is.
    Powers multiply the base's digits by the exponent; factorial-like functions grow as n·log n;
    a sum or product multiplies its largest term by its term count (unbounded past
    :data:`_MAX_TERMS` terms); unevaluated integrals, limits and derivatives are unbounded;
    anything else is bounded by the sum over its parts. Free symbols count as zero digits, so
    ``x^{1000}`` stays comparable; index variables use their limits.
    """
    import sympy

    bounds = bounds or {}
    if isinstance(node, sympy.Symbol) and node in bounds:
        return 1.0 + math.log10(max(bounds[node], 1.0))
    if isinstance(node, sympy.Integer):
        return _int_digits(node.p)
    if isinstance(node, sympy.Rational):
        return _int_digits(node.p) + _int_digits(node.q)
    if isinstance(node, sympy.Float):
        magnitude = abs(float(node))
        return 1.0 + math.log10(magnitude) if magnitude > 1.0 else 1.0
    if isinstance(node, (sympy.Number, sympy.NumberSymbol)):
        return 1.0  # oo, nan, pi, E, ...
    if isinstance(node, sympy.Pow):
        return _value_bound(node.exp, bounds) * max(1.0, _digit_bound(node.base, bounds))
    if isinstance(node, (sympy.Sum, sympy.Product)):
        return _sum_bound(node, bounds)
    if isinstance(node, (sympy.Integral, sympy.Limit, sympy.Derivative)):
        return math.inf  # unevaluated calculus: symbolic work with no cost bound
    if isinstance(node, (sympy.factorial, sympy.factorial2, sympy.subfactorial, sympy.binomial)):
        n = _value_bound(node.args[0], bounds)
        return n * max(1.0, math.log10(max(n, 1.0)))
    if isinstance(node, sympy.MatrixBase):
        return sum(_digit_bound(entry, bounds) for entry in node)
    if isinstance(node, sympy.Basic):
        return sum(_digit_bound(arg, bounds) for arg in node.args)
    return 0.0  # strings and other non-sympy leftovers of parse()


def _too_big(parsed: list[Any]) -> bool:
    """Whether comparing these parsed answers could make sympy build an enormous number."""
    return any(_digit_bound(item) > MAX_ANSWER_DIGITS for item in parsed)


@functools.lru_cache(maxsize=8192)
def _verify_pair(first: str, second: str) -> bool:
    """Symbolic equivalence of two answers, in both directions, via math-verify.

    ``verify`` is asymmetric (gold vs. prediction) but a vote needs a symmetric relation, so either
    direction counts. Timeouts are disabled (``None``) because math-verify implements them with
    ``signal.alarm``, which raises outside the main thread; :data:`MAX_VERIFY_CHARS` and
    :data:`MAX_ANSWER_DIGITS` bound the work instead. Any failure inside math-verify or sympy means
    "not shown equivalent".
    """
    # Lazy: sympy is slow to import. math-verify ships no type information.
    from math_verify import parse, verify  # type: ignore[import-untyped]
    from math_verify.errors import TimeoutException  # type: ignore[import-untyped]

    try:
        gold = parse(_as_latex(first), parsing_timeout=None)
        pred = parse(_as_latex(second), parsing_timeout=None)
        if not gold or not pred or _too_big(gold) or _too_big(pred):
            return False
        return bool(
            verify(gold, pred, timeout_seconds=None) or verify(pred, gold, timeout_seconds=None)
        )
    except (Exception, TimeoutException):  # TimeoutException is a BaseException
        return False


def math_equivalent(a: str, b: str) -> bool:
    """Whether two math answers denote the same value (``0.5`` ~ ``\\frac{1}{2}``, ``x=5`` ~ ``5``).

    Cheap normalised string equality first; otherwise math-verify, unless either answer is longer
    than :data:`MAX_VERIFY_CHARS` or could denote a number of more than :data:`MAX_ANSWER_DIGITS`
    digits (those are equivalent only when their strings are). Results are cached on the
    unordered pair. Safe to call from any thread.
    """
    norm_a, norm_b = _normalise_math(a), _normalise_math(b)
    if norm_a == norm_b:
        return True
    if not norm_a or not norm_b or max(len(norm_a), len(norm_b)) > MAX_VERIFY_CHARS:
        return False
    first, second = sorted((a.strip(), b.strip()))
    return _verify_pair(first, second)


def _normalise_choice(answer: str) -> str:
    """``(b)``, `` B `` and ``B`` all become ``B``."""
    return re.sub(r"[\s()]", "", answer).upper()


def choice_equivalent(a: str, b: str) -> bool:
    """Same multiple-choice letter, ignoring case, parentheses and spaces."""
    return _normalise_choice(a) == _normalise_choice(b)


def exact_equivalent(a: str, b: str) -> bool:
    """Same string up to whitespace runs, for tasks where any rewriting would change the answer."""
    return " ".join(a.split()) == " ".join(b.split())
