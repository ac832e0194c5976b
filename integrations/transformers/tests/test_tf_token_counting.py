"""LangChain's token counting on the transformers backend: the model's own tokenizer, offline.

``get_num_tokens``, ``get_token_ids`` and ``get_num_tokens_from_messages`` count what the engine
would prefill (``deepprune_lc.backends.rendering``: plain text with the special tokens, messages
through the chat template with the generation prompt), from the model's local files; LangChain's
default would download GPT-2's tokenizer. The tiny reasoner is the suite's shared model.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from deepprune_transformers import TransformersBackend
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_core.messages.utils import trim_messages
from transformers import AutoTokenizer

from deepprune_lc import DeepPruneReasoner
from deepprune_lc.core import PromptTokenIds

_LOCAL = (None, "127.0.0.1", "::1", "localhost")


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[object]]:
    """Fail any connection or name lookup that leaves this machine; yields what was attempted."""
    attempts: list[object] = []
    connect, getaddrinfo = socket.socket.connect, socket.getaddrinfo

    def guarded_connect(self: socket.socket, address: Any) -> Any:
        host = address[0] if isinstance(address, tuple) else address
        if self.family in (socket.AF_INET, socket.AF_INET6) and host not in _LOCAL:
            attempts.append(address)
            raise OSError(f"network disabled in this test: connect to {address!r}")
        return connect(self, address)

    def guarded_getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host not in _LOCAL:
            attempts.append(host)
            raise OSError(f"network disabled in this test: lookup of {host!r}")
        return getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", guarded_connect)
    monkeypatch.setattr(socket, "getaddrinfo", guarded_getaddrinfo)
    yield attempts
    assert attempts == [], f"token counting reached for the network: {attempts}"


@pytest.fixture
def model(tiny_reasoner_dir: Path) -> DeepPruneReasoner:
    return DeepPruneReasoner(backend=f"transformers:{tiny_reasoner_dir}")


@pytest.fixture(scope="module")
def tokenizer(tiny_reasoner_dir: Path) -> Any:
    return AutoTokenizer.from_pretrained(tiny_reasoner_dir)


HISTORY: list[BaseMessage] = [
    SystemMessage("You answer arithmetic questions."),
    *[
        message
        for turn in range(6)
        for message in (
            HumanMessage(f"What is {turn} times 7? Think step by step."),
            AIMessage(
                f"We multiply {turn} by 7, one step at a time. " * 6 + f"\\boxed{{{turn * 7}}}"
            ),
        )
    ],
    HumanMessage("What is 6 times 7? Think step by step."),
]


def test_the_backend_exposes_its_prompt_ids(model: DeepPruneReasoner) -> None:
    backend = model._counting_backend()
    assert isinstance(backend, TransformersBackend) and isinstance(backend, PromptTokenIds)


def test_text_counts_are_the_models_own_tokens(
    model: DeepPruneReasoner, tokenizer: Any, no_network: list[object]
) -> None:
    text = "What is 6 times 7? Think step by step."
    expected = tokenizer.encode(text, add_special_tokens=True)
    assert model.get_token_ids(text) == expected
    assert model.get_num_tokens(text) == len(expected) > 0


def test_message_counts_are_the_rendered_chat_prompt(
    model: DeepPruneReasoner, tokenizer: Any, no_network: list[object]
) -> None:
    rendered = tokenizer.apply_chat_template(
        [
            {"role": "system", "content": HISTORY[0].text},
            {"role": "user", "content": HISTORY[1].text},
        ],
        tokenize=False,
        add_generation_prompt=True,
    )
    expected = len(tokenizer.encode(rendered, add_special_tokens=False))
    assert model.get_num_tokens_from_messages(HISTORY[:2]) == expected
    # The template's role markers and generation prompt count, not only the contents.
    contents = sum(len(tokenizer.encode(m.text, add_special_tokens=False)) for m in HISTORY[:2])
    assert expected > contents


def test_trim_messages_trims_on_the_engines_tokenizer(
    model: DeepPruneReasoner, no_network: list[object]
) -> None:
    assert model.get_num_tokens_from_messages(HISTORY) > 200
    trimmed = trim_messages(
        HISTORY, max_tokens=200, token_counter=model, strategy="last", include_system=True
    )
    assert 1 < len(trimmed) < len(HISTORY)
    assert trimmed[0] == HISTORY[0] and trimmed[-1] == HISTORY[-1]
    assert model.get_num_tokens_from_messages(trimmed) <= 200
