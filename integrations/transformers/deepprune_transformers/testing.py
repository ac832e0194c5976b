"""Tiny models built on the spot, for tests and benchmarks of real engines with no download.

``build_tiny_qwen2`` trains a byte-level BPE tokenizer on local text and saves a randomly initialised
Qwen2 causal LM beside it (hidden 64, 2 layers, 2 heads of size 32, which vLLM's CPU attention
accepts): a real model directory that transformers and vLLM load like any other, in about two
seconds. Its outputs are noise, but deterministic for a seed, which is what engine tests need.

``build_tiny_reasoner`` goes one step further for end-to-end runs, where traces should reach an
answer: it trains that model for a few seconds on chat transcripts of one question
(``REASONER_QUESTION``, "What is 6 times 7?"), each a shuffled chain of reasoning sentences ending in
``\\boxed{42}``. Sampled at temperature ~1 it then writes varied traces that mostly end with that
answer and an end-of-turn token, on that question and, less reliably, on any other prompt (the
standard LangChain suites ask "Hello"); greedy decoding is no longer stuck on one token, so
token-exact resume checks compare real sequences.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from pathlib import Path

__all__ = ["CHAT_TEMPLATE", "REASONER_QUESTION", "build_tiny_qwen2", "build_tiny_reasoner"]

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_DEFAULT_TEXT = (
    "First, let me think about the problem step by step. So we have two numbers. "
    "Then we add them and check the result. Wait, we should verify the sum again. "
    "Therefore the answer is \\boxed{42}. Since 6 times 7 is 42, the final answer is 42. "
    "However, let us consider another approach: 40 plus 2 equals 42, hence 42. "
)


def build_tiny_qwen2(
    directory: str | Path,
    *,
    texts: Iterable[str] | None = None,
    vocab_size: int = 512,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 2,
    max_position_embeddings: int = 4096,
    seed: int = 0,
) -> Path:
    """Write a tiny random Qwen2 model and its tokenizer to ``directory`` and return the path."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = list(texts) if texts is not None else [_DEFAULT_TEXT] * 50
    tokenizer.train_from_iterator(corpus, trainer)
    hf_tokenizer = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tokenizer,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
    )
    hf_tokenizer.chat_template = CHAT_TEMPLATE
    hf_tokenizer.save_pretrained(path)

    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=len(hf_tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_position_embeddings,
        eos_token_id=hf_tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=hf_tokenizer.convert_tokens_to_ids("<|endoftext|>"),  # type: ignore[arg-type]
        bos_token_id=None,
        tie_word_embeddings=True,
        dtype="float32",
    )
    model = Qwen2ForCausalLM(config)  # type: ignore[no-untyped-call]
    model.save_pretrained(path, safe_serialization=True)
    return path


#: The one question ``build_tiny_reasoner`` teaches its model to answer (with 42).
REASONER_QUESTION = "What is 6 times 7?"
_STEPS = (
    "First, let me think about the problem step by step.",
    "So we have two numbers.",
    "Then we add them and check the result.",
    "Wait, we should verify the sum again.",
    "Since 6 times 7 is 42, the product is 42.",
    "However, let us consider another approach: 40 plus 2 equals 42, hence 42.",
)


def build_tiny_reasoner(directory: str | Path, *, steps: int = 200, seed: int = 0) -> Path:
    """Write the trained tiny model (and its tokenizer) to ``directory``; about 5 s on 2 cores."""
    import torch

    # One thread: the model is far too small to gain from more, and on a shared 2-core machine
    # torch's thread pool under contention made training 10x slower (78 s against 9 s).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train(directory, steps=steps, seed=seed)
    finally:
        torch.set_num_threads(threads)


def _train(directory: str | Path, *, steps: int, seed: int) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = build_tiny_qwen2(directory, seed=seed)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    rng = random.Random(seed)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": REASONER_QUESTION}], tokenize=False, add_generation_prompt=True
    )
    prompt_ids = tokenizer.encode(prompt, add_special_tokens=False)
    examples = []
    for _ in range(64):
        body = " ".join(rng.sample(_STEPS, k=rng.randint(2, 5)))
        answer = f"{body} Therefore the answer is \\boxed{{42}}.<|im_end|>"
        examples.append(tokenizer.encode(answer, add_special_tokens=False))

    torch.manual_seed(seed)
    # 3e-3: at 1e-2 the loss stalled well above the shuffled chains' floor (0.21 against 0.11
    # after 200 steps with transformers 5.19), and the greedy box came out as "{{{{{c: 42".
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    batch_size = 8
    for _ in range(steps):
        batch = rng.sample(examples, batch_size)
        length = len(prompt_ids) + max(len(b) for b in batch)
        ids = torch.full((batch_size, length), tokenizer.pad_token_id)
        labels = torch.full((batch_size, length), -100)
        for row, answer_ids in enumerate(batch):
            sequence = prompt_ids + answer_ids
            ids[row, : len(sequence)] = torch.tensor(sequence)
            labels[row, len(prompt_ids) : len(sequence)] = torch.tensor(answer_ids)
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()  # type: ignore[no-untyped-call]
    model.save_pretrained(path, safe_serialization=True)
    return Path(path)
