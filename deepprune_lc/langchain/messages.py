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


def messages_to_prompt(messages: Sequence[BaseMessage]) -> list[dict[str, str]]:
    """LangChain messages as chat dicts; backends apply the model's chat template."""
    roles = {"human": "user", "ai": "assistant", "system": "system"}
    prompt = []
    for message in messages:
        role = roles.get(message.type)
        if role is None:
            raise NotImplementedError(
                f"DeepPruneReasoner cannot take {message.type!r} messages: it has no tool calling"
            )
        prompt.append({"role": role, "content": message.text})
    return prompt
