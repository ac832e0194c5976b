"""Message conversion: LangChain messages to the chat prompt backends take, and thinking split off."""

from __future__ import annotations

from collections.abc import Sequence

from langchain_core.messages import BaseMessage

__all__ = ["messages_to_prompt", "split_thinking"]


def split_thinking(text: str) -> tuple[str, str | None]:
    """(final response, thinking) for models that think inside ``<think>...</think>``."""
    if "</think>" not in text:
        return text, None
    head, _, tail = text.rpartition("</think>")
    thinking = head.split("<think>", 1)[-1]
    return tail.strip(), thinking.strip()


#: Content blocks that carry no input for the model: an earlier answer's reasoning (what
#: ``message.text`` leaves out too) and the tool calls an AI message in the history made.
_SKIPPED_BLOCKS = frozenset({"reasoning", "thinking", "tool_use", "tool_call"})


def messages_to_prompt(messages: Sequence[BaseMessage]) -> list[dict[str, str]]:
    """LangChain messages as chat dicts; backends apply the model's chat template.

    The reasoner is text-only: a content block that is not text (an image, audio, a file, ...)
    raises ``ValueError`` naming it, as ChatOllama does for blocks it cannot send, rather than being
    dropped, which would answer a different question than the one asked.
    """
    roles = {"human": "user", "ai": "assistant", "system": "system"}
    prompt = []
    for position, message in enumerate(messages):
        role = roles.get(message.type)
        if role is None:
            raise NotImplementedError(
                f"DeepPruneReasoner cannot take {message.type!r} messages: it has no tool calling"
            )
        _check_text_only(message, position)
        prompt.append({"role": role, "content": message.text})
    return prompt


def _check_text_only(message: BaseMessage, position: int) -> None:
    """Raise ``ValueError`` for the first content block a text-only model cannot read."""
    if isinstance(message.content, str):
        return
    for block in message.content:
        if isinstance(block, str):
            continue
        kind = block.get("type") if isinstance(block, dict) else type(block).__name__
        if kind == "text" or kind in _SKIPPED_BLOCKS:
            continue
        raise ValueError(
            f"DeepPruneReasoner is text-only: message {position} ({message.type}) has a "
            f"{kind!r} content block it cannot read. Send text only (for example a description "
            "of the image or the file's text), or use a model that takes this input for it."
        )
