"""Answer extraction, answer equivalence and the weighted vote over finished traces.

DeepPrune decides a question by majority vote over the answers its surviving traces reach, so two
things must be right for the vote to mean anything:

* **extraction** — pulling *the* final answer out of a long chain of thought (which mentions many
  intermediate numbers), and
* **equivalence** — deciding that ``0.5`` and ``\\frac12`` are the same vote, while ``2`` and ``3``
  are not.

Both are bundled into :class:`AnswerRules` so a task (competition math, multiple choice, exact
strings, or anything a user supplies) swaps them as one unit. :func:`group_votes` then turns
:class:`Ballot` s into ranked :class:`~deepprune_lc.result.VoteGroup` s.

This module is part of the engine-free core: it never imports torch, vllm or transformers.
``math_verify`` (sympy underneath) is imported lazily, on the first comparison that needs it, so
importing the package stays cheap.
"""

from __future__ import annotations

import functools
import logging
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from deepprune_lc.result import VoteGroup

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

# ---------------------------------------------------------------------------------------------
# Extraction
# ---------------------------------------------------------------------------------------------

_BOX_OPEN_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")

#: "Answer:", "The answer is", "final answer is", "**Answer:**", "answer is:" ... The match ends
#: where the answer itself begins. Each stretch is a single character class, never two adjacent
#: optional runs, so a long run of spaces cannot make the regex backtrack quadratically.
_PHRASE_RE = re.compile(r"\banswer\b[\s*]*(?:is\b|:)[ \t:*]*", re.IGNORECASE)

#: Math delimiters an answer may be wrapped in after an answer phrase, mapped to their closers.
_DELIMITERS: tuple[tuple[str, str], ...] = (
    ("$$", "$$"),
    ("$", "$"),
    ("\\(", "\\)"),
    ("\\[", "\\]"),
)

#: A sentence ends at a period followed by whitespace (``3.5`` keeps its decimal point).
_SENTENCE_END_RE = re.compile(r"\.(?=\s)")


def _brace_pairs(text: str) -> dict[int, int]:
    """Map the index of every matched ``{`` to the index of its ``}``, in one linear pass.

    Escaped braces (``\\{ \\}``, as in a set answer) are skipped so they do not unbalance the
    count. One pass for the whole text keeps extraction linear even on degenerate traces that
    repeat ``\\boxed{`` thousands of times without closing it.
    """
    pairs: dict[int, int] = {}
    stack: list[int] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char == "\\":
            i += 2
            continue
        if char == "{":
            stack.append(i)
        elif char == "}" and stack:
            pairs[stack.pop()] = i
        i += 1
    return pairs


def _unwrap_box(text: str, start: int, end: int, pairs: dict[int, int]) -> str:
    """Content of ``text[start:end]``, stripped, minus boxes that wrap all of it.

    ``\\boxed{\\boxed{5}}`` is still just ``5``.
    """
    while True:
        while start < end and text[start].isspace():
            start += 1
        while end > start and text[end - 1].isspace():
            end -= 1
        match = _BOX_OPEN_RE.match(text, start, end)
        if match is None or pairs.get(match.end() - 1) != end - 1:
            return text[start:end]
        start, end = match.end(), end - 1


def _boxed_spans(text: str) -> list[tuple[int, str]]:
    """``(position, content)`` of every outermost, terminated ``\\boxed``/``\\fbox``.

    An unterminated box (a trace cut off mid-answer) is skipped rather than swallowing the rest of
    the text; boxes nested inside a box are part of the outer content, not separate answers.
    """
    pairs = _brace_pairs(text)
    spans: list[tuple[int, str]] = []
    covered = 0
    for match in _BOX_OPEN_RE.finditer(text):
        end = pairs.get(match.end() - 1)
        if match.start() < covered or end is None:
            continue
        spans.append((match.start(), _unwrap_box(text, match.end(), end, pairs)))
        covered = end + 1
    return spans


def _last_boxed(text: str) -> str | None:
    """Content of the last non-empty box: models often box a draft, then the final answer."""
    for _, content in reversed(_boxed_spans(text)):
        if content:
            return content
    return None


def _clean_phrase_answer(rest: str) -> str:
    """Cut the answer that follows an answer phrase out of the rest of its line.

    The answer may start on a following line ("Final answer:" then a display). A delimited answer
    (``$...$``, ``\\(...\\)``) is taken whole, so a period inside it survives; otherwise the answer
    ends at the end of the sentence. Trailing markdown bold, dollars and periods are decoration,
    not part of the answer.
    """
    line = rest.lstrip().split("\n", 1)[0].strip()
    for opener, closer in _DELIMITERS:
        if line.startswith(opener):
            close = line.find(closer, len(opener))
            if close != -1:
                return line[len(opener) : close].strip()
            break
    sentence_end = _SENTENCE_END_RE.search(line)
    if sentence_end is not None:
        line = line[: sentence_end.start()]
    previous = None
    while previous != line:
        previous = line
        line = line.strip().removesuffix("**").removesuffix("$").removesuffix(".")
        line = line.removeprefix("**").removeprefix("$")
    return line.strip()


def _last_phrase_answer(text: str) -> str | None:
    """Answer after the last answer phrase that is followed by something."""
    for match in reversed(list(_PHRASE_RE.finditer(text))):
        answer = _clean_phrase_answer(text[match.end() :])
        if answer:
            return answer
    return None


