"""``DeepPruneReasoner`` behaviour: construction, answers, usage, metadata, streaming, limits.

Everything runs on the replay backend over the embedded demo pool (three problems, eight recorded
traces each) with the lexical judge; with ``TokensPrefix(k=40)`` that judge merges traces there, so
runs really prune.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from pydantic import BaseModel, ValidationError

from deepprune_lc.backends.pool import PoolProblem, PoolTrace, TracePool
from deepprune_lc.backends.replay import ReplayBackend
from deepprune_lc.core.config import PruningConfig, SamplingConfig, TokensPrefix
from deepprune_lc.core.events import RunCompleted
from deepprune_lc.core.ports import TraceRequest
from deepprune_lc.core.result import DeepPruneResult
from deepprune_lc.demo import load_demo_pool
from deepprune_lc.judges.lexical import LexicalJudge
from deepprune_lc.langchain.callbacks import DeepPruneCallbackHandler
from deepprune_lc.langchain.chat_model import DeepPruneReasoner
from deepprune_lc.langchain.messages import split_thinking
from deepprune_lc.runtime import registry

POOL = load_demo_pool()
PRUNING = PruningConfig(n_traces=8, prefix=TokensPrefix(k=40), finalists=3)
DEMO = [(p.id, p.problem, p.answer) for p in POOL]
BAKERY = POOL.by_id("demo-bakery").problem


def make_model(backend: Any = None, **kwargs: Any) -> DeepPruneReasoner:
    return DeepPruneReasoner(
        backend=backend if backend is not None else ReplayBackend(POOL, yield_every=1),
        judge=kwargs.pop("judge", "lexical"),
        pruning=kwargs.pop("pruning", PRUNING),
        **kwargs,
    )


class ResultCatcher(DeepPruneCallbackHandler):
    """Keeps the run's ``DeepPruneResult`` (from ``deepprune.run_completed``)."""

    def __init__(self) -> None:
        self.results: list[DeepPruneResult] = []

    def on_run_completed(self, event: RunCompleted, *, run_id: Any) -> None:
        self.results.append(event.result)


@pytest.fixture
def fresh_registry(monkeypatch: pytest.MonkeyPatch) -> tuple[dict[str, Any], dict[str, Any]]:
    """An empty shared-engine registry for this test (restored afterwards)."""
    backends: dict[str, Any] = {}
    judges: dict[str, Any] = {}
    monkeypatch.setattr(registry, "_backends", backends)
    monkeypatch.setattr(registry, "_judges", judges)
    return backends, judges


@pytest.fixture
def recorded_requests(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, TraceRequest]]:
    """(id of the ReplayBackend instance, request) for every trace any ReplayBackend streams."""
    seen: list[tuple[int, TraceRequest]] = []
    original = ReplayBackend.stream

    def stream(self: ReplayBackend, request: TraceRequest) -> Any:
        seen.append((id(self), request))
        return original(self, request)

    monkeypatch.setattr(ReplayBackend, "stream", stream)
    return seen


# -- construction -----------------------------------------------------------------------------------


def test_constructor_takes_spec_strings(fresh_registry: Any) -> None:
    model = DeepPruneReasoner(backend="replay:demo", judge="lexical", pruning=PRUNING)
    assert model.backend == "replay:demo"
    assert model.judge == "lexical"
    message = model.invoke(BAKERY)
    assert message.response_metadata["deepprune"]["answer"] == "216"
    assert "216" in message.text


def test_constructor_takes_objects() -> None:
    backend = ReplayBackend(POOL, yield_every=1)
    judge = LexicalJudge()
    model = make_model(backend, judge=judge)
    assert model.backend is backend
    assert model.judge is judge
    assert model.invoke(BAKERY).response_metadata["deepprune"]["answer"] == "216"
    runner = model._runner
    assert runner is not None
    assert runner.backend is backend
    assert runner.judge is judge


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"backend": "nope:model"}, "backend"),
        ({"backend": "replay:"}, "backend"),
        ({"backend": 42}, "backend"),
        ({"backend": "replay:demo", "judge": "magic"}, "judge"),
        ({"backend": "replay:demo", "judge": 3.5}, "judge"),
        ({"backend": "replay:demo", "answers": "astrology"}, "answers"),
        ({"backend": "replay:demo", "pruning": {"n_traces": 0}}, "n_traces"),
        ({"backend": "replay:demo", "sampling": {"top_k": 0}}, "top_k"),
        ({"backend": "replay:demo", "temperature": -1.0}, "temperature"),
        ({"backend": "replay:demo", "max_tokens": 0}, "max_tokens"),
    ],
)
def test_bad_specs_fail_at_construction_naming_the_field(
    kwargs: dict[str, Any], field: str, fresh_registry: Any
) -> None:
    with pytest.raises(ValidationError) as info:
        DeepPruneReasoner(**kwargs)
    assert field in str(info.value)
    backends, judges = fresh_registry
    assert backends == {} and judges == {}


