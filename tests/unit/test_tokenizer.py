"""RegexTokenizer: lossless split, BPE-like pre-tokenisation, stable ids."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from deepprune_lc.backends.tokenizer import RegexTokenizer


@given(st.text())
def test_split_is_lossless_for_any_text(text: str) -> None:
    tok = RegexTokenizer()
    pieces = tok.split(text)
    assert "".join(pieces) == text
    assert all(pieces), "no empty pieces"


@given(st.text(alphabet=st.sampled_from("ab1 \n\\{}$.,'_éΩ٣"), max_size=200))
def test_encode_decode_round_trip(text: str) -> None:
    tok = RegexTokenizer()
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert len(ids) == tok.count(text)
    assert all(i >= 1 for i in ids)


def test_gpt2_style_pieces() -> None:
    tok = RegexTokenizer()
    assert tok.split("Hello world, it's") == ["Hello", " world", ",", " it", "'s"]
    # Whitespace before a word: all but the last space form one piece, the last joins the word.
    assert tok.split("a   b") == ["a", "  ", " b"]
    assert tok.split("x\n\ny") == ["x", "\n\n", "y"]  # newline runs stay together (cl100k)


def test_digit_runs_split_in_groups_of_three() -> None:
    tok = RegexTokenizer()
    assert tok.split("1234567") == ["123", "456", "7"]
    assert tok.split("x = 42") == ["x", " =", " 42"]


def test_long_letter_runs_are_chunked() -> None:
    tok = RegexTokenizer()
    assert tok.split(" internationalization") == [" inter", "nation", "alizat", "ion"]
    assert tok.split("twelveletter") == ["twelveletter"]  # 12 letters: kept whole
    assert tok.split("thirteenlette") == ["thirte", "enlett", "e"]


def test_latex_is_split_not_dropped() -> None:
    tok = RegexTokenizer()
    text = "\\frac{1}{2} + \\boxed{3400}"
    pieces = tok.split(text)
    assert "".join(pieces) == text
    assert "frac" in pieces and "boxed" in pieces
    assert tok.count(text) == len(pieces)


def test_ids_start_at_one_and_are_deterministic_for_an_order_of_texts() -> None:
    a, b = RegexTokenizer(), RegexTokenizer()
    texts = ["So x = 3.", "Then y = x + 1, so y = 4.", "So x = 3."]
    ids_a = [a.encode(t) for t in texts]
    ids_b = [b.encode(t) for t in texts]
    assert ids_a == ids_b
    assert ids_a[0] == [1, 2, 3, 4, 5]
    assert ids_a[2] == ids_a[0]  # repeated pieces reuse their ids
    assert a.vocab_size == max(max(ids) for ids in ids_a)


def test_count_does_not_grow_the_vocabulary() -> None:
    tok = RegexTokenizer()
    assert tok.count("brand new words here") == 4
    assert tok.vocab_size == 0


def test_decode_rejects_unknown_ids() -> None:
    tok = RegexTokenizer()
    tok.encode("hello")
    with pytest.raises(ValueError, match="unknown token id 0"):
        tok.decode([0])
    with pytest.raises(ValueError, match="unknown token id 99"):
        tok.decode([1, 99])


def test_name_identifies_the_approximation() -> None:
    assert RegexTokenizer().name == "regex-bpe-approx-v1"
