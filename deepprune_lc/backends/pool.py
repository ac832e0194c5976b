"""Trace pools: recorded parallel samples, stored as JSONL, that the replay backend plays back.

Why a pool: DeepPrune's savings and accuracy depend on what real traces look like (how similar their
openings are, how often they disagree), and generating them needs a GPU. A pool records N sampled
traces per problem once; replaying it makes runs, tests and benchmarks reproducible on any machine.

Format: one JSON object per line, one problem per line::

    {"id": "p1", "problem": "What is 2+3?", "answer": "5",
     "traces": [{"text": "... \\\\boxed{5}", "reference_answer": "5", "reference_correct": true}],
     "level": "Level 1", "source_model": "..."}

``id``, ``problem`` and ``traces`` (a non-empty list of recorded responses) are required;
``answer`` (ground truth), ``reference_answer`` and ``reference_correct`` are optional.

A trace is recorded either as its ``text`` (a text trace) or, for long reasoning traces recorded at
scale, without text as ``tokens`` (its length in generated tokens) + ``final_answer`` + optional
``probes`` (the answer the model gave when asked for its answer now, after every
``probe_every_tokens`` tokens of the problem; ``"ERR"`` where a probe produced no answer)::

    {"id": "p2", "problem": "...", "answer": "204", "probe_every_tokens": 500,
     "traces": [{"tokens": 3856, "final_answer": "204", "probes": ["150", "ERR", "204"]}]}

A problem's traces are all of one kind, and ``probes`` need the problem's ``probe_every_tokens``. Any other
field is kept, untouched, in ``extra`` and written back by ``write_jsonl``, so a pool survives a
load/save round trip. Blank lines are skipped. A malformed line raises ``TracePoolError`` naming the
file, the 1-based line number and the problem (``pool.jsonl:3: traces: Field required``) - a pool is
hand-edited data, and "validation error somewhere" is useless for fixing it.

Limits, so that a damaged or hostile file fails fast instead of stalling the process: a line longer
than ``MAX_LINE_BYTES`` (256 MiB) is refused before it is read whole, a trace text longer than
``MAX_TRACE_CHARS`` (1 Mi characters, about 250k tokens: more than any model's context) is refused
(the replay backend tokenises a trace's whole text on the event loop when it first streams it), and
JSON nested too deeply for the parser and bytes that are not UTF-8 are reported with the file and
line like any other malformed line. ``load_trace_pool`` takes both limits as arguments.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SerializerFunctionWrapHandler,
    ValidationError,
    model_serializer,
    model_validator,
)

__all__ = [
    "MAX_LINE_BYTES",
    "MAX_TRACE_CHARS",
    "NO_ANSWER",
    "PoolProblem",
    "PoolTrace",
    "TracePool",
    "TracePoolError",
    "load_trace_pool",
]

#: Longest pool line read (bytes); a longer one is refused before it is read whole.
MAX_LINE_BYTES = 256 * 2**20
#: Longest trace text accepted (characters): about 250k tokens, beyond any model's context.
MAX_TRACE_CHARS = 2**20


class TracePoolError(ValueError):
    """A trace pool file is malformed; the message names the file and line."""


def _collect_extra(cls: type[BaseModel], data: Any) -> Any:
    """Move unknown keys into ``extra`` so models stay strict about the fields they know."""
    if not isinstance(data, dict):
        return data
    known = set(cls.model_fields) - {"extra"}
    given = data.get("extra", {})
    if not isinstance(given, dict):
        return data  # let validation report "extra: Input should be a valid dictionary"
    extra = dict(given)
    unknown = {k: v for k, v in data.items() if k not in known and k != "extra"}
    if not unknown and "extra" not in data:
        return data
    out = {k: v for k, v in data.items() if k in known}
    extra.update(unknown)
    out["extra"] = extra
    return out


class _PoolModel(BaseModel):
    # strict: a pool is data written by tools; "5" where a bool belongs is a bug to report, not coerce.
    model_config = ConfigDict(strict=True, extra="forbid")

    extra: dict[str, Any] = Field(default_factory=dict, description="Fields this format ignores.")

    @model_validator(mode="before")
    @classmethod
    def _gather_extra(cls, data: Any) -> Any:
        return _collect_extra(cls, data)

    @model_serializer(mode="wrap")
    def _flatten_extra(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # Extra fields go back to the top level, so the JSONL written equals the JSONL read.
        data: dict[str, Any] = handler(self)
        extra = data.pop("extra", None) or {}
        for key in _OPTIONAL_KEYS:
            if key in data and data[key] is None:
                del data[key]
        if data.get("tokens") is not None:
            # A text-free trace is written with the fields it was read with, no others.
            for key in [
                k for k, v in data.items() if v in (None, "") and k not in self.model_fields_set
            ]:
                del data[key]
        for key, value in extra.items():
            data.setdefault(key, value)
        return data


#: The recorded answer of a probe (or of a trace) that produced none.
NO_ANSWER = "ERR"

#: Fields a text-free trace adds; left out of ``model_dump`` when unset, so text pools are written
#: back exactly as they were read.
_OPTIONAL_KEYS = ("tokens", "final_answer", "probes", "probe_every_tokens")


class PoolTrace(_PoolModel):
    """One recorded response: its ``text``, or (text-free) ``tokens`` + ``final_answer`` + ``probes``."""

    text: str = Field(default="", description="The full response (empty for a text-free trace).")
    tokens: int | None = Field(
        default=None, ge=1, description="Generated tokens of a text-free trace."
    )
    final_answer: str | None = Field(
        default=None, description="A text-free trace's final answer ('ERR': none)."
    )
    probes: list[str] | None = Field(
        default=None,
        description="Answer probes, probes[k] after (k + 1) * probe_every_tokens tokens ('ERR': none).",
    )
    reference_answer: str | None = Field(
        default=None, description="The publisher's extracted final answer, if recorded."
    )
    reference_correct: bool | None = Field(
        default=None, description="Whether the publisher graded the answer correct, if recorded."
    )

    @model_validator(mode="after")
    def _one_kind(self) -> PoolTrace:
        # Messages start with the field they are about; ``_describe`` files them under it.
        text_free = (self.tokens, self.final_answer, self.probes) != (None, None, None)
        if "text" in self.model_fields_set:
            if text_free:
                raise ValueError(
                    "text: a trace is recorded either as 'text' or as 'tokens' + 'final_answer' "
                    "(+ 'probes'), not both"
                )
            return self
        if not text_free:
            raise ValueError(
                "text: Field required (or 'tokens' + 'final_answer' for a text-free trace)"
            )
        for name in ("tokens", "final_answer"):
            if getattr(self, name) is None:
                raise ValueError(
                    f"{name}: Field required (a text-free trace has 'tokens' and 'final_answer')"
                )
        return self

    @property
    def text_free(self) -> bool:
        """Recorded as a length, a final answer and probes, with no text."""
        return self.tokens is not None


class PoolProblem(_PoolModel):
    """One problem and its recorded traces."""

    id: str = Field(min_length=1)
    # Non-empty: an empty problem text would be "contained" in every prompt and match them all.
    problem: str = Field(min_length=1)
    answer: str | None = Field(default=None, description="Ground-truth answer, if known.")
    probe_every_tokens: int | None = Field(
        default=None, ge=1, description="Tokens between two recorded probes (text-free traces)."
    )
    traces: list[PoolTrace] = Field(min_length=1)

    @model_validator(mode="after")
    def _consistent_traces(self) -> PoolProblem:
        kinds = {trace.text_free for trace in self.traces}
        if len(kinds) > 1:
            first = next(
                i for i, t in enumerate(self.traces) if t.text_free != self.traces[0].text_free
            )
            raise ValueError(
                f"traces.{first}: the problem mixes text traces and text-free traces "
                "(tokens + final_answer); record them all one way"
            )
        if self.probe_every_tokens is None:
            with_probes = next((i for i, t in enumerate(self.traces) if t.probes), None)
            if with_probes is not None:
                raise ValueError(
                    f"probe_every_tokens: traces.{with_probes} records probes, so the problem needs "
                    "'probe_every_tokens' (the tokens between two probes)"
                )
        return self

    @property
    def text_free(self) -> bool:
        """Its traces are recorded without text (lengths, final answers, probes)."""
        return self.traces[0].text_free

    @property
    def has_probes(self) -> bool:
        """Its traces carry recorded answer probes."""
        return self.probe_every_tokens is not None and any(t.probes for t in self.traces)


class TracePool(BaseModel):
    """A set of problems with recorded traces, looked up by id or by prompt text."""

    model_config = ConfigDict(extra="forbid")

    problems: list[PoolProblem]
    source: str = Field(
        default="<memory>", description="Where the pool came from (file path), for messages."
    )

    _by_id: dict[str, PoolProblem] = PrivateAttr(default_factory=dict)
    _by_text: dict[str, PoolProblem] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _unique_ids(self) -> TracePool:
        seen: dict[str, PoolProblem] = {}
        for problem in self.problems:
            if problem.id in seen:
                raise ValueError(f"problems: duplicate problem id {problem.id!r}")
            seen[problem.id] = problem
        self._by_id = seen
        self._by_text = {}
        for problem in self.problems:
            self._by_text.setdefault(problem.problem.strip(), problem)
        return self

    def __len__(self) -> int:
        return len(self.problems)

    def __iter__(self) -> Iterator[PoolProblem]:  # type: ignore[override]
        # A pool iterates over its problems (not over pydantic field pairs): that is what callers mean.
        return iter(self.problems)

    def by_id(self, problem_id: str) -> PoolProblem:
        """The problem with this id; ``KeyError`` naming the pool when absent."""
        try:
            return self._by_id[problem_id]
        except KeyError:
            raise KeyError(f"problem {problem_id!r} not in trace pool {self.source}") from None

    def subset(self, problem_ids: Iterable[str]) -> TracePool:
        """The pool of just these problems, in the order given (a bench on the hard ones, say);
        ``KeyError`` naming the pool for an id it does not have."""
        ids = list(problem_ids)
        missing = [i for i in ids if i not in self._by_id]
        if missing:
            raise KeyError(
                f"problem(s) {', '.join(map(repr, missing))} not in trace pool {self.source}"
            )
        return TracePool(problems=[self._by_id[i] for i in ids], source=self.source)

    def find_by_prompt(self, prompt_text: str) -> PoolProblem | None:
        """The problem a prompt asks, or ``None``.

        A prompt matches a problem when it equals the problem text (after stripping) or contains it,
        because callers often wrap the problem in instructions or a chat template. When several
        problems are contained, the longest wins: a short problem can be a substring of a longer one.
        """
        text = prompt_text.strip()
        exact = self._by_text.get(text)
        if exact is not None:
            return exact
        best: PoolProblem | None = None
        best_len = 0
        for key, problem in self._by_text.items():
            if len(key) > best_len and key in text:
                best, best_len = problem, len(key)
        return best

    def write_jsonl(self, path: str | os.PathLike[str]) -> None:
        """Write the pool in the format ``load_trace_pool`` reads (one problem per line)."""
        with Path(path).open("w", encoding="utf-8") as fh:
            for problem in self.problems:
                fh.write(json.dumps(problem.model_dump(), ensure_ascii=False))
                fh.write("\n")


def _describe(error: ValidationError) -> str:
    """First validation error as ``loc: message`` (``traces.0.text: Field required``)."""
    first = error.errors()[0]
    loc = ".".join(str(part) for part in first["loc"])
    message = str(first["msg"])
    if first["type"] == "value_error":
        # Our validators name the field first ("tokens: Field required"): file it under it.
        message = message.removeprefix("Value error, ")
        field_name, sep, rest = message.partition(": ")
        if sep and field_name.isidentifier():
            loc = f"{loc}.{field_name}" if loc else field_name
            message = rest
    return f"{loc}: {message}" if loc else message


def load_trace_pool(
    path: str | os.PathLike[str],
    *,
    max_line_bytes: int = MAX_LINE_BYTES,
    max_trace_chars: int = MAX_TRACE_CHARS,
) -> TracePool:
    """Read a trace pool JSONL file; ``TracePoolError`` names the file and line of any bad line.

    Lines over ``max_line_bytes`` and trace texts over ``max_trace_chars`` are refused (see the
    module docstring for why).
    """
    file_path = Path(path)
    name = str(path)
    problems: list[PoolProblem] = []
    first_line: dict[str, int] = {}
    with file_path.open("rb") as fh:
        for lineno, raw in enumerate(iter(lambda: fh.readline(max_line_bytes + 1), b""), start=1):
            if len(raw) > max_line_bytes:
                raise TracePoolError(
                    f"{name}:{lineno}: line longer than {max_line_bytes} bytes (max_line_bytes)"
                )
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise TracePoolError(
                    f"{name}:{lineno}: not UTF-8: byte {exc.object[exc.start]:#04x} at column "
                    f"{exc.start + 1}"
                ) from exc
            if not line.strip():
                continue
            try:
                data = json.loads(line)
            except json.JSONDecodeError as exc:
                raise TracePoolError(f"{name}:{lineno}: invalid JSON: {exc.msg}") from exc
            except RecursionError as exc:
                raise TracePoolError(f"{name}:{lineno}: invalid JSON: nested too deeply") from exc
            if not isinstance(data, dict):
                kind = type(data).__name__
                raise TracePoolError(f"{name}:{lineno}: expected a JSON object, got {kind}")
            try:
                problem = PoolProblem.model_validate(data)
            except ValidationError as exc:
                raise TracePoolError(f"{name}:{lineno}: {_describe(exc)}") from exc
            except RecursionError as exc:  # a nested extra field, deep enough to pass json
                raise TracePoolError(f"{name}:{lineno}: a field is nested too deeply") from exc
            for index, trace in enumerate(problem.traces):
                if len(trace.text) > max_trace_chars:
                    raise TracePoolError(
                        f"{name}:{lineno}: traces.{index}.text: {len(trace.text)} characters, "
                        f"over the limit of {max_trace_chars} (max_trace_chars)"
                    )
            if problem.id in first_line:
                raise TracePoolError(
                    f"{name}:{lineno}: id: duplicate problem id {problem.id!r} "
                    f"(first on line {first_line[problem.id]})"
                )
            first_line[problem.id] = lineno
            problems.append(problem)
    return TracePool(problems=problems, source=name)