def test_no_engine_is_created_before_the_first_call(
    fresh_registry: tuple[dict[str, Any], dict[str, Any]],
) -> None:
    backends, judges = fresh_registry
    model = DeepPruneReasoner(backend="replay:demo", judge="lexical", pruning=PRUNING)
    other = DeepPruneReasoner(backend="replay:demo", judge="lexical", pruning=PRUNING)
    assert backends == {} and judges == {}
    assert model._runner is None and other._runner is None

    model.invoke(BAKERY)
    assert set(backends) == {"replay:demo"} and set(judges) == {"lexical"}
    assert model._runner is not None and other._runner is None
    # A second reasoner naming the same specs shares the engines instead of loading new ones.
    other.invoke(BAKERY)
    assert other._deepprune().backend is model._deepprune().backend is backends["replay:demo"]
    assert other._deepprune().judge is model._deepprune().judge is judges["lexical"]


def test_standard_sampling_params_fold_into_sampling() -> None:
    model = make_model(
        temperature=0.0,
        max_tokens=512,
        stop=["###"],
        top_p=0.5,
        sampling=SamplingConfig(temperature=1.0, top_k=20),
    )
    assert model.sampling == SamplingConfig(
        temperature=0.0, max_tokens=512, stop=("###",), top_p=0.5, top_k=20
    )
    params = model._get_ls_params()
    assert params["ls_temperature"] == 0.0
    assert params["ls_max_tokens"] == 512
    assert params["ls_stop"] == ["###"]


def test_timeout_is_the_runs_deadline_and_client_params_are_accepted() -> None:
    model = make_model(timeout=30, max_retries=2, api_key="unused", streaming=True)
    assert model.pruning == PRUNING.model_copy(update={"deadline_s": 30.0})
    assert make_model().pruning.deadline_s is None


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"n_traces": 32}, r"\['n_traces'\].*pass pruning=PruningConfig\(n_traces=\.\.\.\)"),
        ({"seed": 1}, r"seed is a PruningConfig setting"),
        ({"repetition_penalty": 1.1}, r"unknown arguments \['repetition_penalty'\]"),
    ],
)
def test_unknown_constructor_arguments_are_named(kwargs: dict[str, Any], error: str) -> None:
    with pytest.raises(ValidationError, match=error):
        make_model(**kwargs)


def test_max_tokens_reaches_the_backend(recorded_requests: list[tuple[int, TraceRequest]]) -> None:
    model = make_model(max_tokens=30)
    message = model.invoke(BAKERY)
    assert recorded_requests
    assert {r.sampling.max_tokens for _, r in recorded_requests} == {30}
    # Every trace was cut at 30 tokens, before any \boxed{} answer.
    assert message.response_metadata["deepprune"]["decoded_tokens"] <= 30 * PRUNING.n_traces


# -- answers --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("problem_id", "question", "answer"), DEMO)
def test_invoke_answers_the_demo_problems(problem_id: str, question: str, answer: str) -> None:
    message = make_model().invoke(question)
    assert isinstance(message, AIMessage)
    assert message.response_metadata["deepprune"]["answer"] == answer
    assert f"\\boxed{{{answer}}}" in message.text


async def test_ainvoke_answers_the_demo_problems() -> None:
    model = make_model()
    for _, question, answer in DEMO:
        message = await model.ainvoke(question)
        assert message.response_metadata["deepprune"]["answer"] == answer


def test_invoke_takes_a_message_list() -> None:
    message = make_model().invoke([SystemMessage("Be careful."), HumanMessage(BAKERY)])
    assert message.response_metadata["deepprune"]["answer"] == "216"


def test_tool_messages_are_refused() -> None:
    with pytest.raises(NotImplementedError, match="tool"):
        make_model().invoke([HumanMessage(BAKERY), ToolMessage("3", tool_call_id="t1")])


