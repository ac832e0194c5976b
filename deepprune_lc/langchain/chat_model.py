"""``DeepPruneReasoner``: DeepPrune as a LangChain chat model, a drop-in for a single LLM call.

>>> model = DeepPruneReasoner(backend="vllm:Qwen/Qwen3-8B", judge="lexical")
>>> model.invoke("What is the sum of the first 100 positive integers?").content

The returned ``AIMessage`` carries the winning trace's final response as ``content`` (thinking inside
``<think>`` tags goes to ``additional_kwargs["reasoning_content"]``), ``usage_metadata`` totalled
over every trace (pruned ones included), and ``response_metadata["deepprune"]``, the run's summary;
``llm_output`` (what callbacks and ``generate`` see) has the same usage in OpenAI's shape, as
ChatOpenAI fills it.
"""

from __future__ import annotations

import asyncio
import contextlib
import warnings
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from functools import cached_property
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
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from deepprune_lc.backends.bounded import BoundedBackend
from deepprune_lc.core.answers import AnswerRules
from deepprune_lc.core.config import PruningConfig, SamplingConfig
from deepprune_lc.core.errors import DeepPruneTimeoutError
from deepprune_lc.core.ports import GenerationBackend, Judge, PromptTokenIds
from deepprune_lc.core.result import DeepPruneResult
from deepprune_lc.langchain.callbacks import (
    NOSTREAM_TAG,
    EventBridge,
    TracedJudge,
    child_manager,
)
from deepprune_lc.langchain.messages import messages_to_prompt, split_thinking
from deepprune_lc.langchain.parameters import (
    SAMPLING_PARAMETERS,
    call_configs,
    effective_settings,
    fold_standard_parameters,
    split_call_parameters,
)
from deepprune_lc.langchain.streaming import STREAM_CALL, ChunkHandoff, as_last_chunk
from deepprune_lc.runtime.loop import run_sync
from deepprune_lc.runtime.registry import (
    check_backend_spec,
    check_judge_spec,
    resolve_backend,
    resolve_judge,
    spec_display_name,
)
from deepprune_lc.runtime.runner import DeepPrune, with_probe_clustering


