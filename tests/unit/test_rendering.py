"""Prompt -> ids (``deepprune_lc.backends.rendering``) on real Hugging Face tokenizers.

Two tokenizers: the tiny Qwen2 one the engine tests use (no BOS, ChatML template), and one built
here whose plain encoding adds a BOS and whose chat template writes it itself, so the rule "text
gets the special tokens, a rendered chat does not get them twice" is visible in the ids.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from deepprune_lc.backends import (
    PromptRenderer,
    has_chat_template,
    prompt_cache_key,
    render_prompt_ids,
)

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "what is two plus two"},
]
BOS_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}[assistant]{% if thinking %} <think>{% endif %}{% endif %}"
)


@pytest.fixture(scope="module")
def bos_tokenizer() -> Any:
    """A word-level tokenizer that adds ``<s>`` to plain text and whose template writes it too."""
    words = "what is two plus two be brief . [system] [user] [assistant] <think> plain text"
    vocab = {"<unk>": 0, "<s>": 1}
    for word in words.split():
        vocab.setdefault(word, len(vocab))
    core = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    core.normalizer = tokenizers.normalizers.Lowercase()
    core.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    core.post_processor = tokenizers.processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", 1)]
    )
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<s>", unk_token="<unk>"
    )
    tokenizer.chat_template = BOS_TEMPLATE
    return tokenizer


@pytest.fixture(scope="module")
def qwen_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Any:
    testing = pytest.importorskip("deepprune_transformers.testing")
    path = testing.build_tiny_qwen2(tmp_path_factory.mktemp("tiny-qwen2"))
    return transformers.AutoTokenizer.from_pretrained(path)


def test_plain_text_is_encoded_raw_with_the_special_tokens(bos_tokenizer: Any) -> None:
    ids = render_prompt_ids(bos_tokenizer, "plain text")
    assert ids == tuple(bos_tokenizer.encode("plain text"))  # what /v1/completions submits
    assert ids[0] == bos_tokenizer.bos_token_id and len(ids) == 3  # not wrapped as a user turn


def test_chat_goes_through_the_template_and_gets_bos_once(bos_tokenizer: Any) -> None:
    ids = render_prompt_ids(bos_tokenizer, CHAT)
    text = bos_tokenizer.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    assert ids == tuple(bos_tokenizer.encode(text, add_special_tokens=False))
    assert ids.count(bos_tokenizer.bos_token_id) == 1  # the template's, not a second one
    assert bos_tokenizer.convert_ids_to_tokens(list(ids[-1:])) == ["[assistant]"]
    # The same ids transformers' own tokenize=True path (and vLLM's chat server) produce.
    native = bos_tokenizer.apply_chat_template(
        CHAT, tokenize=True, add_generation_prompt=True, return_dict=False
    )
    assert ids == tuple(native)


def test_chat_template_kwargs_reach_the_template(bos_tokenizer: Any) -> None:
    plain = render_prompt_ids(bos_tokenizer, CHAT)
    thinking = render_prompt_ids(bos_tokenizer, CHAT, chat_template_kwargs={"thinking": True})
    assert thinking[:-1] == plain
    assert bos_tokenizer.convert_ids_to_tokens(list(thinking[-1:])) == ["<think>"]


def test_the_tiny_qwen2_tokenizer(qwen_tokenizer: Any) -> None:
    ids = render_prompt_ids(qwen_tokenizer, CHAT)
    assert qwen_tokenizer.decode(list(ids)) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nwhat is two plus two<|im_end|>\n<|im_start|>assistant\n"
    )
    assert render_prompt_ids(qwen_tokenizer, "plain text") == tuple(
        qwen_tokenizer("plain text")["input_ids"]
    )


def test_chat_without_a_template_and_empty_prompts_are_errors(qwen_tokenizer: Any) -> None:
    untemplated = transformers.PreTrainedTokenizerFast(
        tokenizer_object=qwen_tokenizer.backend_tokenizer
    )
    assert not has_chat_template(untemplated) and has_chat_template(qwen_tokenizer)
    with pytest.raises(ValueError, match="tiny's tokenizer has no chat template; pass the prompt"):
        render_prompt_ids(untemplated, CHAT, model_name="tiny")
    assert render_prompt_ids(untemplated, "plain text") == render_prompt_ids(
        qwen_tokenizer, "plain text"
    )
    with pytest.raises(ValueError, match="no tokens"):
        render_prompt_ids(qwen_tokenizer, "")  # this tokenizer adds no BOS: nothing to decode from


def test_cache_keys() -> None:
    same = [{"content": "what is two plus two", "role": "user"}]
    assert prompt_cache_key([CHAT[1]]) == prompt_cache_key(same)  # key order does not matter
    named = [{**CHAT[1], "name": "alice"}]
    assert prompt_cache_key(named) != prompt_cache_key([CHAT[1]])  # every key counts
    assert prompt_cache_key("x") != prompt_cache_key([{"role": "user", "content": "x"}])
    multipart: list[dict[str, Any]] = [{"role": "user", "content": [{"type": "text", "text": "x"}]}]
    assert hash(prompt_cache_key(multipart))  # nested content is frozen, not rejected


def test_renderer_caches_lru_and_loads_the_tokenizer_lazily(bos_tokenizer: Any) -> None:
    loads: list[int] = []

    def tokenizer() -> Any:
        loads.append(1)
        return bos_tokenizer

    renderer = PromptRenderer(tokenizer, cache_size=2, model_name="bos")
    assert not loads  # nothing rendered yet: the tokenizer is not asked for
    first = renderer.ids(CHAT)
    assert renderer.ids([dict(reversed(list(m.items()))) for m in CHAT]) is first  # a hit
    assert renderer.count(CHAT) == len(first) and renderer.misses == 1 and len(loads) == 1
    renderer.ids("plain text")
    renderer.ids("what is two")  # evicts the least recently used: CHAT
    assert len(renderer) == 2
    renderer.ids("plain text")
    assert renderer.misses == 3
    renderer.ids(CHAT)
    assert renderer.misses == 4  # CHAT had been evicted
    renderer.ids("be brief", cache=False)
    assert len(renderer) == 2 and renderer.misses == 5  # one-off prompts are not kept
    renderer.clear()
    assert len(renderer) == 0
    with pytest.raises(ValueError, match="cache_size"):
        PromptRenderer(tokenizer, cache_size=-1)


def test_renderer_from_many_threads(qwen_tokenizer: Any) -> None:
    renderer = PromptRenderer(lambda: qwen_tokenizer, cache_size=4)
    prompts: list[Any] = [CHAT, "plain text", [CHAT[1]], "two plus two", "what is"]
    expected = [render_prompt_ids(qwen_tokenizer, p) for p in prompts]
    failures: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(50):
                for prompt, ids in zip(prompts, expected, strict=True):
                    assert renderer.ids(prompt) == ids
        except BaseException as exc:  # reported below, from the main thread
            failures.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures and len(renderer) == 4


def test_the_transformers_backend_counts_through_it(tmp_path: Path, qwen_tokenizer: Any) -> None:
    backend_module = pytest.importorskip("deepprune_transformers")
    # Counting needs only the tokenizer: the (absent) model is never loaded.
    backend = backend_module.TransformersBackend(tmp_path, tokenizer=qwen_tokenizer)
    assert backend.count_prompt_tokens(CHAT) == len(render_prompt_ids(qwen_tokenizer, CHAT))
    assert backend.count_prompt_tokens("plain text") == len(qwen_tokenizer.encode("plain text"))
