"""What every LLM judge shares (``deepprune_lc.judges.llm``), and that both engines' judges use it.

The last test renders the same pairs through ``TransformersJudge`` and ``VLLMJudge`` (their real
tokenizer handling, on the tiny Qwen2 model, with and without a chat template) and checks they
produce the same ids, label tokens and prefill count. It needs deepprune-transformers and
deepprune-vllm (vLLM is imported to check engine arguments, which takes a few seconds, but no engine
starts).
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from deepprune_lc.core import PrefixPair
from deepprune_lc.judges import (
    ANSWER_CUE,
    DEFAULT_JUDGE_TEMPLATE,
    LLMJudgeSettings,
    distinct_prompts,
    judge_prefill_tokens,
    label_token_ids,
    yes_probability,
)

PAIR = PrefixPair(trace_a=0, trace_b=1, prefix_a="First we add 3 and 4.", prefix_b="So 7.")
PAIRS = [
    PAIR,
    PrefixPair(0, 2, "Then we check the result.", "Wait, we should verify the sum again."),
    PAIR,  # a repeat: computed, and counted, once
    PrefixPair(1, 2, "Since 6 times 7 is 42", "40 plus 2 equals 42, hence 42."),
]


def test_the_default_template_text_is_unchanged() -> None:
    # docs/benchmarks.md's judge calibration was measured with exactly this prompt.
    assert DEFAULT_JUDGE_TEMPLATE == (
        "Two reasoning traces for the same problem were stopped early.\n\n"
        "Trace A:\n{prefix_a}\n\n"
        "Trace B:\n{prefix_b}\n\n"
        "Will both traces reach the same final answer? Answer Yes or No."
    )
    assert ANSWER_CUE == "\nAnswer:"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"template": "no placeholders"},
            r"template\n.*must contain \{prefix_a\} and \{prefix_b\}",
        ),
        ({"template": "{prefix_a} {prefix_b} {other}"}, r"template\n.*double any other braces"),
        ({"template": "{prefix_a} {prefix_b} {"}, r"template\n.*str.format template"),
        ({"yes": "  "}, r"yes\n.*non-empty word"),
        ({"no": ""}, r"no\n.*at least 1 character"),
        ({"yes": "Same", "no": "Same"}, "yes and no must be different words"),
        ({"beam": 4}, r"beam\n.*Extra inputs are not permitted"),
    ],
)
def test_settings_errors_name_the_field(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        LLMJudgeSettings(**kwargs)


def test_settings_are_frozen_and_default_to_yes_no() -> None:
    settings = LLMJudgeSettings()
    assert (settings.template, settings.yes, settings.no) == (DEFAULT_JUDGE_TEMPLATE, "Yes", "No")
    with pytest.raises(ValidationError):
        settings.yes = "Sure"  # type: ignore[misc]


def test_judge_prompt_chat_and_plain() -> None:
    settings = LLMJudgeSettings(template="A: {prefix_a}\nB: {prefix_b}\nSame?")
    text = "A: > First we add 3 and 4.\nB: > So 7.\nSame?"  # each prefix quoted
    assert settings.judge_text(PAIR) == text
    assert settings.judge_prompt(PAIR, chat=True) == [{"role": "user", "content": text}]
    assert settings.judge_prompt(PAIR, chat=False) == text + "\nAnswer:"
    braces = LLMJudgeSettings(template="{{json}} {prefix_a} | {prefix_b}")
    assert braces.judge_text(PAIR) == "{json} > First we add 3 and 4. | > So 7."


@pytest.mark.parametrize(("yes", "no"), [(0.0, 0.0), (2.5, -1.0), (-3.0, 4.0), (30.0, -30.0)])
def test_yes_probability_is_the_softmax_over_the_two_labels(yes: float, no: float) -> None:
    expected = math.exp(yes) / (math.exp(yes) + math.exp(no))
    assert yes_probability(yes, no) == pytest.approx(expected, rel=1e-12)
    # From log-probabilities (logits minus one normaliser) the answer is the same.
    log_z = math.log(math.exp(yes) + math.exp(no) + math.exp(1.0))
    assert yes_probability(yes - log_z, no - log_z) == pytest.approx(expected, rel=1e-9)


def test_yes_probability_extremes() -> None:
    assert yes_probability(0.0, 0.0) == 0.5
    assert yes_probability(float("-inf"), float("-inf")) == 0.5  # neither label possible
    assert yes_probability(float("-inf"), -2.0) == 0.0
    assert yes_probability(-2.0, float("-inf")) == 1.0
    assert yes_probability(-1000.0, 0.0) == pytest.approx(0.0)
    assert yes_probability(1e6, -1e6) == 1.0  # no overflow


def test_prefill_counts_each_distinct_prompt_once() -> None:
    prompts = [[1, 2, 3], (4, 5), (1, 2, 3), [6]]
    assert distinct_prompts(prompts) == [(1, 2, 3), (4, 5), (6,)]
    assert judge_prefill_tokens(prompts) == 6
    assert judge_prefill_tokens([]) == 0


# -- on real tokenizers --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny Qwen2 model with its ChatML template, and a copy whose tokenizer has none."""
    testing = pytest.importorskip("deepprune_transformers.testing")
    chat = testing.build_tiny_qwen2(tmp_path_factory.mktemp("tiny-qwen2"))
    plain = tmp_path_factory.mktemp("tiny-qwen2-plain") / "model"
    shutil.copytree(chat, plain)
    (plain / "chat_template.jinja").unlink()
    return {"chat": chat, "plain": plain}