def test_batch_answers_each_question_on_one_shared_backend(
    fresh_registry: tuple[dict[str, Any], dict[str, Any]],
    recorded_requests: list[tuple[int, TraceRequest]],
) -> None:
    backends, _ = fresh_registry
    model = DeepPruneReasoner(backend="replay:demo", judge="lexical", pruning=PRUNING)
    messages = model.batch([q for _, q, _ in DEMO])
    assert [m.response_metadata["deepprune"]["answer"] for m in messages] == [a for _, _, a in DEMO]
    assert {backend_id for backend_id, _ in recorded_requests} == {id(backends["replay:demo"])}
    prompts = {r.prompt[-1]["content"] for _, r in recorded_requests}  # type: ignore[index]
    assert prompts == {q for _, q, _ in DEMO}
    assert len(recorded_requests) >= len(DEMO) * PRUNING.n_traces


async def test_abatch_answers_each_question_on_one_shared_backend(
    recorded_requests: list[tuple[int, TraceRequest]],
) -> None:
    backend = ReplayBackend(POOL, yield_every=1)
    model = make_model(backend)
    messages = await model.abatch([q for _, q, _ in DEMO])
    assert [m.response_metadata["deepprune"]["answer"] for m in messages] == [a for _, _, a in DEMO]
    assert {backend_id for backend_id, _ in recorded_requests} == {id(backend)}
    assert backend.live_requests() == set()


# -- usage and metadata -----------------------------------------------------------------------------


@pytest.mark.parametrize("use_async", [False, True])
async def test_usage_metadata_totals_the_run(use_async: bool) -> None:
    backend = ReplayBackend(POOL, yield_every=1)
    model = make_model(backend)
    catcher = ResultCatcher()
    config: Any = {"callbacks": [catcher]}
    message = await model.ainvoke(BAKERY, config) if use_async else model.invoke(BAKERY, config)
    (result,) = catcher.results
    totals = result.totals
    usage = message.usage_metadata
    assert usage is not None

    # Output: every decoded token of every trace, pruned and aborted ones included.
    assert totals.decoded_tokens == sum(t.tokens_decoded for t in result.traces)
    assert usage["output_tokens"] == totals.decoded_tokens
    answer_tokens = backend.count_prompt_tokens(message.text)
    assert 0 < answer_tokens < totals.decoded_tokens
    assert usage["output_token_details"] == {"reasoning": totals.decoded_tokens - answer_tokens}
    # Input: the prompt once per trace plus the prefixes re-read by resumed traces.
    started = len(result.traces)
    assert started == PRUNING.n_traces
    assert totals.prompt_tokens == backend.count_prompt_tokens(BAKERY)
    assert usage["input_tokens"] == totals.prompt_tokens * started + totals.resume_prefill_tokens
    assert usage["input_token_details"] == {
        "cache_read": totals.prompt_tokens * (started - 1) + totals.resume_prefill_tokens
    }
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    # This run pruned, so it cost less than all traces to the end would have.
    assert totals.token_savings is not None and totals.token_savings > 0


def test_response_metadata_names_the_model_and_carries_the_summary() -> None:
    catcher = ResultCatcher()
    message = make_model().invoke(BAKERY, {"callbacks": [catcher]})
    (result,) = catcher.results
    metadata = message.response_metadata
    assert metadata["model_name"] == "ReplayBackend"
    assert metadata["model_provider"] == "deepprune"
    assert metadata["finish_reason"] == "stop"
    summary = metadata["deepprune"]
    expected = result.summary()
    assert summary == expected
    assert summary["method"] == "deepprune"
    assert summary["answer"] == "216"
    assert sum(summary["trace_status"].values()) == PRUNING.n_traces
    assert summary["trace_status"].get("finished", 0) <= PRUNING.finalists
    assert summary["judge_calls"] >= 1
    assert sum(summary["clusters"]) >= 2


def test_model_name_defaults_to_the_spec_and_can_be_set(fresh_registry: Any) -> None:
    by_spec = DeepPruneReasoner(backend="replay:demo", pruning=PRUNING)
    assert by_spec.invoke(BAKERY).response_metadata["model_name"] == "replay:demo"
    named = make_model(model_name="qwen3-8b-deepprune")
    assert named.invoke(BAKERY).response_metadata["model_name"] == "qwen3-8b-deepprune"


def test_ls_params_name_provider_and_model() -> None:
    model = make_model(model_name="my-reasoner", temperature=0.3, max_tokens=256)
    params = model._get_ls_params()
    assert params["ls_provider"] == "deepprune"
    assert params["ls_model_name"] == "my-reasoner"
    assert params["ls_model_type"] == "chat"
    assert params["ls_temperature"] == 0.3
    assert params["ls_max_tokens"] == 256
    assert "ls_stop" not in params
    assert model._get_ls_params(stop=["END"])["ls_stop"] == ["END"]
    assert make_model()._get_ls_params()["ls_model_name"] == "ReplayBackend"


