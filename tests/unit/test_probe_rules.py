"""The rules every engine's answer probe follows (``deepprune_lc.backends.probes``): where the
answer ends, the suffix with the think block closed, the think block's state, the budget check, and
``max_tokens=None`` on the replay backend (a recorded trace plays to its end)."""

from __future__ import annotations

import time

import pytest

from deepprune_lc.backends import (
    THINK_CLOSE,
    ProbeStats,
    box_end,
    check_probe_tokens,
    model_probe_reply,
    probe_suffix_text,
    think_block_open,
    think_tokens,
)
from deepprune_lc.core import SamplingConfig
from deepprune_lc.core.ports import DYNASOR_PROBE_SUFFIX, ProbeReply


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        ("204} \\]", "204}"),
        ("\\frac{1}{2}} \\]", "\\frac{1}{2}}"),  # nested braces: the box's own brace ends it
        ("x^{2}+1}.", "x^{2}+1}"),
        ("}", "}"),
    ],
)
def test_the_answer_ends_at_the_brace_that_closes_the_box(text: str, answer: str) -> None:
    end = box_end(DYNASOR_PROBE_SUFFIX, text)
    assert end is not None and text[:end] == answer


def test_an_open_box_or_a_suffix_without_one_has_no_end() -> None:
    assert box_end(DYNASOR_PROBE_SUFFIX, "\\frac{1}{2") is None  # still inside the box
    assert box_end(DYNASOR_PROBE_SUFFIX, "") is None
    assert box_end(" The answer is", "42} and more}") is None  # nothing left open
    assert box_end("{a} then \\boxed{", "7}") == 2  # only the brace still open counts


def test_the_suffix_closes_an_open_think_block_first() -> None:
    assert probe_suffix_text(None, close_think=False) == DYNASOR_PROBE_SUFFIX
    assert probe_suffix_text(None, close_think=True) == THINK_CLOSE + DYNASOR_PROBE_SUFFIX
    assert probe_suffix_text(" So:", close_think=True) == THINK_CLOSE + " So:"
    assert probe_suffix_text("</think>\n\nSo:", close_think=True) == "</think>\n\nSo:"


def test_the_think_block_state_follows_the_last_tags() -> None:
    vocabulary = {"<think>": [7], "</think>": [8]}
    think = think_tokens(lambda text: vocabulary.get(text, [1, 2, 3]))
    assert think == (7, 8)
    assert think_block_open(think, [5, 7, 1, 2])  # opened, not closed
    assert think_block_open(think, [1, 2])  # not opened yet (the model opens it first)
    assert not think_block_open(think, [7, 1, 8, 2])  # closed: the answer is being written
    assert think_block_open(think, [7, 1, 8, 7, 3])  # opened again
    assert not think_block_open(None, [7, 1])  # no think block in this tokenizer
    # Tags that are several tokens are ordinary text: no think block.
    assert think_tokens(lambda text: [1, 2]) is None


@pytest.mark.parametrize("bad", [0, -1, True, 2.5, "20"])
def test_a_probe_budget_is_an_integer_of_at_least_one(bad: object) -> None:
    with pytest.raises(ValueError, match="max_tokens"):
        check_probe_tokens(bad)  # type: ignore[arg-type]
    check_probe_tokens(1)


def test_probe_stats_add_up_the_replies() -> None:
    stats = ProbeStats()
    stats.add(ProbeReply("4}", 10, prefill_tokens=30, decoded_tokens=2, seconds=0.5))
    stats.add(ProbeReply("", 12, unknown=True), cached_tokens=3)
    assert (stats.probes, stats.prefill_tokens, stats.cached_tokens, stats.decoded_tokens) == (
        2,
        30,
        3,
        2,
    )
    assert stats.seconds == 0.5


def test_max_tokens_defaults_to_as_far_as_the_context_allows() -> None:
    assert SamplingConfig().max_tokens is None
    assert SamplingConfig(max_tokens=64).max_tokens == 64
    with pytest.raises(ValueError, match="max_tokens"):
        SamplingConfig(max_tokens=0)


def test_a_model_probe_reply_is_unknown_when_the_model_said_nothing() -> None:
    started = time.perf_counter()
    reply = model_probe_reply(
        "204}", at_tokens=500, prefill_tokens=530, decoded_tokens=3, started=started
    )
    assert (reply.text, reply.at_tokens, reply.prefill_tokens, reply.decoded_tokens) == (
        "204}",
        500,
        530,
        3,
    )
    assert not reply.unknown and reply.answer is None and reply.seconds >= 0
    blank = model_probe_reply(
        " \n", at_tokens=500, prefill_tokens=530, decoded_tokens=20, started=0
    )
    assert blank.unknown
