"""Tests for deepprune_lc.core.prefix: reasoning-word and token prefix trackers."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deepprune_lc.core.config import DEFAULT_REASONING_WORDS, ReasoningWordsPrefix, TokensPrefix
from deepprune_lc.core.prefix import (
    ReasoningWordPrefixTracker,
    TokenPrefixTracker,
    make_prefix_tracker,
    reasoning_word_prefix,
)


def feed_all(tracker: ReasoningWordPrefixTracker, chunks: list[str]) -> bool:
    """Feed ``chunks`` one by one until the tracker completes; return whether it did."""
    return any(tracker.feed(chunk, 1) for chunk in chunks)  # stops at the first True


def words(k: int = 100, vocabulary: tuple[str, ...] = DEFAULT_REASONING_WORDS):
    return ReasoningWordPrefixTracker(k, vocabulary)


# --------------------------------------------------------------------------------------------
# ReasoningWordPrefixTracker: what counts as a reasoning word
# --------------------------------------------------------------------------------------------


def test_counts_whole_words_and_phrases_case_insensitively() -> None:
    tracker = words()
    tracker.feed("Wait, LET ME think. Therefore x = 2; let  Me\nsee. ", 1)
    # "Wait", "LET ME", "Therefore", "let  Me" (any whitespace inside a phrase)
    assert tracker.words_seen == 4
    assert not tracker.complete


@pytest.mark.parametrize(
    "text",
    [
        "sow the seed ",  # "so" inside "sow"
        "thence we go ",  # "then" inside "thence"
        "butter is soft ",  # "but" inside "butter", "so" inside "soft"
        "also unless whenever ",  # "so", "then"... never at a word start / end
        "checked verifying firstly ",  # inflected forms are different words
        "nowhere knows ",  # "now" at the start of "nowhere", inside "knows"
        "let mean values ",  # "let me" must end at a word boundary
        "snow_so but_ ",  # underscore is a word character
    ],
)
def test_words_inside_other_words_do_not_count(text: str) -> None:
    tracker = words()
    tracker.feed(text, 1)
    assert tracker.words_seen == 0


def test_punctuation_is_a_word_boundary() -> None:
    tracker = words()
    tracker.feed("(so) wait-but hmm... ", 1)
    assert tracker.words_seen == 4


def test_completes_exactly_at_the_end_of_the_kth_word() -> None:
    tracker = words(k=3)
    text = "Hmm, we start. So x=1. Let me check it again, wait."
    assert tracker.feed(text, 7) is True
    assert tracker.complete
    # Hmm (1), So (2), Let me (3): the prefix ends right after "Let me".
    assert tracker.prefix_text == "Hmm, we start. So x=1. Let me"
    assert tracker.words_seen == 3
    assert tracker.tokens == 7


def test_not_complete_before_k_words() -> None:
    tracker = words(k=3)
    assert tracker.feed("So one, ", 1) is False
    assert tracker.feed("then two. ", 1) is False
    assert tracker.prefix_text is None
    assert tracker.feed("Thus", 1) is False  # not confirmed yet: "Thus" could grow
    assert tracker.feed(" three", 1) is True
    assert tracker.prefix_text == "So one, then two. Thus"


def test_word_at_end_of_stream_counts_only_once_a_boundary_arrives() -> None:
    tracker = words(k=1)
    assert tracker.feed("x then", 1) is False
    assert tracker.words_seen == 0
    assert tracker.feed("ce", 1) is False  # it was "thence" after all
    assert tracker.words_seen == 0
    assert tracker.feed(" so", 1) is False
    assert tracker.feed("!", 1) is True
    assert tracker.prefix_text == "x thence so"


def test_alphanumeric_delta_never_completes_but_next_boundary_does() -> None:
    tracker = words(k=1)
    assert tracker.feed("wa", 1) is False
    assert tracker.feed("it", 1) is False
    assert tracker.feed("\n", 1) is True
    assert tracker.prefix_text == "wait"
    assert tracker.tokens == 3


def test_empty_delta_is_harmless() -> None:
    tracker = words(k=1)
    assert tracker.feed("", 0) is False
    assert tracker.feed("so ", 1) is True
    assert tracker.prefix_text == "so"


def test_phrase_split_across_deltas() -> None:
    tracker = words(k=1)
    for chunk in ["in ", "oth", "er", " ", "wor", "ds"]:
        assert tracker.feed(chunk, 1) is False
    assert tracker.feed(",", 1) is True
    assert tracker.prefix_text == "in other words"


def test_custom_vocabulary_is_used() -> None:
    tracker = ReasoningWordPrefixTracker(2, ("Eureka", "aha moment"))
    tracker.feed("so wait, AHA  moment and eureka! ", 1)
    assert tracker.complete
    assert tracker.prefix_text == "so wait, AHA  moment and eureka"


def test_close_gives_the_whole_text_when_the_prefix_never_completed() -> None:
    tracker = words(k=5)
    tracker.feed("So a short ", 2)
    tracker.feed("trace ending in wait", 3)
    assert not tracker.complete
    assert tracker.close() == "So a short trace ending in wait"
    assert tracker.complete
    assert tracker.prefix_text == "So a short trace ending in wait"


def test_close_after_completion_keeps_the_prefix() -> None:
    tracker = words(k=1)
    tracker.feed("so far so good", 1)
    assert tracker.complete
    assert tracker.close() == "so"


def test_close_of_an_empty_trace_is_empty() -> None:
    assert words(k=1).close() == ""


# --------------------------------------------------------------------------------------------
# Split invariance
# --------------------------------------------------------------------------------------------

_PIECES = [
    "Wait",
    "wait",
    "so",
    "So",
    "THEREFORE",
    "let me",
    "Let me",
    "let's",
    "let us",
    "in other words",
    "we have",
    "which means",
    "but",
    "hmm",
    "then",
    "check",
    "step",
    # decoys
    "sow",
    "thence",
    "butter",
    "also",
    "letter",
    "x",
    "42",
    "equation",
    "\\frac{1}{2}",
]
_SEPARATORS = [" ", "\n", ", ", ". ", "; ", "-", "(", ")", " = "]


@st.composite
def reasoning_texts(draw: st.DrawFn) -> str:
    pieces = draw(st.lists(st.sampled_from(_PIECES), min_size=0, max_size=40))
    out = []
    for piece in pieces:
        out.append(piece)
        out.append(draw(st.sampled_from(_SEPARATORS)))
    return "".join(out)


@st.composite
def text_and_splits(draw: st.DrawFn) -> tuple[str, list[str]]:
    text = draw(reasoning_texts())
    cuts = sorted(draw(st.sets(st.integers(0, max(0, len(text))), max_size=30)))
    bounds = [0, *cuts, len(text)]
    return text, [text[a:b] for a, b in itertools.pairwise(bounds)]


@settings(max_examples=300, deadline=None)
@given(data=text_and_splits(), k=st.integers(1, 12))
def test_prefix_does_not_depend_on_how_the_stream_is_split(
    data: tuple[str, list[str]], k: int
) -> None:
    text, chunks = data
    whole = words(k)
    whole_done = whole.feed(text, 1)
    split = words(k)
    split_done = feed_all(split, chunks)
    assert split_done == whole_done
    assert split.prefix_text == whole.prefix_text
    if whole_done:
        assert split.words_seen == whole.words_seen == k
        assert text.startswith(whole.prefix_text or "")
    else:
        assert split.words_seen == whole.words_seen
        assert split.close() == whole.close() == text


@settings(max_examples=100, deadline=None)
@given(text=reasoning_texts(), k=st.integers(1, 12))
def test_offline_helper_agrees_with_the_streaming_tracker(text: str, k: int) -> None:
    policy = ReasoningWordsPrefix(k=k)
    tracker = words(k)
    feed_all(tracker, [*text, " "])  # character by character, then a final boundary
    expected = tracker.prefix_text if tracker.complete else None
    assert reasoning_word_prefix(text, policy) == expected


def test_phrase_with_long_whitespace_is_found_whatever_the_split() -> None:
    text = "x in  other  words ok"
    whole = words(k=1)
    whole.feed(text, 1)
    assert whole.prefix_text == "x in  other  words"
    split = words(k=1)
    feed_all(split, ["x in  other  words", " ok"])
    assert split.prefix_text == whole.prefix_text


def test_overlapping_vocabulary_entries_do_not_depend_on_the_split() -> None:
    vocabulary = ("let", "let me")
    whole = ReasoningWordPrefixTracker(1, vocabulary)
    whole.feed("let me go", 1)
    split = ReasoningWordPrefixTracker(1, vocabulary)
    feed_all(split, ["let ", "me go"])
    assert split.prefix_text == whole.prefix_text == "let me"


# --------------------------------------------------------------------------------------------
# reasoning_word_prefix (offline helper)
# --------------------------------------------------------------------------------------------


def test_offline_helper_counts_a_final_word() -> None:
    policy = ReasoningWordsPrefix(k=2)
    assert reasoning_word_prefix("so x then", policy) == "so x then"
    assert reasoning_word_prefix("so x", policy) is None


# --------------------------------------------------------------------------------------------
# TokenPrefixTracker
# --------------------------------------------------------------------------------------------


def test_token_tracker_completes_at_k_tokens() -> None:
    tracker = TokenPrefixTracker(3)
    assert tracker.feed("a", 1) is False
    assert tracker.feed("b", 1) is False
    assert tracker.feed("c", 1) is True
    assert tracker.prefix_text == "abc"
    assert tracker.tokens == 3


def test_token_tracker_includes_a_crossing_multi_token_delta_whole() -> None:
    tracker = TokenPrefixTracker(5)
    assert tracker.feed("one two ", 3) is False
    assert tracker.feed("three four five", 4) is True
    assert tracker.prefix_text == "one two three four five"
    assert tracker.tokens == 7


def test_token_tracker_single_delta_beyond_k() -> None:
    tracker = TokenPrefixTracker(2)
    assert tracker.feed("lots of text", 10) is True
    assert tracker.prefix_text == "lots of text"


def test_token_tracker_close_before_k() -> None:
    tracker = TokenPrefixTracker(500)
    tracker.feed("short", 2)
    tracker.feed(" trace", 2)
    assert not tracker.complete
    assert tracker.close() == "short trace"
    assert tracker.complete


@settings(max_examples=100, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 5), min_size=1, max_size=30),
    k=st.integers(1, 40),
)
def test_token_tracker_completes_at_the_first_delta_reaching_k(sizes: list[int], k: int) -> None:
    tracker = TokenPrefixTracker(k)
    total = 0
    for i, n in enumerate(sizes):
        total += n
        done = tracker.feed(f"<{i}>", n)
        if done:
            assert total >= k
            assert tracker.prefix_text == "".join(f"<{j}>" for j in range(i + 1))
            break
        assert total < k
    else:
        assert sum(sizes) < k
        assert tracker.prefix_text is None


# --------------------------------------------------------------------------------------------
# make_prefix_tracker
# --------------------------------------------------------------------------------------------


def test_make_prefix_tracker_follows_the_policy() -> None:
    assert isinstance(make_prefix_tracker(TokensPrefix(k=4)), TokenPrefixTracker)
    tracker = make_prefix_tracker(ReasoningWordsPrefix(k=1, vocabulary=("eureka",)))
    assert isinstance(tracker, ReasoningWordPrefixTracker)
    assert tracker.feed("so eureka!", 1) is True
    assert tracker.prefix_text == "so eureka"


def test_make_prefix_tracker_rejects_unknown_policies() -> None:
    with pytest.raises(TypeError):
        make_prefix_tracker("tokens")  # type: ignore[arg-type]