# -- <think> splitting ------------------------------------------------------------------------------

THINK_QUESTION = "What is 6 times 7?"
THINK_TRACES = [
    "<think>I need 6 * 7. So 6 * 7 = 42. Let me check: 7 + 7 + 7 + 7 + 7 + 7 = 42.</think>"
    "The product is \\boxed{42}.",
    "<think>Six sevens: 7, 14, 21, 28, 35, 42. So the answer is 42.</think>"
    "Six times seven is \\boxed{42}.",
    "<think>6 * 7 is 48? No: 6 * 8 = 48, so 6 * 7 = 48 - 6 = 42.</think>The answer is \\boxed{42}.",
]


def think_model() -> tuple[DeepPruneReasoner, ReplayBackend]:
    problem = PoolProblem(
        id="think",
        problem=THINK_QUESTION,
        answer="42",
        traces=[PoolTrace(text=t) for t in THINK_TRACES],
    )
    backend = ReplayBackend(TracePool(problems=[problem], source="think-pool"), yield_every=1)
    return make_model(backend, pruning=PruningConfig(n_traces=3, prefix=TokensPrefix(k=5))), backend


def test_split_thinking() -> None:
    assert split_thinking("<think> a \n b </think>\n\nAnswer: 4") == ("Answer: 4", "a \n b")
    assert split_thinking("no thinking here") == ("no thinking here", None)
    # Only the last </think> ends the thinking; an unopened block still counts as thinking.
    assert split_thinking("x</think>y</think> z") == ("z", "x</think>y")


@pytest.mark.parametrize("use_async", [False, True])
async def test_think_blocks_go_to_reasoning_content(use_async: bool) -> None:
    model, backend = think_model()
    message = await model.ainvoke(THINK_QUESTION) if use_async else model.invoke(THINK_QUESTION)
    assert message.response_metadata["deepprune"]["answer"] == "42"
    assert "<think>" not in message.text and "</think>" not in message.text
    (winner,) = [t for t in THINK_TRACES if t.endswith(message.text)]
    assert message.additional_kwargs["reasoning_content"] == winner[7 : winner.index("</think>")]
    assert message.usage_metadata is not None
    answer_tokens = backend.count_prompt_tokens(message.text)
    assert (
        message.usage_metadata["output_token_details"]["reasoning"]
        == message.usage_metadata["output_tokens"] - answer_tokens
    )


def test_no_reasoning_content_without_think_tags() -> None:
    assert "reasoning_content" not in make_model().invoke(BAKERY).additional_kwargs


# -- streaming -------------------------------------------------------------------------------------


def _comparable(message: AIMessage) -> dict[str, Any]:
    summary = dict(message.response_metadata["deepprune"])
    summary.pop("wall_time_s")
    return {
        "content": message.content,
        "additional_kwargs": message.additional_kwargs,
        "usage": message.usage_metadata,
        "model_name": message.response_metadata["model_name"],
        "summary": summary,
    }


def _add(chunks: Iterator[AIMessageChunk] | list[AIMessageChunk]) -> AIMessageChunk:
    chunks = list(chunks)
    assert chunks
    assert chunks[-1].chunk_position == "last"
    full = chunks[0]
    for chunk in chunks[1:]:
        full = full + chunk
    return full


async def _collect(stream: AsyncIterator[AIMessageChunk]) -> list[AIMessageChunk]:
    return [chunk async for chunk in stream]


@pytest.mark.parametrize("make", [make_model, lambda: think_model()[0]])
def test_stream_adds_up_to_the_invoke_message(make: Any) -> None:
    model = make()
    question = BAKERY if model.pruning is PRUNING else THINK_QUESTION
    invoked = model.invoke(question)
    streamed = _add(model.stream(question))
    assert _comparable(streamed) == _comparable(invoked)


async def test_cancelling_an_astream_mid_run_stops_every_trace() -> None:
    backend = ReplayBackend(POOL, yield_every=1, seconds_per_token=0.002)
    model = make_model(backend)

    async def consume() -> list[AIMessageChunk]:
        return await _collect(model.astream(BAKERY))

    task = asyncio.create_task(consume())
    while not backend.live_requests():
        await asyncio.sleep(0.005)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert backend.live_requests() == set()


