"""``VLLMBackend``: DeepPrune's ``GenerationBackend`` over vLLM's V1 async engine (``AsyncLLM``).

What it does per trace:

* renders the prompt to token ids by the rule every DeepPrune backend shares
  (``deepprune_lc.backends.rendering``: chat messages through the model's chat template, plain text
  encoded as it is, as vLLM's OpenAI server does) and caches them, so N traces of one question
  tokenise it once;
* submits ``prompt ids + resume_token_ids`` as token ids: a parked trace resumes from the exact ids
  it produced (a prefix-cache hit), never from re-tokenised text, and those ids are not re-emitted;
* streams ``RequestOutputKind.DELTA`` outputs as ``TraceDelta`` (token ids, text, finish reason and,
  when asked, the top-k log-probabilities of every token);
* parks and aborts with ``AsyncLLM.abort``: vLLM drops the request from its output table at once and
  sends one last ``"abort"`` output (carrying any tokens it had already produced but not delivered),
  so a parked trace keeps exactly what the engine produced before the abort took effect.

Event loops. The engine serves on one loop (``SharedEngine.loop``, DeepPrune's background loop). A
stream opened on that loop iterates the engine directly. A stream opened on any other loop (an
``ainvoke`` from the caller's own loop) is *bridged*: a pump task on the engine loop iterates the
engine and hands deltas to the caller's loop through a thread-safe channel that wakes the caller at
most once per batch of deltas; ``abort`` and closing the stream are forwarded the same way.

Abort races. An abort can reach the engine before the request does (vLLM would ignore it). The
backend remembers aborts for every stream it has open: a stream aborted before submission ends at
once without submitting, and one whose abort vLLM missed is aborted again on its first output.

Failures. What vLLM raises while serving a request is raised as ``deepprune_lc.core.BackendError``;
its ``EngineDeadError`` (the engine-core process died) as ``BackendDeadError``. ``astart`` /
``aclose`` (the ``Lifecycle`` port) start the shared engine and shut it down from any loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import weakref
from collections import deque
from collections.abc import AsyncGenerator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deepprune_lc.backends import PromptRenderer
from deepprune_lc.core import BackendError, FinishReason, Prompt, TraceDelta, TraceRequest
from deepprune_vllm.engine import (
    SharedEngine,
    engine_failures,
    normalise_engine_args,
    shared_engine,
)
from deepprune_vllm.sampling import build_sampling_params, check_sampling_overrides

if TYPE_CHECKING:
    from vllm.v1.engine.async_llm import AsyncLLM

__all__ = ["VLLMBackend"]

_END = object()
#: vLLM's finish reasons that end a trace normally, as the port's ``FinishReason``. "repetition"
#: (vLLM stopped a looping output) is the engine's own stop rule; "error" is raised instead.
_FINISH_REASONS: dict[str, FinishReason] = {
    "stop": "stop",
    "length": "length",
    "abort": "abort",
    "repetition": "stop",
}


class VLLMBackend:
    """Streams, parks and resumes DeepPrune traces on a shared vLLM ``AsyncLLM``.

    >>> backend = VLLMBackend("Qwen/Qwen3-8B", max_model_len=8192, gpu_memory_utilization=0.85)
    >>> reasoner = DeepPruneReasoner(backend=backend, judge="lexical")

    ``engine_args`` and extra keywords are vLLM engine arguments (``AsyncEngineArgs`` fields:
    ``dtype``, ``tensor_parallel_size``, ``gpu_memory_utilization``, ``max_model_len``, ...), checked
    now; ``enable_prefix_caching`` is on unless turned off. Backends with the same engine arguments
    share one engine, created on first use. ``sampling_overrides`` are extra ``SamplingParams``
    fields for every request (``{"ignore_eos": True}``, ``{"min_p": 0.05}``), checked now.
    ``logprobs=k`` returns the top-k log-probabilities of every generated token.
    ``chat_template_kwargs`` go to the chat template (``{"enable_thinking": True}`` for Qwen3).
    """

    def __init__(
        self,
        model: str,
        *,
        engine_args: Mapping[str, Any] | None = None,
        model_name: str | None = None,
        logprobs: int | None = None,
        sampling_overrides: Mapping[str, Any] | None = None,
        chat_template_kwargs: Mapping[str, Any] | None = None,
        **engine_kwargs: Any,
    ) -> None:
        if logprobs is not None and (
            isinstance(logprobs, bool) or not isinstance(logprobs, int) or logprobs < 1
        ):
            raise ValueError(f"logprobs: expected None or an integer >= 1, got {logprobs!r}")
        self.engine_args = normalise_engine_args(model, engine_args, **engine_kwargs)
        self.model = model
        # A local model (directory or file) is reported by its name: its path stays here.
        self.model_name = model_name or (Path(model).name if Path(model).exists() else model)
        self.logprobs = logprobs
        self.sampling_overrides = check_sampling_overrides(sampling_overrides)
        self.chat_template_kwargs = dict(chat_template_kwargs or {})
        #: The engine, shared with every backend built from the same engine arguments.
        self.engine: SharedEngine = shared_engine(self.engine_args)
        self._tokenizer_lock = threading.Lock()
        self._fallback_tokenizer: Any = None
        self._renderer = PromptRenderer(
            self._tokenizer,
            chat_template_kwargs=self.chat_template_kwargs,
            model_name=self.model_name,
        )
        # Streams open in this backend, and those of them an abort was requested for. Touched from
        # the engine loop and (for bridged streams) the caller's loop: single set operations only.
        self._open: set[str] = set()
        self._abort_requested: set[str] = set()

    def __repr__(self) -> str:
        return f"VLLMBackend({self.model!r}, engine={self.engine!r})"

    # ------------------------------------------------------------------ protocol

    def stream(self, request: TraceRequest) -> AsyncGenerator[TraceDelta, None]:
        """Start the request and yield its deltas (see the module docstring).

        Returns an async generator: ``aclose()`` (or cancelling its consumer) aborts the request.
        """
        if self.engine.on_loop():
            return self._engine_stream(request)
        return self._bridged_stream(request)

    async def abort(self, request_id: str) -> None:
        """Stop a request as soon as possible; a no-op for unknown or finished requests."""
        if self.engine.on_loop():
            await self._abort_on_engine_loop(request_id)
        else:
            await asyncio.wrap_future(
                asyncio.run_coroutine_threadsafe(
                    self._abort_on_engine_loop(request_id), self.engine.loop
                )
            )

    def count_prompt_tokens(self, prompt: Prompt) -> int:
        """Tokens the prompt occupies once templated (what the engine prefills)."""
        _check_text(prompt)
        return self._renderer.count(prompt)

    # ------------------------------------------------------------------ lifecycle

    async def astart(self) -> None:
        """``Lifecycle``: start the shared engine now and wait until it is up (any loop)."""
        await self.engine.astart()

    async def aclose(self) -> None:
        """``Lifecycle``: shut the shared engine down (every backend and judge using it)."""
        await self.engine.ashutdown()

    # ------------------------------------------------------------------ inspection and control

    def live_requests(self) -> set[str]:
        """Ids of the requests the shared engine is still serving (from vLLM's own state)."""
        return self.engine.live_requests()

    async def core_has_work(self) -> bool:
        """Whether the engine-core process still schedules anything (asks the process itself)."""
        return await self.engine.core_has_work()

    def start(self, timeout: float | None = None) -> None:
        """Start the shared engine now and block until it is up (otherwise: on first use)."""
        self.engine.start(timeout)

    def shutdown(self) -> None:
        """Shut the shared engine down (every backend using it); a later use starts a new one."""
        self.engine.shutdown()

    async def ashutdown(self) -> None:
        """``shutdown`` for coroutines, on any loop (the same as ``aclose``)."""
        await self.engine.ashutdown()

    def prompt_token_ids(self, prompt: Prompt, *, cache: bool = True) -> list[int]:
        """``PromptTokenIds``: the ids as submitted (``deepprune_lc.backends.render_prompt_ids``).

        Cached per prompt: N traces of one question (and every resume) tokenise it once.
        ``cache=False`` is for one-off prompts (a judge's pair prompts) that would only evict the
        ones worth keeping.
        """
        return list(self._renderer.ids(prompt, cache=cache))

    # ------------------------------------------------------------------ engine-loop side

    async def _engine_stream(self, request: TraceRequest) -> AsyncGenerator[TraceDelta, None]:
        """The stream itself; runs on the engine loop."""
        request_id = request.request_id
        self._open.add(request_id)
        try:
            engine = await self.engine.engine()
            resume = request.resume_token_ids
            if len(resume) >= request.sampling.max_tokens:
                yield TraceDelta((), "", "length")  # resumed at (or past) its token budget
                return
            if request_id in self._abort_requested:
                yield TraceDelta((), "", "abort")  # aborted before it reached the engine
                return
            _check_text(request.prompt)
            prompt_ids = self._renderer.ids(request.prompt)
            # vLLM serialises max_tokens as a 64-bit integer: 10**30 overflowed it and left the
            # request in the engine's table for good. No trace outgrows the model length anyway.
            room = _max_model_len(engine) - len(prompt_ids)
            if room <= len(resume):
                yield TraceDelta((), "", "length")  # no room left in the model's context
                return
            sampling = request.sampling
            if sampling.max_tokens > room:
                sampling = sampling.model_copy(update={"max_tokens": room})
            params = build_sampling_params(
                sampling,
                seed=request.seed,
                resumed_tokens=len(resume),
                logprobs=self.logprobs,
                overrides=self.sampling_overrides,
            )
            outputs = engine.generate(
                {"prompt_token_ids": [*prompt_ids, *resume]}, params, request_id=request_id
            )
            top_k = self.logprobs
            abort_checked = False
            try:
                with engine_failures(f"request {request_id}"):
                    async for output in outputs:
                        completion = output.outputs[0]
                        finish = (
                            _finish_reason(completion.finish_reason, request_id)
                            if output.finished
                            else None
                        )
                        yield TraceDelta(
                            completion.token_ids,
                            completion.text,
                            finish,
                            _top_logprobs(completion.logprobs, top_k) if top_k else None,
                        )
                        if (
                            not abort_checked
                            and finish is None
                            and request_id in self._abort_requested
                        ):
                            # The abort arrived before vLLM knew the request and was lost: repeat.
                            abort_checked = True
                            await engine.abort(request_id)
            finally:
                await outputs.aclose()  # a no-op when finished; aborts the request otherwise
        finally:
            self._open.discard(request_id)
            self._abort_requested.discard(request_id)

    async def _abort_on_engine_loop(self, request_id: str) -> None:
        if request_id in self._open:
            self._abort_requested.add(request_id)
        engine = self.engine.engine_nowait()
        if engine is not None:
            with engine_failures(f"abort of {request_id}"):
                await engine.abort(request_id)

    # ------------------------------------------------------------------ bridge to other loops

    async def _bridged_stream(self, request: TraceRequest) -> AsyncGenerator[TraceDelta, None]:
        """The stream seen from a loop other than the engine's."""
        request_id = request.request_id
        # Registered before anything can suspend, so an abort racing the pump's start is kept.
        self._open.add(request_id)
        channel = _Channel(asyncio.get_running_loop())
        engine_loop = self.engine.loop
        asyncio.run_coroutine_threadsafe(self._pump(request, channel), engine_loop)
        ended = False
        try:
            while True:
                item = await channel.get()
                if item is _END:
                    ended = True
                    return
                if isinstance(item, BaseException):
                    ended = True
                    raise item
                yield item
        finally:
            if not ended:
                # The consumer stopped early (closed or cancelled): stop the pump, which aborts the
                # request, and wait until it has, so no request outlives its stream.
                closing = asyncio.run_coroutine_threadsafe(_close_pump(channel), engine_loop)
                await asyncio.wait([asyncio.wrap_future(closing)])
            self._open.discard(request_id)
            self._abort_requested.discard(request_id)

    async def _pump(self, request: TraceRequest, channel: _Channel) -> None:
        """On the engine loop: iterate the engine stream into the channel."""
        channel.task = asyncio.current_task()
        if channel.closed:
            return
        try:
            async for delta in self._engine_stream(request):
                channel.put(delta)
        except Exception as exc:  # handed to the consumer, raised there
            channel.put(exc)
        else:
            channel.put(_END)

    # ------------------------------------------------------------------ tokenizer

    @property
    def tokenizer(self) -> Any:
        """The engine's tokenizer once it runs; before that, the same files through transformers."""
        return self._tokenizer()

    def _tokenizer(self) -> Any:
        engine: AsyncLLM | None = self.engine.engine_nowait()
        if engine is not None:
            return engine.get_tokenizer()
        with self._tokenizer_lock:
            if self._fallback_tokenizer is None:
                from transformers import AutoTokenizer

                args = self.engine_args
                self._fallback_tokenizer = AutoTokenizer.from_pretrained(
                    args.get("tokenizer") or args["model"],
                    revision=args.get("tokenizer_revision") or args.get("revision"),
                    trust_remote_code=bool(args.get("trust_remote_code", False)),
                )
            return self._fallback_tokenizer


class _Mailbox:
    """Deltas for every bridged stream consumed on one loop, delivered in bursts.

    ``post`` (engine thread) appends and schedules one wake-up of the consumer loop unless one is
    pending, so an engine step that yields a delta for each of N streams costs one cross-thread
    call, not N.
    """

    __slots__ = ("__weakref__", "_items", "_loop", "_wake_pending")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._items: deque[tuple[_Channel, object]] = deque()
        self._wake_pending = False

    def post(self, channel: _Channel, item: object) -> None:
        self._items.append((channel, item))
        if not self._wake_pending:
            self._wake_pending = True
            # RuntimeError: the consumer's loop is closed, nobody is listening.
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._deliver)

    def _deliver(self) -> None:
        # Clear the flag first: a post racing this drain either lands in it or schedules anew.
        self._wake_pending = False
        items = self._items
        while items:
            channel, item = items.popleft()
            channel.deliver(item)


