"""A tiny Qwen2 that has learnt to answer one question, built on the spot (no download).

``build_tiny_qwen2`` (from deepprune-transformers) gives a random model whose text is noise. For
end-to-end runs the traces should reach an answer, so ``build_tiny_reasoner`` trains it for a few
seconds on chat transcripts of one question ("What is 6 times 7?"), each a shuffled chain of
reasoning sentences ending in ``\\boxed{42}``. Sampled at temperature ~1 it then writes varied
traces that mostly end with that answer and an end-of-turn token; greedy decoding is no longer
stuck on one token, so token-exact resume checks compare real sequences.
"""

from __future__ import annotations

import random
from pathlib import Path

QUESTION = "What is 6 times 7?"
#: Engine arguments of the test session's engine (spec strings with the same arguments share it).
ENGINE_KWARGS = {"enforce_eager": True, "dtype": "float32", "max_model_len": 1024}
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
    from deepprune_transformers.testing import build_tiny_qwen2
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = build_tiny_qwen2(directory, seed=seed)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    rng = random.Random(seed)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": QUESTION}], tokenize=False, add_generation_prompt=True
    )
    prompt_ids = tokenizer.encode(prompt, add_special_tokens=False)
    examples = []
    for _ in range(64):
        body = " ".join(rng.sample(_STEPS, k=rng.randint(2, 5)))
        answer = f"{body} Therefore the answer is \\boxed{{42}}.<|im_end|>"
        examples.append(tokenizer.encode(answer, add_special_tokens=False))

    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
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
    model.eval()
    model.save_pretrained(path, safe_serialization=True)
    return Path(path)