class _DiesMidStream:
    """Fault injection: trace 2 raises after 5 tokens (a real engine cannot be made to)."""

    def __init__(self, inner: ReplayBackend) -> None:
        self.inner = inner

    async def stream(self, request: TraceRequest) -> AsyncIterator[Any]:
        stream = self.inner.stream(request)
        try:
            count = 0
            async for delta in stream:
                if request.trace_index == 2 and count >= 5:
                    raise ConnectionError("engine died")
                count += 1
                yield delta
        finally:
            await stream.aclose()  # type: ignore[attr-defined]

    async def abort(self, request_id: str) -> None:
        await self.inner.abort(request_id)

    def count_prompt_tokens(self, prompt: object) -> int:
        return 0


async def test_an_astream_that_fails_mid_run_raises_with_the_partial_result() -> None:
    from langchain_core.tracers.context import collect_runs

    from deepprune_lc.core.errors import GenerationError

    backend = ReplayBackend(POOL, yield_every=1)
    with collect_runs() as runs, pytest.raises(GenerationError, match="trace 2") as caught:
        await _collect(make_model(_DiesMidStream(backend)).astream(BAKERY))
    partial = caught.value.partial_result
    assert partial is not None and partial.totals.decoded_tokens > 5
    assert backend.live_requests() == set()
    (run,) = [r for r in runs.traced_runs if r.run_type == "llm"]
    assert run.error is not None and "trace 2" in run.error


async def test_closing_an_astream_after_the_answer_ends_the_run_cleanly() -> None:
    from langchain_core.tracers.context import collect_runs

    backend = ReplayBackend(POOL, yield_every=1)
    with collect_runs() as runs:
        stream = make_model(backend).astream(BAKERY)
        async for chunk in stream:
            assert "\\boxed{216}" in chunk.text
            break
        await stream.aclose()  # type: ignore[attr-defined]
    (run,) = [r for r in runs.traced_runs if r.run_type == "llm"]
    assert run.error is None and run.outputs is not None
    assert backend.live_requests() == set()


@pytest.mark.parametrize("make", [make_model, lambda: think_model()[0]])
async def test_astream_adds_up_to_the_ainvoke_message(make: Any) -> None:
    model = make()
    question = BAKERY if model.pruning is PRUNING else THINK_QUESTION
    invoked = await model.ainvoke(question)
    streamed = _add(await _collect(model.astream(question)))
    # Token counts may differ by a few: ainvoke dispatches events from a task of its own, which
    # changes how the concurrent traces interleave (how far a trace runs before it is pruned).
    same = ("content", "additional_kwargs", "model_name")
    assert {k: _comparable(streamed)[k] for k in same} == {k: _comparable(invoked)[k] for k in same}
    assert (
        streamed.response_metadata["deepprune"]["answer"]
        == (invoked.response_metadata["deepprune"]["answer"])
    )
    assert streamed.usage_metadata is not None
    assert (
        streamed.usage_metadata["output_tokens"]
        == (streamed.response_metadata["deepprune"]["decoded_tokens"])
    )


# -- unsupported capabilities and bad calls ---------------------------------------------------------


def test_bind_tools_is_refused_with_a_reason() -> None:
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    with pytest.raises(NotImplementedError, match="does not support tools"):
        make_model().bind_tools([add])


def test_structured_output_is_refused_with_a_reason() -> None:
    class Answer(BaseModel):
        value: int

    with pytest.raises(NotImplementedError, match="does not support structured output"):
        make_model().with_structured_output(Answer)


def test_unexpected_call_arguments_raise_type_error() -> None:
    with pytest.raises(TypeError, match=re.escape("['frequency_penalty']")):
        make_model().invoke(BAKERY, frequency_penalty=0.5)


async def test_unexpected_call_arguments_raise_type_error_async() -> None:
    with pytest.raises(TypeError, match="model"):
        await make_model().ainvoke(BAKERY, model="another-model")


def test_call_stop_reaches_every_trace_request(
    recorded_requests: list[tuple[int, TraceRequest]],
) -> None:
    make_model().invoke(BAKERY, stop=["\n\n###"])
    assert recorded_requests
    assert {r.sampling.stop for _, r in recorded_requests} == {("\n\n###",)}
    recorded_requests.clear()
    make_model(stop=["END"]).invoke(BAKERY)
    assert {r.sampling.stop for _, r in recorded_requests} == {("END",)}


# -- sync calls from async code ---------------------------------------------------------------------


