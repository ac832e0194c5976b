"""``VLLMJudge``: a model on vLLM reads two trace prefixes and says whether they end alike.

DeepPrune's judge is an LLM fine-tuned to predict, from two prefixes, whether two traces reach the
same final answer (the paper fine-tunes Qwen3-4B-Instruct). This adapter runs any such model on a
shared vLLM engine: every pair becomes one chat prompt (``template``), the engine decodes a single
token with greedy sampling, and the score is the probability of the "yes" token renormalised over
{yes, no}, read through ``SamplingParams.logprob_token_ids`` (the raw log-probabilities of exactly
those two tokens, whatever token is sampled). All pairs of a batch run concurrently, so the engine
batches them. ``prefill_tokens`` reports what the judge read.

The default template is ours, not the paper's: pass the one your judge model was trained with.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Mapping, Sequence
from typing import Any

from deepprune_lc.core.ports import JudgeScores, PrefixPair, Prompt
from deepprune_lc.judges.common import DEFAULT_JUDGE_TEMPLATE, logistic
from deepprune_vllm.backend import VLLMBackend

__all__ = ["DEFAULT_JUDGE_TEMPLATE", "VLLMJudge"]


_batches = itertools.count()


class VLLMJudge:
    """Scores prefix pairs with a judge model served by a (shared) vLLM engine.

    Engine arguments work as for ``VLLMBackend``; a judge and a backend with equal engine
    arguments share one engine. ``yes`` / ``no`` are the answer words whose first tokens are
    compared.
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
        if "{prefix_a}" not in template or "{prefix_b}" not in template:
            raise ValueError("template: must contain {prefix_a} and {prefix_b}")
        if not yes.strip() or not no.strip() or yes == no:
            raise ValueError("yes/no: must be two different non-empty words")
        self.template = template
        self.yes, self.no = yes, no
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
            tokenizer = self.backend._tokenizer()
            yes = tokenizer.encode(self.yes, add_special_tokens=False)
            no = tokenizer.encode(self.no, add_special_tokens=False)
            if not yes or not no or yes[0] == no[0]:
                raise ValueError(f"yes={self.yes!r} and no={self.no!r} start with the same token")
            self._label_ids = (yes[0], no[0])
        return self._label_ids

    async def _score(self, pairs: Sequence[PrefixPair]) -> JudgeScores:
        from vllm import SamplingParams

        engine = await self.backend.engine.engine()
        yes_id, no_id = self.label_token_ids()
        params = SamplingParams(
            max_tokens=1, temperature=0.0, logprob_token_ids=[yes_id, no_id], detokenize=False
        )
        has_chat_template = bool(getattr(self.backend._tokenizer(), "chat_template", None))
        prompts = []
        for pair in pairs:
            text = self.template.format(prefix_a=pair.prefix_a, prefix_b=pair.prefix_b)
            prompt: Prompt = (
                [{"role": "user", "content": text}] if has_chat_template else f"{text}\nAnswer:"
            )
            prompts.append(self.backend.prompt_token_ids(prompt, cache=False))
        batch = next(_batches)

        async def one(i: int, ids: list[int]) -> float:
            final = None
            async for output in engine.generate(
                {"prompt_token_ids": ids}, params, request_id=f"judge-{batch}-{i}"
            ):
                final = output
            assert final is not None and final.outputs[0].logprobs
            by_token = final.outputs[0].logprobs[0]
            return _yes_probability(by_token[yes_id].logprob, by_token[no_id].logprob)

        probabilities = await asyncio.gather(*(one(i, ids) for i, ids in enumerate(prompts)))
        return JudgeScores(
            list(probabilities),
            prefill_tokens=sum(len(ids) for ids in prompts),
            details={"judge": self.backend.model},
        )


def _yes_probability(log_yes: float, log_no: float) -> float:
    """exp(log_yes) / (exp(log_yes) + exp(log_no)), without overflow; 0.5 when both are -inf."""
    if log_yes == log_no:
        return 0.5
    return logistic(log_yes - log_no)
