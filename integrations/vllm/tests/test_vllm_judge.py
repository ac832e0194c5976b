"""``VLLMJudge`` on the session's engine (a judge and a backend with equal engine args share it)."""

from __future__ import annotations

from pathlib import Path

import pytest
from deepprune_vllm import VLLMBackend, VLLMJudge
from vllm_helpers import ENGINE_KWARGS, QUESTION

from deepprune_lc import DeepPrune, PrefixPair, PruningConfig, SamplingConfig, TokensPrefix
from deepprune_lc.judges import yes_probability as _yes_probability
from deepprune_lc.runtime import resolve_judge
from deepprune_lc.runtime.loop import run_sync

PAIRS = [
    PrefixPair(0, 1, "First, let me think.", "First, let me think."),
    PrefixPair(0, 2, "So we have two numbers.", "Wait, 40 plus 2 equals 42."),
    PrefixPair(1, 2, "Then we add them.", "Since 6 times 7 is 42"),
]


def test_judge_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="prefix_a"):
        VLLMJudge("/nonexistent", template="no placeholders")
    with pytest.raises(ValueError, match="different"):
        VLLMJudge("/nonexistent", yes="Yes", no="Yes")
    with pytest.raises(ValueError, match="unknown vLLM engine"):
        VLLMJudge("/nonexistent", not_an_arg=1)


def test_yes_probability_is_stable() -> None:
    assert _yes_probability(0.0, 0.0) == 0.5
    assert _yes_probability(-1000.0, 0.0) == pytest.approx(0.0)
    assert _yes_probability(0.0, -1000.0) == pytest.approx(1.0)
    assert _yes_probability(float("-inf"), float("-inf")) == 0.5


async def test_judge_scores_pairs_on_the_shared_engine(
    tiny_model_dir: Path, vllm_backend: VLLMBackend
) -> None:
    spec = f"vllm:{tiny_model_dir}?enforce_eager=true&dtype=float32&max_model_len=1024"
    judge = resolve_judge(spec)
    assert isinstance(judge, VLLMJudge)
    assert judge.backend.engine is vllm_backend.engine
    bridged = await judge.score(PAIRS)  # from pytest's loop

    async def on_engine_loop() -> object:
        return await judge.score(PAIRS)

    direct = run_sync(on_engine_loop())
    assert all(0.0 < p < 1.0 for p in bridged.probabilities)  # strictly inside (suite: [0, 1])
    assert bridged.probabilities == pytest.approx(direct.probabilities)  # type: ignore[attr-defined]
    assert bridged.prefill_tokens > 0
    assert vllm_backend.live_requests() == set()


async def test_deepprune_with_the_vllm_judge(
    tiny_model_dir: Path, vllm_backend: VLLMBackend
) -> None:
    judge = VLLMJudge(str(tiny_model_dir), **ENGINE_KWARGS)
    result = await DeepPrune(
        vllm_backend,
        judge,
        PruningConfig(n_traces=4, prefix=TokensPrefix(k=12), finalists=2),
        sampling=SamplingConfig(temperature=1.0, top_p=1.0, max_tokens=192),
    ).run([{"role": "user", "content": QUESTION}])
    assert result.totals.judge_calls >= 1 and result.totals.judge_prefill_tokens > 0
    assert result.answer == "42"