async def test_invoke_from_a_worker_thread_of_a_running_loop() -> None:
    model = make_model()
    message = await asyncio.to_thread(model.invoke, BAKERY)
    assert message.response_metadata["deepprune"]["answer"] == "216"


async def test_invoke_on_the_thread_running_an_event_loop() -> None:
    # Blocks this loop while it waits, but must not deadlock or try to nest loops: the run executes
    # on DeepPrune's own background loop.
    message = make_model().invoke(BAKERY)
    assert message.response_metadata["deepprune"]["answer"] == "216"


async def test_sync_and_async_calls_share_one_backend_concurrently() -> None:
    backend = ReplayBackend(POOL, yield_every=1)
    model = make_model(backend)
    sync_call = asyncio.to_thread(model.invoke, BAKERY)
    results = await asyncio.gather(sync_call, model.ainvoke(DEMO[1][1]))
    assert [m.response_metadata["deepprune"]["answer"] for m in results] == ["216", DEMO[1][2]]
    assert backend.live_requests() == set()


def test_model_copy_with_new_pruning_runs_with_the_new_settings() -> None:
    from deepprune_lc.core.config import PruningConfig, TokensPrefix
    from deepprune_lc.demo import load_demo_pool

    question = load_demo_pool().by_id("demo-bakery").problem
    base = DeepPruneReasoner(
        backend="replay:demo", pruning=PruningConfig(n_traces=4, prefix=TokensPrefix(k=40))
    )
    assert base.invoke(question).response_metadata["deepprune"]["trace_status"]
    wider = base.model_copy(
        update={"pruning": PruningConfig(n_traces=8, prefix=TokensPrefix(k=40))}
    )
    statuses = wider.invoke(question).response_metadata["deepprune"]["trace_status"]
    assert sum(statuses.values()) == 8


def test_runner_is_reused_across_calls_and_rebuilt_on_new_settings() -> None:
    from deepprune_lc.core.answers import AnswerRules

    model = DeepPruneReasoner(backend="replay:demo", answers=AnswerRules.multiple_choice())
    first = model._deepprune()
    assert model._deepprune() is first  # same specs: no rebuild, even with partial-based rules
    copy = model.model_copy(update={"sampling": model.sampling.model_copy(update={"top_p": 0.5})})
    assert copy._deepprune() is not first


class CountingJudge(LexicalJudge):
    """The lexical judge, counting the batches it scores (to see which judge a run used)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    async def score(self, pairs: Any) -> Any:
        self.calls += 1
        return await super().score(pairs)


def test_model_copy_with_a_new_judge_runs_with_that_judge() -> None:
    first, other = CountingJudge(), CountingJudge()
    model = make_model(judge=first)
    assert model.invoke(BAKERY).response_metadata["deepprune"]["judge_calls"] >= 1
    used_by_first = first.calls
    assert used_by_first >= 1

    copy = model.model_copy(update={"judge": other})
    summary = copy.invoke(BAKERY).response_metadata["deepprune"]
    assert other.calls == summary["judge_calls"] >= 1
    assert first.calls == used_by_first  # the original's judge took no part
    assert copy._deepprune().judge is other
    assert model._deepprune().judge is first


def test_model_copy_with_a_new_backend_runs_on_that_backend(
    recorded_requests: list[tuple[int, TraceRequest]],
) -> None:
    first = ReplayBackend(POOL, yield_every=1)
    other = ReplayBackend(POOL, yield_every=1)
    model = make_model(first)
    model.invoke(BAKERY)
    assert {backend for backend, _ in recorded_requests} == {id(first)}

    recorded_requests.clear()
    copy = model.model_copy(update={"backend": other})
    assert copy.invoke(BAKERY).response_metadata["deepprune"]["answer"] == "216"
    assert recorded_requests and {backend for backend, _ in recorded_requests} == {id(other)}
    assert copy._deepprune().backend is other
    assert model._deepprune().backend is first


def test_model_copy_with_a_new_spec_string_resolves_it(fresh_registry: Any) -> None:
    model = DeepPruneReasoner(backend="replay:demo", judge="lexical", pruning=PRUNING)
    model.invoke(BAKERY)
    copy = model.model_copy(update={"judge": "lexical?midpoint=0.9"})
    copy.invoke(BAKERY)
    backends, judges = fresh_registry
    assert set(judges) == {"lexical", "lexical?midpoint=0.9"}
    assert copy._deepprune().judge is judges["lexical?midpoint=0.9"]
    assert copy._deepprune().backend is model._deepprune().backend is backends["replay:demo"]
