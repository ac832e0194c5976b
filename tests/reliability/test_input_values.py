"""Bad values fail early, at construction or call time, naming the field and the value.

NaN passes no comparison, so a bound check reported ``threshold=nan`` as "Input should be less
than 1"; inf was accepted as a deadline; ``max_tokens=10**30`` was accepted (and overflows an
engine's serialiser); a None prompt raised "'NoneType' object is not iterable" and chat content
123 an AttributeError inside a GenerationError.
"""

from __future__ import annotations

import asyncio
import math
import typing
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError
from reliability_faults import QUESTION, synthetic_backend

from deepprune_lc import (
    DeepPrune,
    DeepPruneReasoner,
    EarlyStoppingConfig,
    LexicalJudge,
    PruningConfig,
    ReplayBackend,
    SamplingConfig,
    SelfConsistency,
)
from deepprune_lc.core.config import RunConfig

CONFIGS: list[type[BaseModel]] = [RunConfig, PruningConfig, EarlyStoppingConfig, SamplingConfig]


def _float_fields(model: type[BaseModel]) -> list[str]:
    names = []
    for name, info in model.model_fields.items():
        annotation = info.annotation
        if annotation is float or float in typing.get_args(annotation):
            names.append(name)
    return names


FLOAT_FIELDS = [(model, name) for model in CONFIGS for name in _float_fields(model)]


def test_the_float_fields_are_found() -> None:
    found = {name for _, name in FLOAT_FIELDS}
    assert {"deadline_s", "idle_timeout_s", "threshold", "judge_timeout_s"} <= found
    assert {"temperature", "top_p"} <= found


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf], ids=str)
@pytest.mark.parametrize(
    ("model", "field"), FLOAT_FIELDS, ids=[f"{m.__name__}.{f}" for m, f in FLOAT_FIELDS]
)
def test_nan_and_inf_are_rejected_naming_the_field_and_the_value(
    model: type[BaseModel], field: str, value: float
) -> None:
    with pytest.raises(ValidationError) as caught:
        model(**{field: value})
    (error,) = caught.value.errors()
    assert error["loc"] == (field,)
    assert error["msg"] == "Input should be a finite number"
    assert str(value) in str(caught.value)  # "input_value=nan"


def test_nan_threshold_is_not_reported_as_out_of_range() -> None:
    with pytest.raises(ValidationError) as caught:
        PruningConfig(threshold=math.nan)
    assert "less than 1" not in str(caught.value)
    assert "finite number" in str(caught.value)


def test_max_tokens_has_a_clear_bound() -> None:
    assert SamplingConfig(max_tokens=2**31 - 1).max_tokens == 2**31 - 1
    with pytest.raises(ValidationError, match=r"max_tokens[\s\S]*less than or equal to 2147483647"):
        SamplingConfig(max_tokens=10**30)
    with pytest.raises(ValidationError, match="max_tokens"):
        SamplingConfig(max_tokens=2**31)


def test_the_chat_model_rejects_an_absurd_max_tokens_naming_it() -> None:
    with pytest.raises(ValueError, match="max_tokens"):
        DeepPruneReasoner(backend="replay:demo", max_tokens=10**30)
    model = DeepPruneReasoner(backend="replay:demo")
    with pytest.raises(ValueError, match="max_tokens"):
        model.invoke("What is 2 + 3?", max_tokens=10**30)


def test_the_chat_model_rejects_a_nan_timeout_naming_it() -> None:
    with pytest.raises(ValueError, match=r"timeout|deadline_s"):
        DeepPruneReasoner(backend="replay:demo", timeout=math.nan)


class _CountingBackend:
    """Replay that counts requests: a bad prompt must be refused before any request starts."""

    def __init__(self, inner: ReplayBackend) -> None:
        self.inner, self.requests = inner, 0

    def stream(self, request: Any) -> Any:
        self.requests += 1
        return self.inner.stream(request)

    async def abort(self, request_id: str) -> None:
        await self.inner.abort(request_id)

    def count_prompt_tokens(self, prompt: Any) -> int:
        return self.inner.count_prompt_tokens(prompt)


BAD_PROMPTS: dict[str, tuple[Any, type[Exception], str]] = {
    "empty": ("", ValueError, "prompt: must not be empty"),
    "blank": ("  \n\t", ValueError, "prompt: must not be empty"),
    "none": (None, TypeError, "prompt: expected a string or a list of chat messages, got NoneType"),
    "int": (42, TypeError, "got int"),
    "dict": ({"role": "user", "content": "hi"}, TypeError, "got dict"),
    "no_messages": ([], ValueError, "at least one message"),
    "missing_content": ([{"role": "user"}], ValueError, "prompt[0]: a message needs"),
    "int_content": ([{"role": "user", "content": 123}], ValueError, "prompt[0].content: expected"),
    "list_content": (
        [{"role": "user", "content": [{"type": "image"}]}],
        ValueError,
        "prompt[0].content: expected a string, got list",
    ),
    "none_role": ([{"role": None, "content": "hi"}], ValueError, "prompt[0].role"),
    "blank_messages": ([{"role": "user", "content": " "}], ValueError, "every message is empty"),
}


@pytest.mark.parametrize("case", sorted(BAD_PROMPTS))
@pytest.mark.parametrize("kind", ["cons", "deepprune"])
async def test_bad_prompts_are_refused_before_any_request(kind: str, case: str) -> None:
    prompt, error, message = BAD_PROMPTS[case]
    backend = _CountingBackend(synthetic_backend())
    runner: Any = (
        SelfConsistency(backend, 8)
        if kind == "cons"
        else DeepPrune(backend, LexicalJudge(), PruningConfig(n_traces=8))
    )
    with pytest.raises(error) as caught:
        await asyncio.wait_for(runner.run(prompt), timeout=30)
    assert message in str(caught.value)
    assert backend.requests == 0


def test_absurd_n_traces_are_refused_at_construction() -> None:
    with pytest.raises(ValidationError, match=r"n_traces[\s\S]*less than or equal to 4096"):
        PruningConfig(n_traces=10**9)
    with pytest.raises(ValidationError, match="n_traces"):
        SelfConsistency(synthetic_backend(), 10**9)


async def test_more_traces_than_a_strict_replay_pool_holds_is_a_clear_error() -> None:
    strict = ReplayBackend.synthetic(8, 50, prompt=QUESTION, reuse="error")
    with pytest.raises(Exception, match=r"recorded 8 traces[\s\S]*at most\s+n_traces=8"):
        await asyncio.wait_for(SelfConsistency(strict, 64).run(QUESTION), timeout=30)
    assert strict.live_requests() == set()