class DeepPruneReasoner(BaseChatModel):
    """Parallel reasoning with DeepPrune behind the chat-model interface.

    ``backend`` and ``judge`` are objects implementing the ports, or strings naming them:
    ``"replay:<pool.jsonl>"``, ``"replay:demo"``, ``"vllm:<model>"``, ``"transformers:<model>"``;
    judges ``"lexical"``, ``"embedding"``, ``"vllm:<judge model>"``. Engines are created on first use
    and shared by every reasoner naming the same spec.

    LangChain's standard parameters are fields, as on any LangChain chat model: ``temperature``,
    ``top_p``, ``top_k``, ``max_tokens``, ``stop`` and ``timeout`` (the run's wall-clock budget,
    ``pruning.deadline_s``). ``None`` means "use ``sampling`` / ``pruning``"; a set value wins over
    them. A call may set the same names (``invoke(q, temperature=0.2)``, ``bind(max_tokens=16)``),
    winning over the fields for that call, and ``model_copy(update=...)`` and
    ``configurable_fields`` reach them too; everything is validated when the call starts, by the
    configs' own rules (``parameters.py``).
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
    temperature: float | None = Field(
        default=None, description="Sampling temperature; None: sampling.temperature."
    )
    top_p: float | None = Field(default=None, description="Nucleus sampling; None: sampling.top_p.")
    top_k: int | None = Field(default=None, description="Top-k sampling; None: sampling.top_k.")
    max_tokens: int | None = Field(
        default=None, description="Tokens per trace at most; None: sampling.max_tokens."
    )
    stop: str | list[str] | None = Field(
        default=None, description="Stop string(s) for every trace; None: sampling.stop."
    )
    timeout: float | None = Field(
        default=None,
        description="The run's wall-clock budget in seconds; None: pruning.deadline_s.",
    )

    max_traces_in_flight: int | None = Field(
        default=None,
        ge=1,
        description=(
            "Streams open at once on the backend across every call of this model (batch, abatch, "
            "concurrent graph branches), shared fairly between questions; more wait their turn. "
            "None: no bound here (the engine queues what it cannot run)."
        ),
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
        """The name LangSmith and usage callbacks see: ``model_name``, else the backend's.

        A spec string is shown without local directories or options
        (``runtime.spec_display_name``: ``replay:/home/me/dev.jsonl`` -> ``replay:dev.jsonl``), so
        no path of this machine goes out with the runs; a backend object reports its own
        ``model_name`` (engines: the model, a local model directory by its name).
        """
        if self.model_name:
            return self.model_name
        if isinstance(self.backend, str):
            return spec_display_name(self.backend)
        return getattr(self.backend, "model_name", type(self.backend).__name__)

    @property
    def resolved_judge_name(self) -> str:
        """The judge as runs report it (a spec string shown as ``resolved_model_name`` shows one)."""
        if isinstance(self.judge, str):
            return spec_display_name(self.judge)
        return str(getattr(self.judge, "model_name", type(self.judge).__name__))

    @property
    def _identifying_params(self) -> dict[str, Any]:
        """The model's effective settings: ``sampling`` / ``pruning`` with the flat fields over them."""
        sampling, pruning = effective_settings(self.sampling, self.pruning, self._flat_parameters())
        return {
            "model_name": self.resolved_model_name,
            "judge": self.resolved_judge_name,
            "pruning": pruning,
            "sampling": sampling,
        }

    def _flat_parameters(self) -> dict[str, Any]:
        """The flat standard fields as set on this instance (``None``: not set)."""
        return {name: getattr(self, name) for name in (*SAMPLING_PARAMETERS, "timeout")}

    def _call_layers(self, stop: list[str] | None, kwargs: dict[str, Any]) -> list[dict[str, Any]]:
        """What lies over ``sampling`` / ``pruning`` for one call: the fields, then the call's values
        (unknown keywords left out: the call itself refuses them)."""
        call = {k: v for k, v in kwargs.items() if k in (*SAMPLING_PARAMETERS, "timeout")}
        if stop:
            call["stop"] = stop
        return [self._flat_parameters(), call]

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        """LangSmith's standard parameters with this call's values (``invoke(q, temperature=...)``)."""
        sampling, _ = effective_settings(
            self.sampling, self.pruning, *self._call_layers(stop, kwargs)
        )
        params = LangSmithParams(
            ls_provider="deepprune",
            ls_model_name=self.resolved_model_name,
            ls_model_type="chat",
            ls_temperature=sampling["temperature"],
            ls_max_tokens=sampling["max_tokens"],
        )
        if sampling["stop"] and isinstance(sampling["stop"], list):
            params["ls_stop"] = sampling["stop"]
        return params

    def _get_invocation_params(
        self, stop: list[str] | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        """LangChain's invocation params, with ``sampling`` / ``pruning`` as this call runs them."""
        params = super()._get_invocation_params(stop=stop, **kwargs)
        params["sampling"], params["pruning"] = effective_settings(
            self.sampling, self.pruning, *self._call_layers(stop, kwargs)
        )
        return params

    # -- serialisation ---------------------------------------------------------------------------
    @classmethod
    def is_lc_serializable(cls) -> bool:
        """Serialisable with ``dumpd``/``dumps`` and back with ``load``/``loads``; no secrets.

        Spec strings (``backend="vllm:<model>"``, ``judge="lexical"``, ``answers="math"``) and the
        configs serialise as constructor arguments. An object (a backend, judge or ``AnswerRules``
        instance) cannot: it appears as LangChain's ``not_implemented`` marker, so ``dumpd`` still
        describes the model (tracing calls it on every run) and ``load`` refuses it, naming its class.
        """
        return True

    @cached_property
    def _serialized(self) -> dict[str, Any]:
        """What LangChain hands every callback (LangSmith's ``serialized``): ``dumpd(self)`` with the
        backend and judge shown as ``resolved_model_name`` / ``resolved_judge_name`` show them.

        A spec string may name a local file (``replay:/home/me/pool.jsonl``) and an object's repr a
        local model directory; neither goes out with the runs. ``dumpd(model)`` itself is
        unchanged: it is the round trip, for the caller's own storage.
        """
        serialized = dict(super()._serialized)
        kwargs = serialized.get("kwargs")
        if isinstance(kwargs, dict):
            kwargs = dict(kwargs)
            for name, shown in (
                ("backend", self.resolved_model_name),
                ("judge", self.resolved_judge_name),
            ):
                value = kwargs.get(name)
                if isinstance(value, str):
                    kwargs[name] = spec_display_name(value)
                elif isinstance(value, dict) and "repr" in value:
                    kwargs[name] = {**value, "repr": shown}
            serialized["kwargs"] = kwargs
        return serialized

    @classmethod
    def get_lc_namespace(cls) -> list[str]:
        """``["deepprune_lc", "langchain"]``: the public package, not the module that defines it, so
        a serialised reasoner loads whatever module the class lives in later (load with
        ``valid_namespaces=["deepprune_lc"]``)."""
        return ["deepprune_lc", "langchain"]

    @property
    def lc_attributes(self) -> dict[str, Any]:
        """The configs as JSON (pydantic models that are not LangChain ``Serializable``).

        Only the fields that differ from their defaults, as LangChain serialises a model's own
        fields: a config field added later takes its default on load (nested values are kept
        whole, so a prefix policy keeps its ``kind``).
        """
        return {
            "pruning": _non_default_json(self.pruning),
            "sampling": _non_default_json(self.sampling),
        }

    # -- token counting --------------------------------------------------------------------------
    def _counting_backend(self) -> GenerationBackend:
        """The backend (the one runs use: specs resolve to a shared instance), without resolving
        the judge, which counting must not load."""
        return resolve_backend(self.backend)

    def get_token_ids(self, text: str) -> list[int]:
        """Token ids of ``text`` by the backend's own tokenizer (never a download).

        The backend must offer ``PromptTokenIds`` (replay: ``RegexTokenizer``'s ids, its documented
        approximation; the engines: their model's tokenizer). ``custom_get_token_ids`` wins when set.
        """
        if self.custom_get_token_ids is not None:
            return self.custom_get_token_ids(text)
        if not text:
            return []
        backend = self._counting_backend()
        if not isinstance(backend, PromptTokenIds):
            raise NotImplementedError(
                f"{type(backend).__name__} does not expose token ids (PromptTokenIds); "
                "get_num_tokens and get_num_tokens_from_messages count with its "
                "count_prompt_tokens instead"
            )
        return list(backend.prompt_token_ids(text))

    def get_num_tokens(self, text: str) -> int:
        """Tokens of ``text`` as a plain prompt, by the backend's ``count_prompt_tokens``."""
        if self.custom_get_token_ids is not None:
            return len(self.custom_get_token_ids(text))
        if not text:
            return 0
        return self._counting_backend().count_prompt_tokens(text)

    def get_num_tokens_from_messages(
        self, messages: list[BaseMessage], tools: Sequence[Any] | None = None
    ) -> int:
        """Tokens of ``messages`` as the backend would see them, so ``trim_messages`` can use it.

        The messages become the chat prompt a call sends and the backend counts that prompt: on an
        engine, the rendered chat template (role markers and the generation prompt included); on
        replay, its tokenizer over the message contents. ``tools`` are ignored (with a warning, as
        LangChain's default does): this model takes none.
        """
        if tools:
            warnings.warn(
                "DeepPruneReasoner takes no tools: counting tokens ignores them", stacklevel=2
            )
        if self.custom_get_token_ids is not None:
            return super().get_num_tokens_from_messages(messages)
        if not messages:
            return 0
        return self._counting_backend().count_prompt_tokens(messages_to_prompt(messages))

    # -- unsupported capabilities ----------------------------------------------------------------
    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> Any:
        """Refused: tool calls cannot be majority-voted.

        Agent factories reach this at different times: LangGraph's ``create_react_agent`` binds
        the tools while building the graph, so building fails; LangChain's ``create_agent`` builds
        without touching the model (it reads neither this method nor ``profile`` then) and binds
        in its model node, so the agent's first call fails with this same error before the model
        is invoked: no trace is generated. Neither offers an earlier hook. Without tools both work.
        """
        message = (
            "DeepPruneReasoner votes over the final answers of parallel reasoning traces; tool "
            "calls cannot be voted on, so it does not support tools. Use it for the reasoning "
            "step and a regular chat model for tool use: in an agent (create_agent, "
            "create_react_agent), give the agent a tool-calling model and call DeepPruneReasoner "
            "from a tool or a graph node, or build the agent with no tools."
        )
        if kwargs.get("tool_choice") in ("any", "required"):
            # A forced tool call is how LangChain asks for structured output from a model that
            # has no native mode (create_agent's response_format binds its schema as a tool).
            message += (
                " If the tools are a structured-output schema (create_agent's response_format), "
                "that is not supported either: drop response_format and parse the answer "
                "downstream, or pass answers=AnswerRules.custom(...) to control how answers are "
                "extracted and compared."
            )
        raise NotImplementedError(message)

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
        # Created before the try and cancelled in its finally: a caller that cancels while this
        # waits would otherwise leave the wait pending ("Task was destroyed but it is pending!").
        delivered = asyncio.ensure_future(handoff.delivered.wait())
        try:
            await asyncio.wait({call, delivered}, return_when=asyncio.FIRST_COMPLETED)
            delivered.cancel()
            if handoff.chunk is not None:
                yield handoff.chunk
                handoff.consumed.set()
            message = await call
            if handoff.chunk is None:
                yield as_last_chunk(message)
        finally:
            delivered.cancel()
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
        spec = (*engines, self.pruning, self.sampling, self.answers, self.max_traces_in_flight)
        if runner is None or self._runner_spec != spec:
            backend = resolve_backend(self.backend)
            if self.max_traces_in_flight is not None:
                backend = BoundedBackend(backend, self.max_traces_in_flight)
            runner = DeepPrune(
                backend,
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

        ``kwargs`` are LangChain's standard parameters for this call only (``temperature``,
        ``top_p``, ``top_k``, ``max_tokens``, ``timeout``; ``stop`` has its own argument), over the
        model's fields and configs. They are validated before anything runs (``ValueError`` naming
        the parameter); any other keyword is a ``TypeError``. The cached runner is kept: the call
        runs a ``DeepPrune`` of its own with the merged configs.
        """
        call_parameters = split_call_parameters(kwargs)
        sampling, pruning = call_configs(
            self.sampling, self.pruning, *self._call_layers(stop, call_parameters)
        )
        if isinstance(messages, str):
            messages = [HumanMessage(messages)]
        prompt = messages_to_prompt(messages)
        runner = self._deepprune()
        judge: Judge = runner.judge
        # Before the judge is wrapped for tracing: the wrapper does not carry the probe judge's
        # clustering settings, and without them a probe judge would be asked for pair scores.
        pruning = with_probe_clustering(pruning, judge)
        if run_manager is not None:
            judge = TracedJudge(
                judge, child_manager(run_manager, NOSTREAM_TAG), self.resolved_judge_name
            )
        bridge = EventBridge(run_manager, stream_writer)
        call = DeepPrune(runner.backend, judge, pruning, sampling=sampling, answers=runner.answers)
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

    def _chat_result(self, message: AIMessage) -> ChatResult:
        """The generation plus ``llm_output`` as ChatOpenAI fills it (token usage, model name)."""
        return ChatResult(
            generations=[ChatGeneration(message=message)], llm_output=self._llm_output(message)
        )

    def _llm_output(self, message: AIMessage) -> dict[str, Any]:
        """``llm_output``: OpenAI-style ``token_usage``, model name and provider, and the summary.

        Older LangChain code (callbacks reading ``LLMResult.llm_output``, cost trackers) reads usage
        here rather than from ``usage_metadata``; the numbers are the same.
        """
        usage = message.usage_metadata
        assert usage is not None, "_message always sets usage_metadata"
        return {
            "token_usage": {
                "prompt_tokens": usage["input_tokens"],
                "completion_tokens": usage["output_tokens"],
                "total_tokens": usage["total_tokens"],
                "prompt_tokens_details": {
                    "cached_tokens": usage.get("input_token_details", {}).get("cache_read", 0)
                },
                "completion_tokens_details": {
                    "reasoning_tokens": usage.get("output_token_details", {}).get("reasoning", 0)
                },
            },
            "model_name": message.response_metadata["model_name"],
            "model_provider": "deepprune",
            "deepprune": message.response_metadata["deepprune"],
        }

    def _combine_llm_outputs(self, llm_outputs: list[dict[str, Any] | None], /) -> dict[str, Any]:
        """``generate``/``batch``'s ``llm_output``: token usage summed over the prompts (as
        ChatOpenAI does); each run's summary stays on its own message and ``llm_output``."""
        usage: dict[str, Any] = {}
        for output in llm_outputs:
            if output:
                _add_usage(usage, output.get("token_usage", {}))
        return {
            "token_usage": usage,
            "model_name": self.resolved_model_name,
            "model_provider": "deepprune",
        }

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
        return self._chat_result(message)

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
        return self._chat_result(message)

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


def _non_default_json(config: BaseModel) -> dict[str, Any]:
    """``config``'s top-level fields that differ from their defaults, as JSON."""
    fields = type(config).model_fields
    dumped = config.model_dump(mode="json")
    return {
        name: dumped[name]
        for name, field in fields.items()
        if getattr(config, name) != field.get_default(call_default_factory=True)
    }


def _add_usage(total: dict[str, Any], usage: dict[str, Any]) -> None:
    """Add an OpenAI-style usage dict into ``total`` (nested detail dicts included)."""
    for key, value in usage.items():
        if isinstance(value, dict):
            _add_usage(total.setdefault(key, {}), value)
        elif isinstance(value, int | float):
            total[key] = total.get(key, 0) + value


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
