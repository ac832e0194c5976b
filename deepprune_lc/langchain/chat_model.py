"""``DeepPruneReasoner``: DeepPrune as a LangChain chat model, a drop-in for a single LLM call.

>>> model = DeepPruneReasoner(backend="vllm:Qwen/Qwen3-8B", judge="lexical")
>>> model.invoke("What is the sum of the first 100 positive integers?").content

The returned ``AIMessage`` carries the winning trace's final response as ``content`` (thinking inside
``<think>`` tags goes to ``additional_kwargs["reasoning_content"]``), ``usage_metadata`` totalled
over every trace (pruned ones included), and ``response_metadata["deepprune"]``, the run's summary.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LangSmithParams, LanguageModelInput
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    HumanMessage,
)
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import RunnableConfig
from langchain_core.utils.utils import LC_ID_PREFIX
from pydantic import ConfigDict, Field, PrivateAttr, field_validator, model_validator

from deepprune_lc.core.answers import AnswerRules
from deepprune_lc.core.config import PruningConfig, SamplingConfig
from deepprune_lc.core.errors import DeepPruneTimeoutError
from deepprune_lc.core.ports import GenerationBackend, Judge
from deepprune_lc.core.result import DeepPruneResult
from deepprune_lc.langchain.callbacks import (
    NOSTREAM_TAG,
    EventBridge,
    TracedJudge,
    child_manager,
)
from deepprune_lc.langchain.messages import messages_to_prompt, split_thinking
from deepprune_lc.langchain.parameters import fold_standard_parameters
from deepprune_lc.langchain.streaming import STREAM_CALL, ChunkHandoff, as_last_chunk
from deepprune_lc.runtime.loop import run_sync
from deepprune_lc.runtime.registry import (
    check_backend_spec,
    check_judge_spec,
    resolve_backend,
    resolve_judge,
)
from deepprune_lc.runtime.runner import DeepPrune


class DeepPruneReasoner(BaseChatModel):
    """Parallel reasoning with DeepPrune behind the chat-model interface.

    ``backend`` and ``judge`` are objects implementing the ports, or strings naming them:
    ``"replay:<pool.jsonl>"``, ``"replay:demo"``, ``"vllm:<model>"``, ``"transformers:<model>"``;
    judges ``"lexical"``, ``"embedding"``, ``"vllm:<judge model>"``. Engines are created on first use
    and shared by every reasoner naming the same spec.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    backend: Any = Field(description="GenerationBackend or spec string ('vllm:<model>', ...).")
    judge: Any = Field(default="lexical", description="Judge or spec string.")
    pruning: PruningConfig = Field(default_factory=PruningConfig)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    answers: Any = Field(
        default="math", description="'math', 'multiple_choice', 'exact' or an AnswerRules."
    )
    model_name: str | None = Field(
        default=None, description="Name reported to LangSmith; defaults to the backend spec."
    )

    _runner: DeepPrune | None = PrivateAttr(default=None)
    _runner_spec: tuple[Any, ...] | None = PrivateAttr(default=None)

    @model_validator(mode="before")
    @classmethod
    def _fold_standard_parameters(cls, data: Any) -> Any:
        """LangChain's standard parameters flat (see ``parameters.fold_standard_parameters``)."""
        return fold_standard_parameters(cls, data)

    @field_validator("backend")
    @classmethod
    def _check_backend(cls, value: Any) -> Any:
        check_backend_spec(value)
        return value

    @field_validator("judge")
    @classmethod
    def _check_judge(cls, value: Any) -> Any:
        check_judge_spec(value)
        return value

    @field_validator("answers")
    @classmethod
    def _check_answers(cls, value: Any) -> Any:
        AnswerRules.resolve(value)
        return value

    # -- identity --------------------------------------------------------------------------------
    @property
    def _llm_type(self) -> str:
        return "deepprune"

    @property
    def resolved_model_name(self) -> str:
        if self.model_name:
            return self.model_name
        if isinstance(self.backend, str):
            return self.backend
        return getattr(self.backend, "model_name", type(self.backend).__name__)

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {
            "model_name": self.resolved_model_name,
            "judge": self.judge if isinstance(self.judge, str) else type(self.judge).__name__,
            "pruning": self.pruning.model_dump(mode="json"),
            "sampling": self.sampling.model_dump(mode="json"),
        }

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = LangSmithParams(
            ls_provider="deepprune",
            ls_model_name=self.resolved_model_name,
            ls_model_type="chat",
            ls_temperature=self.sampling.temperature,
            ls_max_tokens=self.sampling.max_tokens,
        )
        if stop or self.sampling.stop:
            params["ls_stop"] = list(stop or self.sampling.stop)
        return params

    # -- unsupported capabilities ----------------------------------------------------------------
    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> Any:
        raise NotImplementedError(
            "DeepPruneReasoner votes over the final answers of parallel reasoning traces; tool "
            "calls cannot be voted on, so it does not support tools. Use it for the reasoning "
            "step and a regular chat model for tool use."
        )

    def with_structured_output(self, schema: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(
            "DeepPruneReasoner does not support structured output: its answer is the majority "
            "vote over free-form reasoning traces. Parse the answer downstream, or pass "
            "answers=AnswerRules.custom(...) to control how answers are extracted and compared."
        )

    # -- running -----------------------------------------------------------------------------------
    def _should_stream(
        self,
        *,
        async_api: bool,
        run_manager: CallbackManagerForLLMRun | AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> bool:
        """Never take LangChain's streaming branch inside invoke/ainvoke/batch.

        With a streaming handler attached (``astream_events``, LangGraph's "messages" stream),
        ``BaseChatModel._(a)generate_with_cache`` calls ``_(a)stream`` *without* the run manager,
        which would cut the pruning events and the judge's child runs off the model run. The answer
        is a single chunk anyway, so ``_(a)generate`` runs instead (with the run manager) and reports
        that chunk to the streaming handlers itself (``_report_chunk``). ``stream``/``astream`` take
        the same path (see ``stream``); ``_(a)stream`` remain for LangChain's other streaming
        protocols (``stream_events(version="v3")`` hands them the run manager).
        """
        if run_manager is not None:
            return False
        return super()._should_stream(async_api=async_api, run_manager=run_manager, **kwargs)

    def _reports_chunk(
        self, run_manager: CallbackManagerForLLMRun | AsyncCallbackManagerForLLMRun, **kwargs: Any
    ) -> bool:
        """Whether the generate path must hand its answer to the handlers as a streamed token."""
        if STREAM_CALL.get():
            return True
        return super()._should_stream(async_api=True, run_manager=run_manager, **kwargs)

    def stream(
        self,
        input: LanguageModelInput,
        config: RunnableConfig | None = None,
        *,
        stop: list[str] | None = None,
        **kwargs: Any,
    ) -> Iterator[AIMessageChunk]:
        """The answer as one chunk, computed on the generate path so events stay on the model run.

        LangChain's ``BaseChatModel.stream`` calls ``_stream`` without the run manager it has just
        opened, which would cut the pruning events and the judge's child runs off the model run (and
        off ``astream_events`` over the bare model). The answer only exists once the traces have
        voted, so nothing is lost by running ``invoke`` instead: the handlers see the same run
        start, the answer as its one token, and the run end.
        """
        token = STREAM_CALL.set(True)
        try:
            message = self.invoke(input, config, stop=stop, **kwargs)
        finally:
            STREAM_CALL.reset(token)
        yield as_last_chunk(message)

    async def astream(
        self,
        input: LanguageModelInput,
        config: RunnableConfig | None = None,
        *,
        stop: list[str] | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[AIMessageChunk]:
        """Async ``stream``: one chunk, on the generate path (see ``stream`` for why).

        The chunk is yielded while the run is still open (``ChunkHandoff``); a cached answer,
        which skips ``_agenerate``, is yielded once the call returns.
        """
        handoff = ChunkHandoff()
        token = STREAM_CALL.set(handoff)
        try:
            call = asyncio.ensure_future(self.ainvoke(input, config, stop=stop, **kwargs))
        finally:
            STREAM_CALL.reset(token)
        try:
            delivered = asyncio.ensure_future(handoff.delivered.wait())
            await asyncio.wait({call, delivered}, return_when=asyncio.FIRST_COMPLETED)
            delivered.cancel()
            if handoff.chunk is not None:
                yield handoff.chunk
                handoff.consumed.set()
            message = await call
            if handoff.chunk is None:
                yield as_last_chunk(message)
        finally:
            handoff.consumed.set()
            if not call.done():
                # Before the answer: the caller gave up (cancelled, or closed the stream), so stop
                # the run; the driver aborts every live trace. After it: let the run end cleanly.
                if handoff.chunk is None:
                    call.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await call

    def _deepprune(self) -> DeepPrune:
        """Created on first use: constructing the model never loads an engine.

        Rebuilt when the backend, the judge or the configs differ from the cached runner's
        (``model_copy(update=...)`` copies private attributes, so a copy would otherwise keep the
        original's engines and settings).
        """
        runner = self._runner
        # Compare the specs as given: resolved AnswerRules hold functools.partial objects, which
        # never compare equal, so comparing those would rebuild the runner on every call. Backend
        # and judge compare by spec string, or by identity for objects (two equal judges are still
        # two judges); an id cannot be reused while the cached runner holds the object.
        engines = tuple(
            value if isinstance(value, str) else (type(value), id(value))
            for value in (self.backend, self.judge)
        )
        spec = (*engines, self.pruning, self.sampling, self.answers)
        if runner is None or self._runner_spec != spec:
            runner = DeepPrune(
                resolve_backend(self.backend),
                resolve_judge(self.judge),
                self.pruning,
                sampling=self.sampling,
                answers=self.answers,
            )
            self._runner, self._runner_spec = runner, spec
        return runner

    async def arun(
        self,
        messages: Sequence[BaseMessage] | str,
        *,
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | AsyncCallbackManagerForLLMRun | None = None,
        stream_writer: Callable[[dict[str, Any]], None] | None = None,
        **kwargs: Any,
    ) -> DeepPruneResult:
        """Run DeepPrune and return the full result (the chat-model methods wrap this).

        Every event of the run is dispatched as a LangChain custom event on ``run_manager``'s run
        (the chat-model methods pass theirs), so a callback handler in the call's config receives
        it; that is how a chat-model call sends its events elsewhere (``deepprune_langgraph``'s
        node adds a handler that writes them to the graph's custom stream). ``stream_writer``, for
        direct callers of this method, is also called with ``{"event": name, "data": payload}``
        for each event, from the loop the run executes on.
        """
        if kwargs:
            raise TypeError(f"DeepPruneReasoner got unexpected arguments: {sorted(kwargs)}")
        if isinstance(messages, str):
            messages = [HumanMessage(messages)]
        prompt = messages_to_prompt(messages)
        runner = self._deepprune()
        sampling = runner.sampling
        if stop:
            sampling = sampling.model_copy(update={"stop": tuple(stop)})
        judge: Judge = runner.judge
        if run_manager is not None:
            judge = TracedJudge(judge, child_manager(run_manager, NOSTREAM_TAG), str(self.judge))
        bridge = EventBridge(run_manager, stream_writer)
        call = DeepPrune(
            runner.backend, judge, runner.config, sampling=sampling, answers=runner.answers
        )
        try:
            result = await call.run(prompt, listeners=[bridge])
        finally:
            await bridge.aclose()
        return _answer_or_timeout(result, call.config.deadline_s)

    def _message(self, result: DeepPruneResult, chunk: bool = False) -> AIMessage:
        text = result.text or ""
        content, thinking = split_thinking(text)
        backend: GenerationBackend = self._deepprune().backend
        totals = result.totals
        content_tokens = backend.count_prompt_tokens(content) if content else 0
        started = len(result.traces)
        input_tokens = totals.prompt_tokens * started + totals.resume_prefill_tokens
        usage = UsageMetadata(
            input_tokens=input_tokens,
            output_tokens=totals.decoded_tokens,
            total_tokens=input_tokens + totals.decoded_tokens,
            input_token_details={
                # Every trace after the first reads the prompt from the prefix cache, and a
                # resumed trace reads its own earlier tokens.
                "cache_read": totals.prompt_tokens * max(0, started - 1)
                + totals.resume_prefill_tokens
            },
            output_token_details={"reasoning": max(0, totals.decoded_tokens - content_tokens)},
        )
        additional = {"reasoning_content": thinking} if thinking else {}
        metadata = {
            "model_name": self.resolved_model_name,
            "model_provider": "deepprune",
            "finish_reason": "stop",
            "deepprune": result.summary(),
        }
        cls = AIMessageChunk if chunk else AIMessage
        message = cls(
            content=content,
            additional_kwargs=additional,
            usage_metadata=usage,
            response_metadata=metadata,
        )
        if isinstance(message, AIMessageChunk):
            message.chunk_position = "last"
        return message

    @staticmethod
    def _report_chunk(message: AIMessage, run_id: Any) -> ChatGenerationChunk:
        """The answer as the one chunk a streaming handler would have seen (see ``_should_stream``).

        Chunk and message share LangChain's run-derived id, so consumers that de-duplicate by id
        (LangGraph's "messages" stream) report the answer once.
        """
        message.id = message.id or f"{LC_ID_PREFIX}-{run_id}"
        return ChatGenerationChunk(message=as_last_chunk(message))

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        result = await self.arun(messages, stop=stop, run_manager=run_manager, **kwargs)
        message = self._message(result)
        if run_manager is not None and self._reports_chunk(run_manager, **kwargs):
            chunk = self._report_chunk(message, run_manager.run_id)
            await run_manager.on_llm_new_token(message.text, chunk=chunk)
            handoff = STREAM_CALL.get()
            if isinstance(handoff, ChunkHandoff):
                assert isinstance(chunk.message, AIMessageChunk)
                await handoff.deliver(chunk.message)
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        result = run_sync(self.arun(messages, stop=stop, run_manager=run_manager, **kwargs))
        message = self._message(result)
        if run_manager is not None and self._reports_chunk(run_manager, **kwargs):
            chunk = self._report_chunk(message, run_manager.run_id)
            run_manager.on_llm_new_token(message.text, chunk=chunk)
        return ChatResult(generations=[ChatGeneration(message=message)])

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        """One chunk: the answer only exists once the traces have voted.

        Progress (every pruning decision) streams as LangChain custom events meanwhile, where a run
        manager is available.
        """
        result = await self.arun(messages, stop=stop, run_manager=run_manager, **kwargs)
        chunk = self._message(result, chunk=True)
        yield ChatGenerationChunk(message=chunk)

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        result = run_sync(self.arun(messages, stop=stop, run_manager=run_manager, **kwargs))
        yield ChatGenerationChunk(message=self._message(result, chunk=True))


def _answer_or_timeout(result: DeepPruneResult, deadline_s: float | None) -> DeepPruneResult:
    """A chat model answers or raises, like ChatOpenAI: never an empty message for a timeout.

    When the deadline passed with no trace finished there is nothing to answer with, so this raises
    ``DeepPruneTimeoutError`` (a ``TimeoutError``, which ``with_retry`` and ``with_fallbacks``
    act on) with the partial result. Finished traces at the deadline do vote: that answer is
    returned, flagged ``fallback="deadline"`` in the summary.
    """
    if result.fallback == "deadline" and result.text is None:
        decoded = result.totals.decoded_tokens
        raise DeepPruneTimeoutError(
            f"the run's deadline ({deadline_s} s) passed before any of its "
            f"{len(result.traces)} traces finished ({decoded} tokens decoded); raise `timeout` "
            "(pruning.deadline_s) or lower max_tokens",
            partial_result=result,
        )
    return result


__all__ = ["DeepPruneReasoner"]