_mailboxes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Mailbox] = (
    weakref.WeakKeyDictionary()
)
_mailboxes_lock = threading.Lock()


def _mailbox(loop: asyncio.AbstractEventLoop) -> _Mailbox:
    with _mailboxes_lock:
        mailbox = _mailboxes.get(loop)
        if mailbox is None:
            mailbox = _mailboxes[loop] = _Mailbox(loop)
        return mailbox


class _Channel:
    """One bridged stream: the engine side ``put``s, the consumer's loop ``get``s."""

    __slots__ = ("_items", "_mailbox", "_ready", "closed", "task")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._mailbox = _mailbox(loop)
        self._items: deque[Any] = deque()
        self._ready = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.closed = False

    def put(self, item: object) -> None:
        """Engine thread."""
        self._mailbox.post(self, item)

    def deliver(self, item: object) -> None:
        """Consumer loop."""
        self._items.append(item)
        self._ready.set()

    async def get(self) -> Any:
        items = self._items
        while not items:
            self._ready.clear()
            await self._ready.wait()
        return items.popleft()


async def _close_pump(channel: _Channel) -> None:
    """On the engine loop: stop a pump whose consumer has gone (cancelling it aborts the request)."""
    channel.closed = True
    task = channel.task
    if task is not None and not task.done():
        task.cancel()
        await asyncio.wait([task])


