"""Message content the reasoner cannot read is refused with an error that says so.

An image beside text used to be dropped without a word (the traces then answered the text alone),
and an image-only message failed with "every message is empty".
"""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

from deepprune_lc.demo import load_demo_pool
from deepprune_lc.langchain import DeepPruneReasoner
from deepprune_lc.langchain.messages import messages_to_prompt

BAKERY_PROBLEM = load_demo_pool().by_id("demo-bakery")
BAKERY = BAKERY_PROBLEM.problem
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4nGNgYGD4DwABBAEAwS2OUAAAAABJRU5ErkJggg=="

BLOCKS: dict[str, dict[str, Any]] = {
    "image": {"type": "image", "base64": PNG, "mime_type": "image/png"},
    "image_url": {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
    "audio": {"type": "audio", "base64": "AAAA", "mime_type": "audio/wav"},
    "input_audio": {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
    "file": {"type": "file", "base64": "JVBERi0=", "mime_type": "application/pdf"},
}


@pytest.mark.parametrize("kind", sorted(BLOCKS))
def test_a_non_text_block_beside_text_is_refused_naming_it(kind: str) -> None:
    message = HumanMessage(content=[{"type": "text", "text": BAKERY}, BLOCKS[kind]])
    with pytest.raises(ValueError, match=f"text-only: message 0 \\(human\\) has a '{kind}'"):
        messages_to_prompt([message])


def test_an_image_only_message_gets_the_same_error_from_the_model() -> None:
    model = DeepPruneReasoner(backend="replay:demo")
    with pytest.raises(ValueError, match="text-only") as info:
        model.invoke([HumanMessage(content=[BLOCKS["image"]])])
    assert "every message is empty" not in str(info.value)
    with pytest.raises(ValueError, match="'image' content block"):
        model.invoke([SystemMessage("Be brief."), HumanMessage(content=[BAKERY, BLOCKS["image"]])])


async def test_the_async_path_refuses_it_too() -> None:
    model = DeepPruneReasoner(backend="replay:demo")
    with pytest.raises(ValueError, match="message 1 \\(human\\) has a 'image_url'"):
        await model.ainvoke(
            [SystemMessage("Be brief."), HumanMessage(content=[BAKERY, BLOCKS["image_url"]])]
        )


def test_text_blocks_strings_and_earlier_reasoning_are_read_as_text() -> None:
    prompt = messages_to_prompt(
        [
            HumanMessage(content=[{"type": "text", "text": "How many "}, "muffins?"]),
            AIMessage(
                content=[
                    {"type": "reasoning", "reasoning": "count them"},
                    {"type": "text", "text": "24."},
                ]
            ),
            HumanMessage(BAKERY),
        ]
    )
    assert prompt == [
        {"role": "user", "content": "How many muffins?"},
        {"role": "assistant", "content": "24."},
        {"role": "user", "content": BAKERY},
    ]
    answer = DeepPruneReasoner(backend="replay:demo").invoke(
        [HumanMessage(content=[{"type": "text", "text": BAKERY}])]
    )
    assert answer.text in {t.text for t in BAKERY_PROBLEM.traces}  # it read the question