def extract_answer(text: str) -> str | None:
    """The final answer of a chain-of-thought trace, or None when it states none.

    ``\\boxed{}``/``\\fbox{}`` wins over answer phrases because it is the format math models are
    prompted for and the least ambiguous; phrases ("The answer is 5.") are the fallback for models
    that ignore the instruction. In both cases the *last* occurrence counts: earlier ones are drafts
    the trace may have revised.
    """
    boxed = _last_boxed(text)
    if boxed is not None:
        return boxed
    return _last_phrase_answer(text)


@functools.lru_cache(maxsize=32)
def _choice_patterns(letters: str) -> tuple[re.Pattern[str], ...]:
    """Regexes (compiled once per letter set) whose group 1 is the chosen letter.

    Letters are matched upper-case only and must stand alone, so the article in "A triangle" is
    never read as a choice; only the surrounding words are case-insensitive.
    """
    letter = "([" + re.escape(letters) + "])(?![A-Za-z0-9])"
    # Whatever may sit between a phrase and its letter: "**", "$", "(", ":", "\\text{", "option".
    # Each alternative starts with a different kind of character, so matching stays linear.
    filler = r"(?:\s|[:*$(]|\\text(?:bf)?\{|(?i:option|choice)\b)*"
    return (
        # "Answer: C", "The answer is (D)", "answer is **A**", "the correct answer is: B",
        # "**Answer:** B", "answer is option B", "The answer is $\\text{A}$"
        re.compile(r"(?i:\banswer\b)[\s*]*(?:(?i:is)\b|:)" + filler + letter),
        # "(B) is correct", "B is the correct answer", "option C is right"
        re.compile(
            r"(?<![A-Za-z0-9])\(?" + letter + r"\)?\s+(?i:is)\s+(?:(?i:the)\s+)?(?i:correct|right)"
        ),
        # "Option B", "choice (C)"
        re.compile(r"(?i:\b(?:option|choice))[\s:(]*" + letter),
    )


def _choice_in_box(content: str, letters: str) -> str | None:
    """The letter a box holds: ``B``, ``(B)``, ``\\text{B}`` or ``B. 42``; None for other boxes."""
    inner = re.sub(r"^\\(?:text|textbf|mathrm|mathbf)\s*\{(.*)\}$", r"\1", content.strip())
    match = re.match(r"\(?\s*([A-Za-z])\s*\)?(?![A-Za-z0-9])", inner.strip())
    if match is None or match.group(1).upper() not in letters:
        return None
    return match.group(1).upper()


def extract_choice(text: str, letters: str = "ABCD") -> str | None:
    """The multiple-choice letter a trace settles on (upper-case), or None.

    Every recognised phrasing is located and the one that occurs last in the text wins, for the
    same reason as in :func:`extract_answer`: a trace may weigh several options before committing.
    """
    letters = letters.upper()
    if not letters or not letters.isalpha():
        raise ValueError(f"letters must be a non-empty string of letters, got {letters!r}")
    found: list[tuple[int, str]] = []
    for position, content in _boxed_spans(text):
        letter = _choice_in_box(content, letters)
        if letter is not None:
            found.append((position, letter))
    for pattern in _choice_patterns(letters):
        found.extend((m.start(1), m.group(1)) for m in pattern.finditer(text))
    if not found:
        return None
    return max(found)[1]


# ---------------------------------------------------------------------------------------------
# Equivalence
# ---------------------------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------------------------
# Rules bundle
# ---------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------
# Voting
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ballot:
    """One finished trace's vote: its answer, its weight, and when it finished.

    ``weight`` is 1 for plain majority voting; the diverse policy passes the size of the cluster a
    trace represents, so one survivor can speak for the redundant traces pruned on its behalf.
    ``finish_order`` breaks ties and picks each group's representative.
    """

    trace_id: int
    answer: str
    weight: float = 1.0
    finish_order: int = 0

    def __post_init__(self) -> None:
        if not math.isfinite(self.weight) or self.weight < 0:
            raise ValueError(f"ballot weight must be finite and >= 0, got {self.weight!r}")


@dataclass
class _Group:
    """Mutable accumulator behind one :class:`VoteGroup` while ballots are being counted."""

    answer: str
    first_finish: int
    weight: float = 0.0
    trace_ids: list[int] = field(default_factory=list)

    def add(self, ballot: Ballot) -> None:
        self.weight += ballot.weight
        self.trace_ids.append(ballot.trace_id)

    def freeze(self) -> VoteGroup:
        return VoteGroup(
            answer=self.answer,
            weight=self.weight,
            trace_ids=list(self.trace_ids),
            first_finish=self.first_finish,
        )


def group_votes(
    ballots: Sequence[Ballot], equivalent: Callable[[str, str], bool]
) -> list[VoteGroup]:
    """Group equivalent answers and rank the groups: heaviest first, earliest-finished on ties.

    Ballots are counted in finish order (trace id breaks exact ties, so input order never matters)
    and each joins the first existing group whose representative — its earliest-finished answer —
    is equivalent. Comparing against one fixed representative, rather than any member, keeps the
    grouping deterministic even though equivalences such as math-verify's are not transitive.
    """
    groups: list[_Group] = []
    for ballot in sorted(ballots, key=lambda b: (b.finish_order, b.trace_id)):
        home = next((g for g in groups if equivalent(g.answer, ballot.answer)), None)
        if home is None:
            home = _Group(answer=ballot.answer, first_finish=ballot.finish_order)
            groups.append(home)
        home.add(ballot)
    ranked = sorted(groups, key=lambda g: (-g.weight, g.first_finish))
    return [g.freeze() for g in ranked]
