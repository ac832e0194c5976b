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
import itertools
import threading
import time
import weakref
from collections import deque
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deepprune_lc.backends import (
    ProbeStats,
    PromptRenderer,
    box_end,
    check_probe_tokens,
    model_probe_reply,
    probe_suffix_text,
    think_block_open,
    think_tokens,
)
from deepprune_lc.core import (
    BackendError,
    FinishReason,
    ProbeReply,
    Prompt,
    TraceDelta,
    TraceRequest,
)
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
        # Per submitted trace (engine loop only): its prompt ids and the ids it holds so far, what
        # an answer probe continues from.
        self._traces: dict[str, _Trace] = {}
        self._probe_ids = itertools.count()
        self._think: tuple[tuple[int, int] | None] | None = None
        #: What the answer probes cost so far (``probe``).
        self.probe_stats = ProbeStats()

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

    # ------------------------------------------------------------------ answer probes

    async def probe(
        self, request_id: str, *, suffix: str | None = None, max_tokens: int = 20
    ) -> ProbeReply:
        """``AnswerProbing``: ask the running trace ``request_id`` for its answer now.

        A request of its own (id ``<request_id>-probe-<n>``, never the trace's): prompt ids + the
        ids the trace holds so far + the suffix's ids (``deepprune_lc.backends.probes``: the think
        block closed first where the tokenizer has one), decoded greedily for at most
        ``max_tokens`` tokens and stopped (aborted) once the box's brace closes. The trace is not
        touched: it keeps decoding in the same batch, and its seeded sampling has its own
        generator, so its ids are those of the trace left unprobed. ``prefill_tokens`` is the
        probe request's whole prompt (prompt + trace + suffix); vLLM's prefix cache serves most
        of it from the trace's own blocks, and how many it did (``RequestOutput.num_cached_tokens``)
        is added up in ``probe_stats.cached_tokens``. A probe with no room left in the context
        window answers ``unknown`` at no cost. ``KeyError`` when no trace ``request_id`` is
        streaming here.
        """
        check_probe_tokens(max_tokens)
        if self.engine.on_loop():
            return await self._probe_on_engine_loop(request_id, suffix, max_tokens)
        return await asyncio.wrap_future(
            asyncio.run_coroutine_threadsafe(
                self._probe_on_engine_loop(request_id, suffix, max_tokens), self.engine.loop
            )
        )

    def context_length(self) -> int | None:
        """Tokens a sequence (prompt + trace) may hold: the engine's ``max_model_len`` once it
        runs, before that the ``max_model_len`` engine argument (None when left to the model)."""
        engine = self.engine.engine_nowait()
        if engine is not None:
            return int(engine.model_config.max_model_len)
        value = self.engine_args.get("max_model_len")
        return None if value is None else int(value)

    async def _probe_on_engine_loop(
        self, request_id: str, suffix: str | None, max_tokens: int
    ) -> ProbeReply:
        trace = self._traces.get(request_id)
        if trace is None:
            raise KeyError(request_id)
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        started = time.perf_counter()
        engine = await self.engine.engine()
        held = list(trace.ids)  # what the trace holds now; it keeps growing meanwhile
        context = [*trace.prompt_ids, *held]
        tokenizer = engine.get_tokenizer()
        if self._think is None:
            self._think = (think_tokens(lambda t: tokenizer.encode(t, add_special_tokens=False)),)
        text_suffix = probe_suffix_text(
            suffix, close_think=think_block_open(self._think[0], context)
        )
        prompt = [*context, *tokenizer.encode(text_suffix, add_special_tokens=False)]
        room = int(engine.model_config.max_model_len) - len(prompt)
        if room <= 0:
            return ProbeReply("", len(held), unknown=True)  # no room left in the context window
        params = SamplingParams(
            temperature=0.0,
            max_tokens=min(max_tokens, room),
            n=1,
            output_kind=RequestOutputKind.DELTA,
        )
        probe_id = f"{request_id}-probe-{next(self._probe_ids)}"
        outputs = engine.generate({"prompt_token_ids": prompt}, params, request_id=probe_id)
        text, decoded, cached = "", 0, 0
        try:
            with engine_failures(f"probe of {request_id}"):
                async for output in outputs:
                    completion = output.outputs[0]
                    text += completion.text
                    decoded += len(completion.token_ids)
                    if output.num_cached_tokens is not None:
                        cached = int(output.num_cached_tokens)
                    end = box_end(text_suffix, text)
                    if end is not None:
                        text = text[:end]
                        break  # the box is closed: the rest is not the answer
        finally:
            await outputs.aclose()  # aborts the probe when it stopped early
        reply = model_probe_reply(
            text,
            at_tokens=len(held),
            prefill_tokens=len(prompt),
            decoded_tokens=decoded,
            started=started,
        )
        self.probe_stats.add(reply, cached_tokens=cached)
        return reply

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
        _check_text(prompt)
        return list(self._renderer.ids(prompt, cache=cache))

    # ------------------------------------------------------------------ engine-loop side

    async def _engine_stream(self, request: TraceRequest) -> AsyncGenerator[TraceDelta, None]:
        """The stream itself; runs on the engine loop."""
        request_id = request.request_id
        self._open.add(request_id)
        trace: _Trace | None = None
        try:
            engine = await self.engine.engine()
            resume = request.resume_token_ids
            budget = request.sampling.max_tokens
            if budget is not None and len(resume) >= budget:
                yield TraceDelta((), "", "length")  # resumed at (or past) its token budget
                return
            if request_id in self._abort_requested:
                yield TraceDelta((), "", "abort")  # aborted before it reached the engine
                return
            _check_text(request.prompt)
            prompt_ids = self._renderer.ids(request.prompt)
            max_model_len = _max_model_len(engine)
            if resume and len(prompt_ids) + len(resume) >= max_model_len:
                yield TraceDelta((), "", "length")  # resumed at the end of the context window
                return
            trace = self._traces[request_id] = _Trace(prompt_ids, list(resume))
            # No trace outgrows the model length: a larger budget is capped before it reaches vLLM
            # (10**30 overflowed vLLM's serialiser and left the request in its table for good).
            sampling = request.sampling
            room = max_model_len - len(prompt_ids)
            if sampling.max_tokens is not None and 0 < room < sampling.max_tokens:
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
                        trace.ids.extend(completion.token_ids)
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
            if trace is not None and self._traces.get(request_id) is trace:
                del self._traces[request_id]

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


@dataclass(eq=False, slots=True)
class _Trace:
    """A submitted trace as a probe sees it: its prompt ids and every id it holds so far (the
    resumed ids first, then those delivered by the engine)."""

    prompt_ids: Sequence[int]
    ids: list[int]


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
