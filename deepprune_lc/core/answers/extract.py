"""Answer extraction: pulling *the* final answer out of a long chain of thought.

A trace mentions many intermediate numbers; the vote needs its final one (a boxed answer, an
"the answer is" phrase, or a multiple-choice letter).
"""

from __future__ import annotations

import functools
import re

__all__ = ["extract_answer", "extract_choice"]


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