def _max_model_len(engine: AsyncLLM) -> int:
    return int(engine.model_config.max_model_len)


def _check_text(prompt: Prompt) -> None:
    """Refuse a prompt that is not valid text, naming the problem (the tokenizer raises a bare
    ``TypeError`` on a lone surrogate, a code point no UTF-8 text can hold)."""
    texts = [prompt] if isinstance(prompt, str) else [_content_text(m) for m in prompt]
    for index, text in enumerate(texts):
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            where = "the prompt" if isinstance(prompt, str) else f"message {index} of the prompt"
            raise ValueError(
                f"{where} holds a lone surrogate {text[exc.start]!r} at character {exc.start}: "
                "not valid text (decode bytes with errors='replace' or drop it)"
            ) from None


def _content_text(message: Any) -> str:
    content = message.get("content", "") if isinstance(message, Mapping) else message
    return content if isinstance(content, str) else ""


def _finish_reason(reason: str | None, request_id: str) -> FinishReason:
    """vLLM's finish reason of a finished output as the port's; an "error" finish is raised."""
    finish = _FINISH_REASONS.get(reason or "")
    if finish is None:
        raise BackendError(f"request {request_id}: vLLM finished it with {reason!r}")
    return finish


def _top_logprobs(entries: Any, k: int) -> list[list[float]] | None:
    """Per token, the k highest log-probabilities, best first (vLLM also adds the sampled token's
    entry when it ranks below k; it is left out so every row has k values)."""
    if entries is None:
        return None
    rows = []
    for by_token in entries:
        ranked = sorted(by_token.values(), key=lambda lp: lp.rank if lp.rank is not None else k + 1)
        rows.append([float(lp.logprob) for lp in ranked[:k]])
    return rows
