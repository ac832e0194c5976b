"""An offline stand-in for a BPE tokenizer: ``RegexTokenizer``.

Why it exists: the recorded trace pools carry text only (no token ids, no logprobs), and the replay
backend, the token-based prefix policy and every cost report need *some* token count and *some*
stable ids. Downloading a real model tokenizer is not an option on the machines this library must run
on (no network, no ``transformers``), so this module approximates one.

How it approximates BPE: it runs the GPT-2 pre-tokenisation regex (the step every byte-level BPE
tokenizer performs before merging) and treats each pre-token as one token, with three corrections
that bring the count closer to a modern tokenizer (Llama 3, cl100k):

* digit runs are split into groups of at most 3 digits (``"123456"`` -> ``"123", "456"``), as those
  tokenizers do;
* a run of newlines (with the spaces before it) is one piece, not one piece per newline;
* letter runs longer than 12 characters are split into chunks of 6, because real vocabularies rarely
  hold such long words as single tokens.

Stdlib ``re`` has no ``\\p{L}``/``\\p{N}``, so letters are ``[^\\W\\d_]`` and digits ``\\d``; every
other non-space character counts as punctuation. The split is lossless: concatenating the pieces gives
back the input exactly (property-tested).

How good the approximation is cannot be measured offline (that needs the real tokenizer), so treat
counts as estimates. Known biases: a real BPE vocabulary holds most common English words whole (as
here) but splits rare words into several tokens (here: one, unless longer than 12 letters), so this
tends to undercount unusual vocabulary; real pre-tokenisers differ in details (cl100k attaches one
punctuation character to the following letters, so ``\\frac`` is one pre-token there and two here),
so LaTeX counts can err in either direction. On the development pool (``qwen25math_cot8_dev.jsonl``,
560 traces, 632,517 characters) this tokenizer gives 184,906 pieces, i.e. 0.292 pieces per character
(3.42 characters per piece). Reports should name the tokenizer (``name``) next to any token count.

Ids: pieces map to integer ids through a vocabulary that grows as new pieces are seen (ids start at
1; 0 is never issued, so it can serve as padding). Ids are therefore deterministic for a given order of
encoded texts, and only meaningful within one tokenizer instance.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = ["RegexTokenizer"]

#: Letter runs longer than this are split into chunks of ``_LONG_WORD_CHUNK`` characters.
_LONG_WORD_LIMIT = 12
_LONG_WORD_CHUNK = 6

# GPT-2 pre-tokenisation with four changes: digits in runs of at most 3 and newline runs kept together
# (both as cl100k / Llama 3), Unicode classes spelled with stdlib ``re`` classes, and a final catch-all
# so that no character can ever be skipped by findall.
_PATTERN = re.compile(
    r"""'(?:s|t|re|ve|m|ll|d)"""  # English contractions, as GPT-2
    r"""| ?[^\W\d_]+"""  # a letter run, with its leading space
    r"""| ?\d{1,3}"""  # up to three digits, with a leading space
    r"""| ?(?:[^\s\w]|_)+"""  # punctuation / symbols run, with a leading space
    r"""|\s*[\r\n]+"""  # a newline run with the spaces before it (cl100k), not one per newline
    r"""|\s+(?!\S)"""  # whitespace not followed by a word (leaves one space for the next token)
    r"""|\s+"""  # any remaining whitespace
    r"""|[\s\S]""",  # safety net: any single character
)

_LONG_WORD = re.compile(rf" ?[^\W\d_]{{{_LONG_WORD_LIMIT + 1},}}")


class RegexTokenizer:
    """Regex pre-tokenizer that stands in for a BPE tokenizer (see the module docstring).

    Not thread-safe: ``encode`` grows the vocabulary in place. Use one instance per event loop.
    """

    __slots__ = ("_pieces", "_vocab", "name")

    def __init__(self) -> None:
        self.name: str = "regex-bpe-approx-v1"
        self._vocab: dict[str, int] = {}
        # Index 0 is a placeholder so that ``_pieces[id]`` works with ids starting at 1.
        self._pieces: list[str] = [""]

    @property
    def vocab_size(self) -> int:
        """Distinct pieces seen so far (the largest id issued)."""
        return len(self._pieces) - 1

    def split(self, text: str) -> list[str]:
        """Split ``text`` into pieces; ``"".join(split(text)) == text`` always holds."""
        pieces: list[str] = _PATTERN.findall(text)
        if _LONG_WORD.search(text) is None:
            return pieces
        out: list[str] = []
        for piece in pieces:
            if len(piece) > _LONG_WORD_LIMIT and _LONG_WORD.fullmatch(piece):
                out.extend(
                    piece[i : i + _LONG_WORD_CHUNK] for i in range(0, len(piece), _LONG_WORD_CHUNK)
                )
            else:
                out.append(piece)
        return out

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``, adding unseen pieces to the vocabulary."""
        return self.ids_of(self.split(text))

    def ids_of(self, pieces: Iterable[str]) -> list[int]:
        """Ids of already-split pieces (lets callers split once and keep both pieces and ids)."""
        vocab = self._vocab
        ids: list[int] = []
        append = ids.append
        for piece in pieces:
            token_id = vocab.get(piece)
            if token_id is None:
                token_id = len(self._pieces)
                vocab[piece] = token_id
                self._pieces.append(piece)
            append(token_id)
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``; raises ``ValueError`` for an id this instance never issued."""
        pieces = self._pieces
        id_list = list(ids)
        for token_id in id_list:
            if not 0 < token_id < len(pieces):
                raise ValueError(f"unknown token id {token_id} (vocabulary has {self.vocab_size})")
        return "".join([pieces[i] for i in id_list])

    def count(self, text: str) -> int:
        """Number of tokens in ``text`` (does not grow the vocabulary)."""
        return len(self.split(text))

    def __repr__(self) -> str:
        return f"RegexTokenizer(name={self.name!r}, vocab_size={self.vocab_size})"
