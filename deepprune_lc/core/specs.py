"""Spec strings: one grammar, ``kind``, ``kind:arg`` or ``kind:arg?key=value&key2=value2``, for every kind.

Why one grammar: backends and judges are named by strings (``"replay:demo"``, ``"lexical"``,
``"vllm:Qwen/Qwen3-8B?max_model_len=8192"``) so the common case is one line, and every package that
registers a kind (``deepprune_lc.runtime.registry``) gets the same parsing and the same errors
instead of inventing its own.

* ``kind`` is everything before the first ``':'`` (or before ``'?'`` when there is no ``':'``): a
  name of letters, digits, ``_``, ``-``, ``.`` and ``+``, starting with a letter;
* ``arg`` is everything after that ``':'`` up to the first ``'?'``, taken literally (paths and URLs
  keep their ``':'`` and ``'/'``: ``"vllm-server:http://h:8000/v1?model=x"`` has kind
  ``vllm-server`` and arg ``http://h:8000/v1``); surrounding whitespace is dropped;
* the options after ``'?'`` are a URL query: ``key=value`` pairs joined by ``'&'``, URL-decoded
  (``%3D`` is ``'='``, ``'+'`` is a space); a key given twice is an error. Values stay strings: the
  factory of each kind knows their types (validate them against its config).

Pure: standard library only, no IO.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from urllib.parse import quote, unquote_plus, urlencode

__all__ = ["Spec", "SpecError", "parse_spec"]

_KIND = re.compile(r"[A-Za-z][A-Za-z0-9_.+-]*\Z")
_GRAMMAR = "'kind', 'kind:arg' or 'kind:arg?key=value&key2=value2'"


class SpecError(ValueError):
    """A spec string that breaks the grammar, names an unknown kind, or has options its kind lacks."""


@dataclass(frozen=True)
class Spec:
    """A parsed spec string: ``kind``, ``arg`` (``""`` when absent), ``options`` (str -> str).

    Equal specs name the same thing whatever the order of their options; ``canonical`` is the one
    string for all of them (the registry shares instances per canonical string). ``raw`` is the text
    as given, for messages; it takes no part in equality.
    """

    kind: str
    arg: str = ""
    options: Mapping[str, str] = field(default_factory=dict, hash=False)
    raw: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.kind, str) or not _KIND.match(self.kind):
            raise SpecError(
                f"spec kind {self.kind!r}: expected a name of letters, digits, '_', '-', '.', '+' "
                "starting with a letter"
            )
        if not isinstance(self.arg, str):
            raise SpecError(f"spec arg: expected a string, got {type(self.arg).__name__}")
        options = dict(self.options)
        for key, value in options.items():
            if not isinstance(key, str) or not key or not isinstance(value, str):
                raise SpecError(f"spec option {key!r}={value!r}: keys and values are strings")
        # Read-only, so a Spec shared by the registry cannot be changed by one caller.
        object.__setattr__(self, "options", MappingProxyType(options))
        if not self.raw:
            object.__setattr__(self, "raw", self.canonical)

    @property
    def canonical(self) -> str:
        """The normalised spec string: options sorted by key and URL-quoted; parses back equal."""
        text = f"{self.kind}:{self.arg}" if self.arg else self.kind
        if self.options:
            query = urlencode(sorted(self.options.items()), quote_via=quote, safe="/:,")
            text = f"{text}?{query}"
        return text

    def check_options(self, allowed: Iterable[str] = ()) -> None:
        """Raise ``SpecError`` naming every option key not in ``allowed`` (and the allowed ones).

        For factories: an unknown key is almost always a typo, and silently ignoring it would run
        with a setting the caller did not ask for.
        """
        known = set(allowed)
        unknown = sorted(set(self.options) - known)
        if not unknown:
            return
        names = ", ".join(repr(key) for key in unknown)
        if known:
            takes = "takes " + ", ".join(repr(key) for key in sorted(known))
        else:
            takes = "takes no options"
        raise SpecError(f"spec {self.raw!r}: unknown option {names}; kind {self.kind!r} {takes}")

    def __str__(self) -> str:
        return self.canonical


def _parse_query(text: str, query: str) -> dict[str, str]:
    options: dict[str, str] = {}
    for piece in query.split("&"):
        key, equals, value = piece.partition("=")
        key = unquote_plus(key).strip()
        if not equals or not key:
            raise SpecError(f"spec {text!r}: option {piece!r} is not key=value")
        if key in options:
            raise SpecError(f"spec {text!r}: option {key!r} given twice")
        options[key] = unquote_plus(value)
    return options


def parse_spec(text: str) -> Spec:
    """Parse ``kind``, ``kind:arg`` or ``kind:arg?key=value&...`` into a ``Spec``.

    Raises ``SpecError`` (a ``ValueError``) naming what is wrong: no kind, a kind that is not a
    name, nothing after ``':'`` or ``'?'``, an option that is not ``key=value``, a key given twice.
    """
    if not isinstance(text, str):
        raise SpecError(f"spec: expected a string such as {_GRAMMAR}, got {type(text).__name__}")
    stripped = text.strip()
    if not stripped:
        raise SpecError(f"spec {text!r} is empty; expected {_GRAMMAR}")
    head, question, query = stripped.partition("?")
    kind, colon, arg = head.partition(":")
    kind, arg = kind.strip(), arg.strip()
    if not kind:
        raise SpecError(f"spec {text!r}: no kind before {':' if colon else '?'!r}")
    if not _KIND.match(kind):
        raise SpecError(
            f"spec {text!r}: kind {kind!r} is not a name (letters, digits, '_', '-', '.', '+', "
            f"starting with a letter); expected {_GRAMMAR}"
        )
    if colon and not arg:
        raise SpecError(
            f"spec {text!r}: nothing after ':'; give the argument, or write {kind!r} alone if "
            "the kind takes none"
        )
    if question and not query:
        raise SpecError(f"spec {text!r}: nothing after '?'; give key=value options or drop the '?'")
    options = _parse_query(text, query) if query else {}
    return Spec(kind, arg, options, raw=text)
