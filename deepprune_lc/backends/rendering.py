"""Prompt -> token ids, with one behaviour for every engine adapter and one cache.

Why one module: the ids a backend prefills are what its usage report counts, what a parked trace is
resumed after, and what a judge reads. Two engines that render one prompt differently would count
(and decode from) different tokens. The rule is the one vLLM's OpenAI-compatible server applies,
so a prompt costs the same tokens here as when it is sent to such a server:

* **chat messages** go through the tokenizer's chat template with ``add_generation_prompt=True``
  (and the adapter's ``chat_template_kwargs``, e.g. ``{"enable_thinking": True}``), rendered to text
  and encoded *without* added special tokens: the template writes BOS and the role markers itself
  (``/v1/chat/completions``, whose ``add_special_tokens`` defaults to False). A tokenizer without a
  chat template is an error that says to send plain text, not a silent fallback;
* **plain text** is encoded as it is, *with* the tokenizer's special tokens (BOS where the model
  has one), and is not wrapped as a user turn (``/v1/completions``, ``add_special_tokens=True``):
  plain text is how a caller sends a base model or a prompt already formatted by hand.

A prompt that renders to no token is an error (no engine can decode from nothing).

``PromptRenderer`` adds a thread-safe LRU cache keyed on a hashable form of the prompt: N traces of
one question, and every resume of them, tokenise it once. The tokenizer is duck-typed
(``PromptTokenizer``: ``apply_chat_template`` + ``encode``, as Hugging Face tokenizers and vLLM's
tokenizer wrappers have), so this module imports no tokenizer library.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any, Protocol

from deepprune_lc.core.ports import Prompt

__all__ = [
    "DEFAULT_PROMPT_CACHE_SIZE",
    "PromptRenderer",
    "PromptTokenizer",
    "has_chat_template",
    "prompt_cache_key",
    "render_prompt_ids",
]

#: Prompts a ``PromptRenderer`` keeps by default (a run holds one question; a server a few hundred).
DEFAULT_PROMPT_CACHE_SIZE = 1024


class PromptTokenizer(Protocol):
    """What rendering needs from a tokenizer (Hugging Face's and vLLM's have both methods)."""

    def apply_chat_template(
        self, conversation: list[dict[str, Any]], /, **kwargs: Any
    ) -> Any:  # pragma: no cover - a protocol
        """Render chat messages; called with ``tokenize=False, add_generation_prompt=True``."""
        ...

    def encode(self, text: str, /, **kwargs: Any) -> Sequence[int]:  # pragma: no cover
        """Token ids of ``text``; called with ``add_special_tokens`` set explicitly."""
        ...


def has_chat_template(tokenizer: object) -> bool:
    """Whether the tokenizer carries a chat template (chat prompts need one)."""
    return bool(getattr(tokenizer, "chat_template", None))


def render_prompt_ids(
    tokenizer: PromptTokenizer,
    prompt: Prompt,
    *,
    chat_template_kwargs: Mapping[str, Any] | None = None,
    model_name: str = "the model",
) -> tuple[int, ...]:
    """The token ids an engine prefills for ``prompt`` (the rule in the module docstring).

    ``ValueError`` for chat messages when the tokenizer has no chat template, and for a prompt that
    renders to no tokens; ``model_name`` names the model in those messages.
    """
    if isinstance(prompt, str):
        ids = tokenizer.encode(prompt, add_special_tokens=True)
    else:
        if not has_chat_template(tokenizer):
            raise ValueError(
                f"prompt: {model_name}'s tokenizer has no chat template; pass the prompt as plain "
                "text instead of chat messages"
            )
        text = tokenizer.apply_chat_template(
            [dict(message) for message in prompt],
            tokenize=False,
            add_generation_prompt=True,
            **dict(chat_template_kwargs or {}),
        )
        if not isinstance(text, str):
            raise TypeError(
                f"apply_chat_template(tokenize=False) returned {type(text).__name__}, not text"
            )
        # The template wrote the special tokens itself; adding them again would double BOS.
        ids = tokenizer.encode(text, add_special_tokens=False)
    result = tuple(int(i) for i in ids)
    if not result:
        raise ValueError("prompt: renders to no tokens")
    return result


def prompt_cache_key(prompt: Prompt) -> Hashable:
    """A hashable form of a prompt: equal prompts, equal keys; text and chat never collide.

    Messages are compared by every key they hold (not only role and content: a ``name`` or a tool
    call changes what the template renders), in any key order. Nested lists and dicts (multi-part
    content) are frozen recursively.
    """
    if isinstance(prompt, str):
        return prompt
    return tuple(_freeze(dict(message)) for message in prompt)


def _freeze(value: object) -> Hashable:
    if isinstance(value, Mapping):
        return ("{}", tuple(sorted((str(k), _freeze(v)) for k, v in value.items())))
    if isinstance(value, list | tuple):
        return ("[]", tuple(_freeze(v) for v in value))
    if isinstance(value, Hashable):
        return value
    return ("repr", repr(value))


class PromptRenderer:
    """``render_prompt_ids`` for one adapter's tokenizer, with a thread-safe LRU cache.

    ``tokenizer`` is a zero-argument callable returning the tokenizer, called only on a cache miss:
    an adapter can load its tokenizer lazily, or hand over a different object with the same files
    once its engine runs (vLLM's own tokenizer replaces the one loaded before start-up), and the
    cached ids stay valid. Safe from several threads and event loops at once.
    """

    def __init__(
        self,
        tokenizer: Callable[[], PromptTokenizer],
        *,
        chat_template_kwargs: Mapping[str, Any] | None = None,
        cache_size: int = DEFAULT_PROMPT_CACHE_SIZE,
        model_name: str = "the model",
    ) -> None:
        if isinstance(cache_size, bool) or not isinstance(cache_size, int) or cache_size < 0:
            raise ValueError(f"cache_size: expected an integer >= 0, got {cache_size!r}")
        self._tokenizer = tokenizer
        self.chat_template_kwargs: dict[str, Any] = dict(chat_template_kwargs or {})
        self.cache_size = cache_size
        self.model_name = model_name
        self._cache: OrderedDict[Hashable, tuple[int, ...]] = OrderedDict()
        self._lock = threading.Lock()
        #: Renders that missed the cache (tests and benchmarks read it).
        self.misses = 0

    def ids(self, prompt: Prompt, *, cache: bool = True) -> tuple[int, ...]:
        """The prompt's token ids; ``cache=False`` for one-off prompts that would only evict."""
        if not cache or self.cache_size == 0:
            return self._render(prompt)
        key = prompt_cache_key(prompt)
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                return cached
        ids = self._render(prompt)  # outside the lock: a miss must not stall other threads' hits
        with self._lock:
            self._cache[key] = ids
            self._cache.move_to_end(key)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return ids

    def count(self, prompt: Prompt) -> int:
        """Tokens the prompt occupies once rendered (what ``count_prompt_tokens`` reports)."""
        return len(self.ids(prompt))

    def clear(self) -> None:
        """Forget every cached prompt (after the tokenizer itself changed)."""
        with self._lock:
            self._cache.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._cache)

    def _render(self, prompt: Prompt) -> tuple[int, ...]:
        with self._lock:
            self.misses += 1
        return render_prompt_ids(
            self._tokenizer(),
            prompt,
            chat_template_kwargs=self.chat_template_kwargs,
            model_name=self.model_name,
        )
