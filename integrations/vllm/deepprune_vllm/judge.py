"""``VLLMJudge``: a model on vLLM reads two trace prefixes and says whether they end alike.

DeepPrune's judge is an LLM fine-tuned to predict, from two prefixes, whether two traces reach the
same final answer (the paper fine-tunes Qwen3-4B-Instruct). This adapter runs any such model on a
shared vLLM engine. What it shares with every LLM judge (``deepprune_lc.judges.llm``): every pair
becomes one prompt (``LLMJudgeSettings.judge_prompt``, rendered to ids by the rule every backend
uses), the score is P(yes) renormalised over {yes, no} (``yes_probability``) and ``prefill_tokens``
counts the distinct prompts' tokens (``judge_prefill_tokens``). What is vLLM's own: the engine
decodes a single token with greedy sampling and reports the raw log-probabilities of exactly the two
label tokens (``SamplingParams.logprob_token_ids``), whatever token is sampled; all distinct prompts
of a batch run concurrently, so the engine batches them.

The default template is ours, not the paper's: pass the one your judge model was trained with.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Mapping, Sequence
from typing import Any

from deepprune_lc.backends import has_chat_template
from deepprune_lc.core import JudgeScores, PrefixPair
from deepprune_lc.judges import (
    DEFAULT_JUDGE_TEMPLATE,
    LLMJudgeSettings,
    distinct_prompts,
    judge_prefill_tokens,
    label_token_ids,
    special_token_strings,
    yes_probability,
)
from deepprune_vllm.backend import VLLMBackend
from deepprune_vllm.engine import engine_failures

__all__ = ["DEFAULT_JUDGE_TEMPLATE", "VLLMJudge"]


_batches = itertools.count()


class VLLMJudge:
    """Scores prefix pairs with a judge model served by a (shared) vLLM engine.

    Engine arguments work as for ``VLLMBackend``; a judge and a backend with equal engine
    arguments share one engine. ``template``, ``yes`` and ``no`` are checked now
    (``LLMJudgeSettings``); ``yes`` / ``no`` are the answer words whose first tokens are compared.
    """

    def __init__(
        self,
        model: str,
        *,
        template: str = DEFAULT_JUDGE_TEMPLATE,
        yes: str = "Yes",
        no: str = "No",
        engine_args: Mapping[str, Any] | None = None,
        chat_template_kwargs: Mapping[str, Any] | None = None,
        **engine_kwargs: Any,
    ) -> None:
        self.settings = LLMJudgeSettings(template=template, yes=yes, no=no)
        self.backend = VLLMBackend(
            model,
            engine_args=engine_args,
            chat_template_kwargs=chat_template_kwargs,
            **engine_kwargs,
        )
        self.model_name = model
        self._label_ids: tuple[int, int] | None = None

    def __repr__(self) -> str:
        return f"VLLMJudge({self.backend.model!r})"

    @property
    def template(self) -> str:
        return self.settings.template

    @property
    def yes(self) -> str:
        return self.settings.yes

    @property
    def no(self) -> str:
        return self.settings.no

    async def score(self, pairs: Sequence[PrefixPair]) -> JudgeScores:
        """P(same final answer) per pair; any loop (bridged to the engine loop when needed)."""
        if not pairs:
            return JudgeScores([], prefill_tokens=0)
        engine = self.backend.engine
        if engine.on_loop():
            return await self._score(pairs)
        return await asyncio.wrap_future(
            asyncio.run_coroutine_threadsafe(self._score(pairs), engine.loop)
        )

    def label_token_ids(self) -> tuple[int, int]:
        """The first token of ``yes`` and of ``no`` (they must differ)."""
        if self._label_ids is None:
            self._label_ids = label_token_ids(
                self.backend.tokenizer, self.settings, model_name=self.model_name
            )
        return self._label_ids

    def prompt_ids(self, pair: PrefixPair) -> list[int]:
        """Token ids of the judge prompt for one pair, as the engine reads them (not cached)."""
        tokenizer = self.backend.tokenizer
        prompt = self.settings.judge_prompt(
            pair,
            chat=has_chat_template(tokenizer),
            special_tokens=special_token_strings(tokenizer),
        )
        return self.backend.prompt_token_ids(prompt, cache=False)

    async def _score(self, pairs: Sequence[PrefixPair]) -> JudgeScores:
        from vllm import SamplingParams

        engine = await self.backend.engine.engine()
        yes_id, no_id = self.label_token_ids()
        params = SamplingParams(
            max_tokens=1, temperature=0.0, logprob_token_ids=[yes_id, no_id], detokenize=False
        )
        prompts = [tuple(self.prompt_ids(pair)) for pair in pairs]
        distinct = distinct_prompts(prompts)
        batch = next(_batches)

        async def one(i: int, ids: tuple[int, ...]) -> float:
            final = None
            request_id = f"judge-{batch}-{i}"
            with engine_failures(f"judge request {request_id}"):
                async for output in engine.generate(
                    {"prompt_token_ids": list(ids)}, params, request_id=request_id
                ):
                    final = output
            assert final is not None and final.outputs[0].logprobs
            by_token = final.outputs[0].logprobs[0]
            return yes_probability(by_token[yes_id].logprob, by_token[no_id].logprob)

        scored = await asyncio.gather(*(one(i, ids) for i, ids in enumerate(distinct)))
        by_prompt = dict(zip(distinct, scored, strict=True))
        return JudgeScores(
            [by_prompt[ids] for ids in prompts],
            prefill_tokens=judge_prefill_tokens(prompts),
            details={"judge": self.backend.model},
        )