def test_label_tokens_are_the_first_token_of_each_word(tiny_dirs: dict[str, Path]) -> None:
    transformers = pytest.importorskip("transformers")
    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_dirs["chat"])
    settings = LLMJudgeSettings(yes="Therefore", no="However")
    yes_id, no_id = label_token_ids(tokenizer, settings)
    assert yes_id == tokenizer.encode("Therefore", add_special_tokens=False)[0]
    assert no_id == tokenizer.encode("However", add_special_tokens=False)[0]
    assert yes_id != no_id
    clash = LLMJudgeSettings(yes="Therefore", no="Therefore not")
    with pytest.raises(ValueError, match="start with the same token in tiny's tokenizer"):
        label_token_ids(tokenizer, clash, model_name="tiny")


@pytest.mark.parametrize("kind", ["chat", "plain"])
async def test_both_engines_render_and_count_judge_prompts_alike(
    tiny_dirs: dict[str, Path], kind: str
) -> None:
    tf = pytest.importorskip("deepprune_transformers")
    pytest.importorskip("vllm")
    from deepprune_vllm import VLLMJudge

    model = tiny_dirs[kind]
    transformers_judge = tf.TransformersJudge(
        model, tf.TransformersJudgeConfig(device="cpu", num_threads=1)
    )
    vllm_judge = VLLMJudge(str(model))  # checks engine arguments; starts no engine
    try:
        tf_ids = [transformers_judge.prompt_ids(pair) for pair in PAIRS]
        vllm_ids = [vllm_judge.prompt_ids(pair) for pair in PAIRS]
        assert tf_ids == vllm_ids
        assert transformers_judge.label_token_ids() == vllm_judge.label_token_ids()
        text = transformers_judge._tokenizer.decode(tf_ids[0])
        if kind == "chat":
            assert text.startswith("<|im_start|>user\nTwo reasoning traces")
            assert text.endswith("Answer Yes or No.<|im_end|>\n<|im_start|>assistant\n")
        else:
            assert text.startswith("Two reasoning traces") and text.endswith("Yes or No.\nAnswer:")
        scores = await transformers_judge.score(PAIRS)
        assert scores.prefill_tokens == judge_prefill_tokens(vllm_ids)
        assert scores.prefill_tokens == sum(map(len, vllm_ids)) - len(vllm_ids[0])  # the repeat
        assert scores.probabilities[0] == scores.probabilities[2]
        # The backends count prompts by the same rule too.
        backend = tf.TransformersBackend(model)
        for prompt in ("plain text", [{"role": "user", "content": "two plus two"}]):
            if kind == "plain" and not isinstance(prompt, str):
                with pytest.raises(ValueError, match="no chat template"):
                    vllm_judge.backend.count_prompt_tokens(prompt)
                with pytest.raises(ValueError, match="no chat template"):
                    backend.count_prompt_tokens(prompt)
                continue
            assert backend.count_prompt_tokens(prompt) == vllm_judge.backend.count_prompt_tokens(
                prompt
            )
    finally:
        transformers_judge.close()
