"""Answer equivalence: ``0.5`` and ``\\frac12`` are the same vote, ``2`` and ``3`` are not.

``math_verify`` (sympy underneath) is imported lazily, on the first comparison that needs it, so
importing the core stays cheap; it is the one import of the core beyond the standard library and
pydantic (an explicit exception in the import contracts).

Bounded in time and memory. A vote must never hang on an answer, and sympy has inputs it never
finishes (deep nesting, huge symbolic powers) and cannot be interrupted from another thread. So:

* static limits first, before anything is parsed: length (:data:`MAX_VERIFY_CHARS`), bracket
  nesting (:data:`MAX_NESTING_DEPTH`), then on the parsed tree the size of the number it denotes
  (:data:`MAX_ANSWER_DIGITS`) and of symbolic powers (:data:`MAX_SYMBOLIC_EXPONENT`);
* what passes them runs in a separate verifier process (``_verify_worker``), on its main thread,
  so math-verify's own ``signal.alarm`` timeouts work there, under a memory limit
  (:data:`VERIFY_MEMORY_BYTES`); the process is killed and replaced when one comparison takes
  longer than :data:`VERIFY_TIMEOUT_S`, and an answer that timed out is compared only as a string
  from then on.

Any limit hit means "compare as strings" (after normalisation), logged; it never raises.

Exactness. math-verify compares numbers in floating point, so distinct exact values closer than
double precision (``\\sqrt{\\sqrt{...\\sqrt{2}}}`` and the same of 3, sixty deep, both ~1) would merge.
Rule: when both answers are numbers written without a decimal point (integers, fractions,
radicals, constants, finite sums), two values that agree to a part in a million but differ at
:data:`EXACT_DIGITS` significant digits are different answers, whatever math-verify says; an
answer written with a decimal point keeps math-verify's tolerance (``0.5`` ~ ``\\frac12``, its
rounding of long decimals), and so do values it matches by a rule of its own (``5`` ~ ``5\\%``).
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import json
import logging
import math
import os
import re
import select
import subprocess
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

__all__ = [
    "EXACT_DIGITS",
    "MAX_ANSWER_DIGITS",
    "MAX_NESTING_DEPTH",
    "MAX_SYMBOLIC_EXPONENT",
    "MAX_VERIFY_CHARS",
    "VERIFY_MEMORY_BYTES",
    "VERIFY_TIMEOUT_S",
    "choice_equivalent",
    "exact_equivalent",
    "math_equivalent",
]


_log = logging.getLogger(__name__)

#: Longest answer (after normalisation) that is handed to math-verify. Real final answers are far
#: shorter; anything longer is almost always a runaway extraction, which only string equality may
#: match.
MAX_VERIFY_CHARS = 512

#: Deepest bracket nesting (``{``, ``(``, ``[``) an answer may have before it is parsed: math-verify's
#: LaTeX parser and sympy recurse per level, and 250-deep braces or 40-deep ``\\frac`` never finish.
MAX_NESTING_DEPTH = 24

#: Largest exponent of a power whose base is a sum with free symbols: sympy expands
#: ``(x+1)^{5000}`` term by term when comparing it, which ran for minutes (``x^{5000}`` is fine).
MAX_SYMBOLIC_EXPONENT = 64

#: Seconds the verifier process may spend on one comparison before it is killed and replaced.
VERIFY_TIMEOUT_S = 5.0

#: Address-space limit of the verifier process (sympy and math-verify need about 300 MB).
VERIFY_MEMORY_BYTES = 2 * 1024**3

#: Significant digits two exact numeric answers must share to be one vote (see the module doc).
EXACT_DIGITS = 40

#: Relative difference under which two exact numbers look equal to a floating-point comparison.
_CLOSE = 1e-6

#: math-verify's own per-call timeouts inside the verifier process (whole seconds: signal.alarm).
_PARSE_TIMEOUT_S = 2
_VERIFY_CALL_TIMEOUT_S = 2

#: Seconds to wait for a new verifier process to import sympy and say it is ready.
_WORKER_START_TIMEOUT_S = 120.0

#: Answers that timed out once; compared as strings from then on (bounded: oldest dropped).
_MAX_SLOW_ANSWERS = 4096

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


_INTEGER_RE = re.compile(r"[+-]?\d+")


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
    """Hide math-verify's "Timeout is disabled" warning: outside the verifier process its timeouts
    are off on purpose (they need the main thread), so it would only alarm."""

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


def _big_symbolic_power(node: Any) -> bool:
    """Whether the tree holds a power of a symbolic base with an exponent over the limit."""
    import sympy

    stack = [node]
    while stack:
        item = stack.pop()
        if not isinstance(item, sympy.Basic):
            continue
        if (
            isinstance(item, sympy.Pow)
            and item.base.free_symbols
            and item.base.has(sympy.Add)  # x^{1000} is one term; (x+1)^{1000} expands
            and _value_bound(item.exp, {}) > MAX_SYMBOLIC_EXPONENT
        ):
            return True
        stack.extend(item.args)
    return False


def _too_big(parsed: list[Any]) -> bool:
    """Whether comparing these parsed answers could make sympy build an enormous number or
    expansion."""
    return any(
        _digit_bound(item) > MAX_ANSWER_DIGITS or _big_symbolic_power(item) for item in parsed
    )


def _nesting_depth(text: str) -> int:
    """Deepest bracket nesting of a string (unbalanced closers are ignored)."""
    depth = deepest = 0
    for char in text:
        if char in "{([":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "})]" and depth:
            depth -= 1
    return deepest


def _exact_enough(gold: list[Any], pred: list[Any]) -> bool:
    """The exactness rule (module doc): False for two exact numbers that only a floating-point
    tolerance could merge (equal to :data:`_CLOSE` relative, different at :data:`EXACT_DIGITS`).

    Only the first parsed item of each side (math-verify's main reading) is checked, and only when
    both are numbers without a decimal literal; anything else keeps math-verify's decision, as do
    values that differ grossly (math-verify matched them by one of its rules, such as reading
    ``5\\%`` as 5, not by a tolerance).
    """
    import sympy

    first, second = gold[0], pred[0]
    if not all(isinstance(item, sympy.Expr) for item in (first, second)):
        return True
    if (
        first.free_symbols
        or second.free_symbols
        or first.has(sympy.Float)
        or second.has(sympy.Float)
    ):
        return True
    digits = EXACT_DIGITS + 20
    try:
        a = sympy.N(first.doit(), digits)
        b = sympy.N(second.doit(), digits)
        if not (a.is_number and b.is_number) or a.has(sympy.I) or b.has(sympy.I):
            return True
        scale = max(sympy.Float(1), abs(a), abs(b))
        difference = abs(a - b)
        if difference <= scale * sympy.Float(10) ** (-EXACT_DIGITS):
            return True
        return bool(difference > scale * _CLOSE)
    except Exception:
        return False  # a value that cannot be evaluated is not shown to be the same number


def _verify_direct(first: str, second: str, *, timeouts: bool) -> bool:
    """Symbolic equivalence of two answers, in both directions, via math-verify, in this process.

    ``verify`` is asymmetric (gold vs. prediction) but a vote needs a symmetric relation, so either
    direction counts. ``timeouts`` turns on math-verify's own ``signal.alarm`` timeouts, which only
    work on the main thread (the verifier process); the static limits apply either way. Any
    failure inside math-verify or sympy means "not shown equivalent".
    """
    # Lazy: sympy is slow to import. math-verify ships no type information.
    from math_verify import parse, verify  # type: ignore[import-untyped]
    from math_verify.errors import TimeoutException  # type: ignore[import-untyped]

    parse_timeout = _PARSE_TIMEOUT_S if timeouts else None
    verify_timeout = _VERIFY_CALL_TIMEOUT_S if timeouts else None
    try:
        gold = parse(_as_latex(first), parsing_timeout=parse_timeout)
        pred = parse(_as_latex(second), parsing_timeout=parse_timeout)
        if not gold or not pred or _too_big(gold) or _too_big(pred):
            return False
        same = verify(gold, pred, timeout_seconds=verify_timeout) or verify(
            pred, gold, timeout_seconds=verify_timeout
        )
        return bool(same) and _exact_enough(gold, pred)
    except (Exception, TimeoutException):  # TimeoutException is a BaseException
        return False


def warm_verifier() -> None:
    """Import math-verify (and sympy) now; the verifier process does this before it is ready."""
    import math_verify  # noqa: F401


class _Verifier:
    """The verifier process: one per interpreter, started on first use, replaced when it hangs.

    It runs ``python -m deepprune_lc.core.answers._verify_worker`` and speaks one JSON line per
    comparison over its pipes. Thread-safe (one comparison at a time); a fork gets its own.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._pid = os.getpid()
        self._unavailable_logged = False
        self.slow: dict[str, None] = {}

    def compare(self, first: str, second: str) -> bool | None:
        """True/False from the verifier; None when it gave no answer in time (or cannot run)."""
        with self._lock:
            proc = self._running()
            if proc is None:
                return None
            assert proc.stdin is not None and proc.stdout is not None
            try:
                proc.stdin.write(json.dumps([first, second]).encode() + b"\n")
                proc.stdin.flush()
                line = _readline(proc.stdout, VERIFY_TIMEOUT_S)
            except OSError:
                line = None
            if line is None or line.strip() not in (b"0", b"1"):
                self._kill()  # hung, out of memory or dead: a fresh one next time
                return None
            return line.strip() == b"1"

    def _running(self) -> subprocess.Popen[bytes] | None:
        if self._pid != os.getpid():  # forked: the parent's process and pipes are not ours
            self._proc, self._pid = None, os.getpid()
        proc = self._proc
        if proc is not None and proc.poll() is None:
            return proc
        self._proc = None
        try:
            proc = _spawn_worker()
            assert proc.stdout is not None
            ready = _readline(proc.stdout, _WORKER_START_TIMEOUT_S)
        except OSError as exc:
            self._log_unavailable(repr(exc))
            return None
        if ready is None or ready.strip() != b"ready":
            _terminate(proc)
            self._log_unavailable("it did not start")
            return None
        self._proc = proc
        return proc

    def _log_unavailable(self, why: str) -> None:
        if not self._unavailable_logged:
            self._unavailable_logged = True
            _log.warning(
                "answer verifier process unavailable (%s): math answers are compared as strings",
                why,
            )

    def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            _terminate(proc)

    def close(self) -> None:
        with self._lock:
            if self._pid == os.getpid():
                self._kill()


def _readline(stream: IO[bytes], timeout: float) -> bytes | None:
    """One line from a pipe within ``timeout`` seconds, or None (timed out or closed)."""
    ready, _, _ = select.select([stream], [], [], timeout)
    if not ready:
        return None
    line = stream.readline()
    return line or None


def _spawn_worker() -> subprocess.Popen[bytes]:
    # The package's own root first, so the child imports this very deepprune_lc.
    root = str(Path(__file__).resolve().parents[3])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    env["DEEPPRUNE_VERIFY_MEMORY_BYTES"] = str(VERIFY_MEMORY_BYTES)
    return subprocess.Popen(
        [sys.executable, "-m", "deepprune_lc.core.answers._verify_worker"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
        close_fds=True,
    )


def _terminate(proc: subprocess.Popen[bytes]) -> None:
    proc.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):  # a killed process exits at once
        proc.wait(timeout=5)
    for stream in (proc.stdin, proc.stdout):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()


_verifier = _Verifier()
atexit.register(_verifier.close)


@functools.lru_cache(maxsize=8192)
def _verify_pair(first: str, second: str) -> bool:
    """Symbolic equivalence of a (sorted) pair, in the verifier process, bounded in time.

    An answer whose comparison timed out is remembered as slow: every later comparison with it is
    a string comparison (already done by the caller), so one pathological answer costs at most one
    timeout per process.
    """
    slow = _verifier.slow
    if first in slow or second in slow:
        return False
    result = _verifier.compare(first, second)
    if result is None:
        _log.warning(
            "math answers %.60r and %.60r: no verdict within %.1f s; compared as strings",
            first,
            second,
            VERIFY_TIMEOUT_S,
        )
        for answer in (first, second):
            slow[answer] = None
        while len(slow) > _MAX_SLOW_ANSWERS:
            del slow[next(iter(slow))]
        return False
    return result


def math_equivalent(a: str, b: str) -> bool:
    """Whether two math answers denote the same value (``0.5`` ~ ``\\frac{1}{2}``, ``x=5`` ~ ``5``).

    Cheap normalised string equality first, then plain integers by value; otherwise math-verify in
    the verifier process, unless an answer is over a static limit (module doc): those, and
    comparisons that time out, are equivalent only when their strings are. Results are cached on the unordered pair. Safe to call
    from any thread; never raises, never takes much longer than :data:`VERIFY_TIMEOUT_S`.
    """
    norm_a, norm_b = _normalise_math(a), _normalise_math(b)
    if norm_a == norm_b:
        return True
    if not norm_a or not norm_b or max(len(norm_a), len(norm_b)) > MAX_VERIFY_CHARS:
        return False
    if _INTEGER_RE.fullmatch(norm_a) and _INTEGER_RE.fullmatch(norm_b):
        # Two plain integers (most answers of AIME, AMC and GSM8K-style tasks) are equal exactly
        # when their values are: no verifier round trip. Placing a trace by its probe compares
        # its answer with every class's, so at N = 512 this is most of the comparisons.
        return int(norm_a) == int(norm_b)
    if max(_nesting_depth(norm_a), _nesting_depth(norm_b)) > MAX_NESTING_DEPTH:
        _log.debug("math answers nested deeper than %d: compared as strings", MAX_NESTING_DEPTH)
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
