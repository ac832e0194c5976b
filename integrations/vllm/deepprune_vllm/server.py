"""``VLLMServerBackend``: DeepPrune's ``GenerationBackend`` over running vLLM servers (``vllm serve``).

For users who already operate vLLM as a server (one, several, behind a router): the traces of a
run become streamed ``/v1/completions`` requests, through the OpenAI-compatible API and nothing
else, so the engine is the one they already run. What each part does, and why:

* **Prompts** are rendered to token ids here, by the rule every DeepPrune backend shares
  (``deepprune_lc.backends.rendering``, which is vLLM's own), with the model's tokenizer loaded from
  ``tokenizer=`` (a local path or name; needs ``transformers``), or, when it is not local, by the
  server's ``/tokenize`` endpoint (same rule, server side). The ids are sent as the prompt; a
  resumed trace sends prompt ids + the exact ids it produced (a prefix-cache hit on the server),
  never re-tokenised text.
* **Token ids** come back in every chunk (``return_token_ids``); ``logprobs=k`` adds the top-k
  log-probabilities of each token (the server caps k, 20 by default).
* **Park / abort = close the stream.** vLLM's handlers abort the engine request when the client
  disconnects (its ``with_cancellation`` wrapper and the streaming response's disconnect listener
  cancel ``AsyncLLM.generate``, which aborts). A plain ``vllm serve`` has no HTTP abort endpoint
  for this API, so closing is the only way, and it is enough. The stream then ends with
  ``finish_reason="abort"`` and keeps exactly what it delivered; the server may have decoded a few
  tokens more that nobody reads. Each stream is read by a small pump task, so an abort from any
  task (or thread) cuts it at once, even while the read is waiting for the server.
* **Many servers**: all traces of one question go to one server (its prefix cache), and spill to
  the least-loaded one once that server has ``affinity_limit`` traces in flight
  (``deepprune_vllm.server_routing``).
* **Failures**: connection errors, 5xx and 429 before a response are retried with jittered
  exponential backoff (tenacity), on another server when there is one; a stream that breaks after
  it started (connection lost, a server restarting, an error chunk, a server-side abort) is resumed
  from prompt + the ids delivered so far, on the same or another server, up to ``max_resumes``
  times. 4xx answers are not retried: they are raised as ``BackendError`` with the server's
  message. When no server can be reached at all, ``BackendDeadError``.
* **Checks** (``astart``, or the first stream): the server answers, serves the requested model,
  and returns token ids; a local tokenizer renders like the server's. Each failure is an error
  naming what to do.

HTTP is httpx: one ``AsyncClient`` per server *per event loop* (an httpx client's connections
belong to the loop that opened them; DeepPrune's sync calls run on its background loop and async
ones on the caller's), with a connection pool sized to the traces in flight (``max_connections``
per server; a trace past it waits for a connection). No ``vllm`` import: this module runs on a
machine with only httpx, tenacity and (for a local tokenizer) transformers.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import copy
import json
import logging
import os
import ssl
import threading
import time
import uuid
import weakref
from collections import OrderedDict
from collections.abc import AsyncGenerator, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
    wait_random_exponential,
)
from tenacity.stop import stop_base

from deepprune_lc.backends import (
    ProbeStats,
    PromptRenderer,
    StopMatcher,
    box_end,
    check_probe_tokens,
    model_probe_reply,
    probe_suffix_text,
    prompt_cache_key,
    think_block_open,
    think_tokens,
)
from deepprune_lc.core import (
    BackendDeadError,
    BackendError,
    FinishReason,
    ProbeReply,
    Prompt,
    SamplingConfig,
    TraceDelta,
    TraceRequest,
)
from deepprune_vllm.server_protocol import (
    DONE,
    Chunk,
    ServerStreamError,
    check_completion_overrides,
    completion_body,
    finish_reason_of,
    parse_sse_line,
)
from deepprune_vllm.server_routing import Endpoint, EndpointStats, Router

__all__ = ["ServerLoad", "VLLMServerBackend"]

logger = logging.getLogger(__name__)

#: The vLLM release that added ``return_token_ids`` to the completions API (vllm-project/vllm#22587).
_TOKEN_IDS_SINCE = "0.10.2"
#: Text rendered to ids for the start-up probe (and for comparing a local tokenizer with the server's).
_PROBE_TEXT = "Hello, how many is 6 times 7?"
#: Prompts whose ids the server-side renderer keeps.
_REMOTE_CACHE_SIZE = 1024
#: Seconds an abort from another thread waits for the stream's own loop to act on it.
_CROSS_LOOP_ABORT_S = 5.0

_ABORTED = object()
_END = object()


@dataclass(frozen=True)
class ServerLoad:
    """One server's own view of its load, read from its ``/metrics`` (``await backend.server_load()``)."""

    url: str
    running: float
    waiting: float


class _Retryable(Exception):
    """A failure worth another attempt: no response, a 5xx/429, a stream broken mid-way."""

    def __init__(self, endpoint: Endpoint, message: str, *, unreachable: bool = False) -> None:
        super().__init__(f"{endpoint.url}: {message}")
        self.endpoint = endpoint
        self.unreachable = unreachable


@dataclass(eq=False)
class _OpenStream:
    """A stream this backend has open: the pump reading it and the consumer's wake-up queue."""

    request_id: str
    loop: asyncio.AbstractEventLoop
    wake: asyncio.Queue[object] = field(default_factory=asyncio.Queue)
    pump: asyncio.Task[None] | None = None
    pump_stopped: bool = False
    aborted: bool = False
    #: Once the stream has rendered its prompt: the prompt ids, the ids the trace holds (the
    #: resumed ones, then those read from the server) and the server it streams from, which is
    #: where an answer probe goes (its prefix cache holds the trace).
    prompt_ids: tuple[int, ...] | None = None
    kept: list[int] | None = None
    key: Hashable | None = None
    endpoint: Endpoint | None = None

    def abort_now(self) -> None:
        """On the stream's loop: stop reading (closing the connection aborts it on the server)."""
        if self.aborted:
            return
        self.aborted = True
        self.stop_pump()
        self.wake.put_nowait(_ABORTED)

    def stop_pump(self) -> None:
        """Cancel the pump, once: a second cancellation could land in the pump's own clean-up
        and cut short the close of its connection (which then stays taken in the pool)."""
        if self.pump is not None and not self.pump_stopped:
            self.pump_stopped = True
            self.pump.cancel()


class VLLMServerBackend:
    """Streams, parks and resumes DeepPrune traces on one or more vLLM servers.

    >>> backend = VLLMServerBackend("http://127.0.0.1:8000/v1", model="Qwen/Qwen3-8B",
    ...                             tokenizer="/models/Qwen3-8B")
    >>> reasoner = DeepPruneReasoner(backend=backend, judge="lexical")

    or by name: ``"vllm-server:http://127.0.0.1:8000/v1?model=Qwen/Qwen3-8B"`` (several servers:
    comma-separated URLs). ``url``: one URL or a sequence (``http://host:port/v1``; ``/v1`` may be
    left out). ``model``: the served model name (``--served-model-name``, else the path the server
    was started with); None takes the server's only model. ``tokenizer``: a local tokenizer (path
    or name, loaded with transformers) to render prompts with; None asks the server's ``/tokenize``.
    ``model_name``: what LangChain reports (default: ``model``).

    Connection: ``api_key`` (sent as ``Authorization: Bearer``; None reads the environment
    variable named by ``api_key_env`` when given), ``verify`` (TLS: True, False, or a CA bundle
    path), ``headers`` (sent with every request), ``connect_timeout`` and ``read_timeout`` (seconds
    without a byte from the server, including while a trace waits in the server's queue; None:
    no limit), ``max_connections`` (per server; streams past it wait for a connection).

    Routing and failures: ``affinity_limit`` (traces of one question in flight on its server
    before others spill to the least-loaded one), ``max_attempts`` / ``retry_deadline_s`` (attempts
    at opening a request, and the time they may take), ``retry_wait_s`` / ``retry_max_wait_s``
    (the jittered exponential backoff between them), ``max_resumes`` (a trace whose stream broke
    mid-way is resumed from its ids at most this many times), ``down_for_s`` (a server that failed
    is skipped this long).

    Sampling: as ``VLLMBackend``: ``logprobs=k``; ``sampling_overrides`` are extra request fields
    for every request (``{"ignore_eos": True}``, ``{"min_p": 0.05}``), names checked now;
    ``chat_template_kwargs`` go to the chat template (``{"enable_thinking": True}``).
    """

    def __init__(
        self,
        url: str | Sequence[str],
        *,
        model: str | None = None,
        tokenizer: str | None = None,
        model_name: str | None = None,
        logprobs: int | None = None,
        sampling_overrides: Mapping[str, Any] | None = None,
        chat_template_kwargs: Mapping[str, Any] | None = None,
        api_key: str | None = None,
        api_key_env: str | None = None,
        verify: bool | str = True,
        headers: Mapping[str, str] | None = None,
        connect_timeout: float = 10.0,
        read_timeout: float | None = 600.0,
        max_connections: int = 512,
        affinity_limit: int = 256,
        max_attempts: int = 5,
        retry_deadline_s: float | None = 60.0,
        retry_wait_s: float = 0.25,
        retry_max_wait_s: float = 5.0,
        max_resumes: int = 3,
        down_for_s: float = 2.0,
    ) -> None:
        urls = [url] if isinstance(url, str) else list(url)
        self._router = Router(urls, affinity_limit=affinity_limit, down_for_s=down_for_s)
        if logprobs is not None and (
            isinstance(logprobs, bool) or not isinstance(logprobs, int) or logprobs < 1
        ):
            raise ValueError(f"logprobs: expected None or an integer >= 1, got {logprobs!r}")
        for name, value in (("max_connections", max_connections), ("max_attempts", max_attempts)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected an integer >= 1, got {value!r}")
        if isinstance(max_resumes, bool) or not isinstance(max_resumes, int) or max_resumes < 0:
            raise ValueError(f"max_resumes: expected an integer >= 0, got {max_resumes!r}")
        for name, seconds in (
            ("connect_timeout", connect_timeout),
            ("read_timeout", read_timeout),
            ("retry_deadline_s", retry_deadline_s),
            ("retry_wait_s", retry_wait_s),
            ("retry_max_wait_s", retry_max_wait_s),
        ):
            if seconds is not None and not seconds >= 0:
                raise ValueError(f"{name}: expected a number of seconds >= 0, got {seconds!r}")
        if model is not None and (not isinstance(model, str) or not model.strip()):
            raise ValueError(f"model: expected a served model name, got {model!r}")
        if api_key is None and api_key_env:
            api_key = os.environ.get(api_key_env)
            if not api_key:
                raise ValueError(
                    f"api_key_env: the environment variable {api_key_env!r} is not set"
                )
        self._model = model
        self._model_name = model_name
        self.tokenizer_name = tokenizer
        self.logprobs = logprobs
        self.sampling_overrides = check_completion_overrides(sampling_overrides)
        self.chat_template_kwargs = dict(chat_template_kwargs or {})
        self.max_connections = max_connections
        self.max_attempts = max_attempts
        self.retry_deadline_s = retry_deadline_s
        self.retry_wait_s = retry_wait_s
        self.retry_max_wait_s = retry_max_wait_s
        self.max_resumes = max_resumes
        self._headers = {str(k): str(v) for k, v in (headers or {}).items()}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._verify: bool | ssl.SSLContext = (
            ssl.create_default_context(cafile=verify) if isinstance(verify, str) else bool(verify)
        )
        self._timeout = httpx.Timeout(
            connect=connect_timeout, read=read_timeout, write=30.0, pool=None
        )
        self._lock = threading.Lock()
        # One client per server per event loop (the module docstring says why).
        self._clients: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, dict[int, httpx.AsyncClient]
        ] = weakref.WeakKeyDictionary()
        self._loop_locks: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, dict[str, asyncio.Lock]
        ] = weakref.WeakKeyDictionary()
        # Prompts being rendered by a server, per loop: the N traces of a question wait for one
        # /tokenize request instead of sending N.
        self._rendering: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, dict[Hashable, asyncio.Task[tuple[int, ...]]]
        ] = weakref.WeakKeyDictionary()
        self._sync_client: httpx.Client | None = None
        self._started = False
        self._open: dict[str, _OpenStream] = {}
        # Request ids sent to the servers: the trace's id, this backend's tag and a counter, so two
        # processes (or two attempts) never reuse one and the server's logs still name the trace.
        self._tag = uuid.uuid4().hex[:6]
        self._sent = 0
        self._local_tokenizer: Any = None
        # Its own lock: loading takes seconds, and must not hold up streams on other loops.
        self._tokenizer_lock = threading.Lock()
        self._renderer: PromptRenderer | None = None
        if tokenizer is not None:
            self._renderer = PromptRenderer(
                self._load_tokenizer,
                chat_template_kwargs=self.chat_template_kwargs,
                model_name=model or tokenizer,
            )
        self._remote_ids: OrderedDict[Hashable, tuple[int, ...]] = OrderedDict()
        # Ids of text encoded without special tokens (probe suffixes, the think tags).
        self._text_ids: dict[str, tuple[int, ...]] = {}
        #: What the answer probes cost so far (``probe``).
        self.probe_stats = ProbeStats()

    def __repr__(self) -> str:
        urls = ", ".join(e.url for e in self._router.endpoints)
        return f"VLLMServerBackend([{urls}], model={self.model!r})"

    # ------------------------------------------------------------------ identity

    @property
    def urls(self) -> list[str]:
        """The servers' OpenAI base URLs (ending in ``/v1``), in the order given."""
        return [e.url for e in self._router.endpoints]

    @property
    def model(self) -> str | None:
        """The served model requests name (the server's only one, once checked, if none was given)."""
        return self._model

    @property
    def model_name(self) -> str:
        """The model's name in LangChain's metadata."""
        return self._model_name or self._model or "vllm-server"

    # ------------------------------------------------------------------ protocol

    def stream(self, request: TraceRequest) -> AsyncGenerator[TraceDelta, None]:
        """Start the request and yield its deltas (see the module docstring).

        Returns an async generator: ``aclose()`` (or cancelling its consumer) closes the stream,
        which aborts the request on the server.
        """
        return self._stream(request)

    async def abort(self, request_id: str) -> None:
        """Close the request's stream now (the server aborts it); a no-op for unknown ids."""
        with self._lock:
            state = self._open.get(request_id)
        if state is None:
            return
        try:
            here = asyncio.get_running_loop()
        except RuntimeError:
            here = None
        if here is state.loop:
            state.abort_now()
            return
        if state.loop.is_closed():
            return
        done: concurrent.futures.Future[None] = concurrent.futures.Future()

        def abort_there() -> None:
            state.abort_now()
            done.set_result(None)

        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nothing to stop
            state.loop.call_soon_threadsafe(abort_there)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.wrap_future(done), _CROSS_LOOP_ABORT_S)

    def count_prompt_tokens(self, prompt: Prompt) -> int:
        """Tokens the prompt occupies once rendered (what the server prefills)."""
        return len(self.prompt_token_ids(prompt))

    async def probe(
        self, request_id: str, *, suffix: str | None = None, max_tokens: int = 20
    ) -> ProbeReply:
        """``AnswerProbing``: ask the streaming trace ``request_id`` for its answer now.

        A streamed ``/v1/completions`` request of its own (never the trace's request id) whose
        prompt is the trace's prompt ids + the ids it holds so far + the suffix's ids
        (``deepprune_lc.backends.probes``: the think block closed first where the tokenizer has
        one), at temperature 0 for at most ``max_tokens`` tokens. It goes to the server the trace
        streams from, whose prefix cache holds the trace, so its prefill is mostly a cache hit;
        it is retried like every request (on another server when that one fails), and closed, which
        aborts it on the server, once the box's brace closes. The trace's own stream is not
        touched. ``prefill_tokens`` is the probe's whole prompt (the server's cache serves most of
        it). A probe with no room left in the server's context answers ``unknown`` at no cost.
        ``KeyError`` when no trace ``request_id`` is streaming here.
        """
        check_probe_tokens(max_tokens)
        with self._lock:
            state = self._open.get(request_id)
        prompt_ids = None if state is None else state.prompt_ids
        if state is None or prompt_ids is None or state.kept is None:
            raise KeyError(request_id)
        started = time.perf_counter()
        held = list(state.kept)  # the trace keeps growing meanwhile
        context = [*prompt_ids, *held]
        think = think_tokens(self._known_text_ids)
        if think is None and self._renderer is None and "</think>" not in self._text_ids:
            await self._text_ids_of("<think>")
            await self._text_ids_of("</think>")
            think = think_tokens(self._known_text_ids)
        text_suffix = probe_suffix_text(suffix, close_think=think_block_open(think, context))
        prompt = [*context, *(await self._text_ids_of(text_suffix))]
        preferred = state.endpoint
        if preferred is not None and preferred.max_model_len is not None:
            max_tokens = min(max_tokens, preferred.max_model_len - len(prompt))
            if max_tokens <= 0:
                return ProbeReply("", len(held), unknown=True)  # no room left in the context
        with self._lock:
            self._sent += 1
            probe_id = f"{request_id}-probe-{self._tag}-{self._sent}"
        body: dict[str, Any] = {
            "prompt": prompt,
            "max_tokens": max_tokens,
            "temperature": 0.0,
            "n": 1,
            "stream": True,
            "return_token_ids": True,
            "request_id": probe_id,
        }
        if self._model is not None:
            body["model"] = self._model
        text, decoded = await self._probe_completion(
            request_id, body, text_suffix, preferred, state.key
        )
        reply = model_probe_reply(
            text,
            at_tokens=len(held),
            prefill_tokens=len(prompt),
            decoded_tokens=decoded,
            started=started,
        )
        self.probe_stats.add(reply)
        return reply

    def context_length(self) -> int | None:
        """Tokens a sequence (prompt + trace) may hold on the servers: the smallest
        ``max_model_len`` their ``/v1/models`` announced (None before they were checked)."""
        lengths = [e.max_model_len for e in self._router.endpoints if e.max_model_len]
        return min(lengths) if lengths else None

    def prompt_token_ids(self, prompt: Prompt) -> list[int]:
        """``PromptTokenIds``: the ids sent for ``prompt`` (cached per prompt).

        Blocking when the prompt is not cached and the server renders it (one ``/tokenize``
        request); streams render asynchronously, so a run's own prompt is cached by then.
        """
        if self._renderer is not None:
            return list(self._renderer.ids(prompt))
        key = prompt_cache_key(prompt)
        cached = self._remote_cached(key)
        if cached is not None:
            return list(cached)
        ids = self._tokenize_sync(prompt)
        self._remote_store(key, ids)
        return list(ids)

    # ------------------------------------------------------------------ lifecycle

    async def astart(self) -> None:
        """``Lifecycle``: check every server now (see the module docstring); idempotent.

        Raises ``BackendDeadError`` when no server answers, ``BackendError`` (with what to do) when
        one serves another model or does not return token ids. A server that does not answer while
        another one does is skipped for now and checked again before it is used.
        """
        await self._ensure_started()

    async def aclose(self) -> None:
        """``Lifecycle``: close this loop's open streams and connections; a later use reconnects."""
        loop = asyncio.get_running_loop()
        with self._lock:
            states = [s for s in self._open.values() if s.loop is loop]
            clients = self._clients.pop(loop, {})
            others = [(other, dict(c)) for other, c in self._clients.items()]
            self._clients.clear()
            sync_client, self._sync_client = self._sync_client, None
            self._started = False
        for state in states:
            state.abort_now()
        pumps = [s.pump for s in states if s.pump is not None]
        if pumps:
            await asyncio.wait(pumps)
        for client in clients.values():
            await client.aclose()
        for other, per_server in others:  # clients of other loops close on their own loop
            if other.is_closed() or not other.is_running():
                continue
            for client in per_server.values():
                with contextlib.suppress(RuntimeError):
                    asyncio.run_coroutine_threadsafe(client.aclose(), other)
        if sync_client is not None:
            sync_client.close()

    # ------------------------------------------------------------------ inspection

    def live_requests(self) -> set[str]:
        """Ids of the streams this backend has open (a request is open until its stream ends)."""
        with self._lock:
            return set(self._open)

    def endpoint_stats(self) -> list[EndpointStats]:
        """Per server: traces in flight, requests sent, streams closed early, failures, health."""
        with self._lock:
            return [e.stats() for e in self._router.endpoints]

    def endpoint_of(self, prompt: Prompt) -> str | None:
        """The URL the traces of ``prompt`` are pinned to (None before the first one)."""
        endpoint = self._router.endpoint_of(prompt_cache_key(prompt))
        return None if endpoint is None else endpoint.url

    async def server_load(self) -> list[ServerLoad]:
        """Every server's running and waiting requests, from its ``/metrics`` (all clients' requests,
        summed over its engines); NaN where a server does not answer."""
        return list(await asyncio.gather(*(self._load_of(e) for e in self._router.endpoints)))

    # ------------------------------------------------------------------ the stream

    async def _stream(self, request: TraceRequest) -> AsyncGenerator[TraceDelta, None]:
        loop = asyncio.get_running_loop()
        state = _OpenStream(request.request_id, loop)
        with self._lock:
            self._open[request.request_id] = state
        ended = False
        try:
            budget = request.sampling.max_tokens
            if budget is not None and len(request.resume_token_ids) >= budget:
                yield TraceDelta((), "", "length")  # resumed at (or past) its token budget
                return
            state.pump = loop.create_task(self._pump(request, state))
            while True:
                if state.wake.empty():
                    item = await state.wake.get()
                else:
                    # A backlog (the pump reads a whole burst of chunks at once): one delta per
                    # turn of the loop, so the run's decisions (the judge's answer, a park) run
                    # between them instead of after the burst, and a pruned trace stops near its
                    # prefix rather than wherever the burst ended.
                    await asyncio.sleep(0)
                    item = state.wake.get_nowait()
                if state.aborted:
                    # Closed on request: what was delivered is what the trace keeps; chunks that
                    # arrived after the abort are dropped unread.
                    yield TraceDelta((), "", "abort")
                    return
                if item is _END:
                    ended = True
                    return
                if isinstance(item, BaseException):
                    ended = True
                    raise item
                assert isinstance(item, TraceDelta)
                if item.finish_reason is not None:
                    ended = True  # the server finished it: let the pump close the response
                yield item
                if ended:
                    return
        finally:
            try:
                pump = state.pump
                if pump is not None:
                    if not (ended or pump.done()):
                        state.stop_pump()  # closing the connection aborts the request on the server
                    # Wait until the connection is closed: no request outlives its stream.
                    await asyncio.wait([pump])
            finally:
                # Even when that wait is cancelled (a consumer cancelled twice): the pump was told
                # to stop, and the stream is no longer open here.
                with self._lock:
                    if self._open.get(request.request_id) is state:
                        del self._open[request.request_id]

    async def _pump(self, request: TraceRequest, state: _OpenStream) -> None:
        """Read the request's deltas (with retries and resumes) into the consumer's queue."""
        try:
            async for delta in self._deltas(request, state):
                state.wake.put_nowait(delta)
        except asyncio.CancelledError:
            raise
        except _Retryable as exc:  # pragma: no cover - every retry loop converts its own
            state.wake.put_nowait(self._exhausted(f"request {request.request_id}", exc))
        except Exception as exc:  # raised in the consumer's task
            state.wake.put_nowait(exc)
        else:
            state.wake.put_nowait(_END)

    async def _deltas(
        self, request: TraceRequest, state: _OpenStream | None = None
    ) -> AsyncGenerator[TraceDelta, None]:
        """The trace's deltas across attempts: a broken stream resumes from the ids so far."""
        await self._ensure_started()
        prompt_ids = await self._prompt_ids(request.prompt)
        key = prompt_cache_key(request.prompt)
        kept = list(request.resume_token_ids)
        if state is not None:
            state.prompt_ids, state.kept, state.key = tuple(prompt_ids), kept, key
        resumed_by_run = len(kept)
        # Stop strings are matched here (server_protocol says why); one matcher across attempts, so
        # a stream resumed after a failure keeps what was held back. A trace resumed by the run
        # is primed with the text of its last ids.
        stops = StopMatcher(request.sampling.stop)
        if stops and kept:
            longest = max(len(stop) for stop in stops.stops)
            stops.resume(await self._text_of(kept[-(longest + 8) :]))
        broken = 0
        avoid: Endpoint | None = None
        pending_text = ""  # text that came with no token yet: sent with the next delta
        while True:
            endpoint, response = await self._open_request(request, prompt_ids, kept, key, avoid)
            if state is not None:
                state.endpoint = endpoint
            if response is None:  # no room left in the context window
                yield TraceDelta((), pending_text, "length")
                return
            finished = False
            try:
                async with contextlib.aclosing(self._chunks(response)) as chunks:
                    async for chunk in chunks:
                        ids = chunk.token_ids
                        if ids is None:
                            raise BackendError(self._no_token_ids_message(endpoint))
                        before = copy.copy(stops) if stops else None
                        text, finish, server_ended, hit = _settle(chunk, stops)
                        if hit and len(ids) > 1 and before is not None:
                            # A chunk of several tokens (vLLM merges deltas when its client
                            # lags): the trace ends at the token that completed the stop string.
                            ids, text = await self._cut_at_stop(before, kept, ids, text)
                        if ids or finish is not None:
                            kept.extend(ids)
                            finished = finish is not None
                            yield TraceDelta(ids, pending_text + text, finish, chunk.logprobs)
                            pending_text = ""
                            if finished:
                                return
                        else:
                            pending_text += text
                        if server_ended:
                            # Not this backend's doing (an internal error, a server shutting
                            # down): resume what was delivered.
                            raise _Retryable(
                                endpoint, f"the server ended the request ({chunk.finish_reason!r})"
                            )
                raise _Retryable(endpoint, "the stream ended without a finish reason")
            except (httpx.TransportError, ServerStreamError, _Retryable) as exc:
                broken += 1
                self._router.mark_down(endpoint)
                if broken > self.max_resumes:
                    raise BackendError(
                        f"request {request.request_id}: the stream broke {broken} times "
                        f"(last: {_describe(exc)} at {endpoint.url}); raise max_resumes or check "
                        "the servers' logs"
                    ) from exc
                logger.warning(
                    "request %s: stream from %s broke after %d tokens (%s); resuming",
                    request.request_id,
                    endpoint.url,
                    len(kept) - resumed_by_run,
                    _describe(exc),
                )
                avoid = endpoint
            finally:
                self._router.release(endpoint, closed_early=not finished)
                await _close(response)

    async def _chunks(self, response: httpx.Response) -> AsyncGenerator[Chunk, None]:
        async for line in response.aiter_lines():
            item = parse_sse_line(line, logprobs=self.logprobs)
            if item is None:
                continue
            if item is DONE:
                return
            assert isinstance(item, Chunk)
            yield item

    async def _open_request(
        self,
        request: TraceRequest,
        prompt_ids: Sequence[int],
        kept: Sequence[int],
        key: Hashable,
        avoid: Endpoint | None,
    ) -> tuple[Endpoint, httpx.Response | None]:
        """Open the streamed request on a server, retrying what is worth retrying (tenacity)."""
        failed = avoid
        last: _Retryable | None = None
        try:
            async for attempt in self._retrying():
                with attempt:
                    endpoint = self._router.acquire(key, avoid=failed)
                    try:
                        await self._check_endpoint(endpoint)
                        body = self._body(request, prompt_ids, kept, endpoint)
                        if body is None:
                            self._router.release(endpoint)
                            return endpoint, None
                        response = await self._send(endpoint, body)
                    except _Retryable as exc:
                        self._router.release(endpoint)
                        self._router.mark_down(endpoint)
                        failed, last = endpoint, exc
                        raise
                    except BaseException:
                        self._router.release(endpoint)
                        raise
                    self._router.mark_up(endpoint)
                    return endpoint, response
        except _Retryable as exc:
            last = exc
        assert last is not None
        raise self._exhausted(f"request {request.request_id}", last) from last

    def _body(
        self,
        request: TraceRequest,
        prompt_ids: Sequence[int],
        kept: Sequence[int],
        endpoint: Endpoint,
    ) -> dict[str, Any] | None:
        """The request body, or None when the trace has no room left to decode."""
        sent = len(prompt_ids) + len(kept)
        budget = request.sampling.max_tokens
        # None: as far as the context allows; the server decodes to its end when it is unknown.
        remaining = None if budget is None else budget - len(kept)
        if endpoint.max_model_len is not None:
            if len(prompt_ids) >= endpoint.max_model_len:
                raise ValueError(
                    f"prompt: {len(prompt_ids)} tokens do not fit the server's context "
                    f"(max_model_len={endpoint.max_model_len} at {endpoint.url})"
                )
            # As in-process: a trace stops at the end of the context window ("length") rather
            # than failing (the server would reject max_tokens past it with a 400).
            room = endpoint.max_model_len - sent
            remaining = room if remaining is None else min(remaining, room)
        if remaining is not None and remaining <= 0:
            return None
        with self._lock:
            self._sent += 1
            sent_id = f"{request.request_id}-{self._tag}-{self._sent}"
        return completion_body(
            model=self._model,
            prompt_ids=[*prompt_ids, *kept],
            sampling=request.sampling,
            seed=request.seed,
            resumed_tokens=len(kept),
            max_tokens=remaining,
            request_id=sent_id,
            logprobs=self.logprobs,
            overrides=self.sampling_overrides,
        )

    async def _send(self, endpoint: Endpoint, body: dict[str, Any]) -> httpx.Response:
        """POST the streamed completion; a 200 response still to be read, or an error."""
        client = self._client(endpoint)
        request = client.build_request("POST", "/v1/completions", json=body)
        try:
            response = await client.send(request, stream=True)
        except httpx.TransportError as exc:
            raise _Retryable(endpoint, _describe(exc), unreachable=_unreachable(exc)) from exc
        if response.status_code == 200:
            return response
        try:
            text = (await response.aread()).decode("utf-8", "replace")
        finally:
            await _close(response)
        status = response.status_code
        message = _error_message(text)
        if status >= 500 or status in (408, 429):
            raise _Retryable(endpoint, f"HTTP {status}: {message}")
        raise BackendError(f"{endpoint.url}: HTTP {status}: {message}{self._hint(status)}")

    def _retrying(self) -> AsyncRetrying:
        stop: stop_base = stop_after_attempt(self.max_attempts)
        if self.retry_deadline_s is not None:
            stop = stop | stop_after_delay(self.retry_deadline_s)
        return AsyncRetrying(
            stop=stop,
            wait=wait_random_exponential(multiplier=self.retry_wait_s, max=self.retry_max_wait_s),
            retry=retry_if_exception_type(_Retryable),
            reraise=True,
            before_sleep=_log_retry,
        )

    def _exhausted(self, what: str, last: _Retryable) -> BackendError:
        """The error once retries are spent: dead when no server could be reached at all."""
        urls = ", ".join(self.urls)
        if last.unreachable and all(e.is_down() for e in self._router.endpoints):
            return BackendDeadError(
                f"{what}: no vLLM server answered at {urls} ({last}); start the server "
                "(`vllm serve <model>`) or fix the URL; every request fails until one answers"
            )
        return BackendError(f"{what}: gave up after retries ({last})")

    # ------------------------------------------------------------------ answer probes

    async def _probe_completion(
        self,
        request_id: str,
        body: dict[str, Any],
        suffix: str,
        preferred: Endpoint | None,
        key: Hashable | None,
    ) -> tuple[str, int]:
        """The probe's text (cut after the box's closing brace) and its decoded token count."""
        failed: Endpoint | None = None
        last: _Retryable | None = None
        try:
            async for attempt in self._retrying():
                with attempt:
                    if failed is None and preferred is not None and not preferred.is_down():
                        endpoint = preferred
                    else:
                        endpoint = self._router.acquire(
                            key if key is not None else "", avoid=failed
                        )
                        self._router.release(endpoint)
                    try:
                        await self._check_endpoint(endpoint)
                        response = await self._send(endpoint, body)
                        try:
                            return await self._read_probe(endpoint, response, suffix)
                        finally:
                            await _close(response)  # early: aborts the probe on the server
                    except _Retryable as exc:
                        self._router.mark_down(endpoint)
                        failed, last = endpoint, exc
                        raise
        except _Retryable as exc:
            last = exc
        assert last is not None
        raise self._exhausted(f"probe of {request_id}", last) from last

    async def _read_probe(
        self, endpoint: Endpoint, response: httpx.Response, suffix: str
    ) -> tuple[str, int]:
        text, decoded = "", 0
        try:
            async with contextlib.aclosing(self._chunks(response)) as chunks:
                async for chunk in chunks:
                    decoded += len(chunk.token_ids or ())
                    text += chunk.text
                    end = box_end(suffix, text)
                    if end is not None:
                        return text[:end], decoded
        except (httpx.TransportError, ServerStreamError) as exc:
            raise _Retryable(endpoint, f"the probe's stream broke: {_describe(exc)}") from exc
        return text, decoded

    def _known_text_ids(self, text: str) -> Sequence[int]:
        """Ids of ``text`` without special tokens: the local tokenizer's, else those the server
        gave before (empty when not asked yet)."""
        if self._renderer is not None:
            return list(self._load_tokenizer().encode(text, add_special_tokens=False))
        return self._text_ids.get(text, ())

    async def _text_ids_of(self, text: str) -> tuple[int, ...]:
        """Ids of ``text`` without special tokens (cached), here or by the server's /tokenize."""
        cached = self._text_ids.get(text)
        if cached is not None:
            return cached
        if self._renderer is not None:
            ids = tuple(self._known_text_ids(text))
        else:
            endpoint = next(
                (e for e in self._router.endpoints if not e.is_down()), self._router.endpoints[0]
            )
            body: dict[str, Any] = {"prompt": text, "add_special_tokens": False}
            if self._model is not None:
                body["model"] = self._model
            try:
                response = await self._client(endpoint).post("/tokenize", json=body)
            except httpx.TransportError as exc:
                raise BackendError(
                    f"{endpoint.url}: could not encode the probe suffix ({_describe(exc)})"
                ) from exc
            try:
                ids = self._tokens_of(endpoint, response)
            except _NoTokenizeEndpoint as exc:
                raise BackendError(_no_tokenize_message(endpoint)) from exc
            except _Retryable as exc:
                raise BackendError(f"could not encode the probe suffix: {exc}") from exc
        if len(self._text_ids) < 256:
            self._text_ids[text] = ids
        return ids

    # ------------------------------------------------------------------ checks

    async def _ensure_started(self) -> None:
        if self._started:
            return
        async with self._loop_lock("start"):
            if self._started:
                return
            endpoints = self._router.endpoints
            results = await asyncio.gather(
                *(self._check_with_retries(e) for e in endpoints), return_exceptions=True
            )
            failures = [(e, r) for e, r in zip(endpoints, results, strict=True) if r is not None]
            for _, result in failures:
                if not isinstance(result, _Retryable):
                    raise result  # a server that answers wrongly: a configuration error
            if len(failures) == len(endpoints):
                first = failures[0][1]
                assert isinstance(first, _Retryable)
                raise self._exhausted("start", first) from first
            for endpoint, result in failures:
                logger.warning(
                    "vLLM server %s is not usable yet (%s); skipping it", endpoint.url, result
                )
            self._started = True

    async def _check_with_retries(self, endpoint: Endpoint) -> None:
        async for attempt in self._retrying():
            with attempt:
                try:
                    await self._check_endpoint(endpoint)
                except _Retryable:
                    self._router.mark_down(endpoint)
                    raise
        self._router.mark_up(endpoint)

    async def _check_endpoint(self, endpoint: Endpoint) -> None:
        """The server answers, serves the model, returns token ids, and renders like us."""
        if endpoint.checked:
            return
        async with self._loop_lock(f"check-{endpoint.index}"):
            if not endpoint.checked:
                await self._check_endpoint_now(endpoint)

    async def _check_endpoint_now(self, endpoint: Endpoint) -> None:
        client = self._client(endpoint)
        served, max_model_len = await self._served_models(client, endpoint)
        model = self._model
        if model is None:
            if len(served) != 1:
                raise BackendError(
                    f"{endpoint.url} serves {list(served)}: pass model=<one of them>"
                )
            model = served[0]
        elif model not in served:
            raise BackendError(
                f"{endpoint.url} serves {list(served)}, not {model!r}: pass model=<one of them>, "
                f"or start the server with --served-model-name {model}"
            )
        endpoint.served_models = served
        endpoint.max_model_len = max_model_len.get(model)
        if self._renderer is not None:
            await self._compare_tokenizers(client, endpoint, model)
        probe_ids = await self._probe_ids(client, endpoint, model)
        await self._probe_token_ids(client, endpoint, model, probe_ids)
        with self._lock:
            if self._model is None:
                self._model = model
            endpoint.checked = True

    async def _served_models(
        self, client: httpx.AsyncClient, endpoint: Endpoint
    ) -> tuple[tuple[str, ...], dict[str, int]]:
        response = await self._get(client, endpoint, "/v1/models")
        if response.status_code == 404:
            raise BackendError(
                f"{endpoint.url}: GET /v1/models answered 404; this is not an OpenAI-compatible "
                "server at that address: check the URL (http://host:port/v1)"
            )
        self._raise_for_status(endpoint, response, "GET /v1/models")
        try:
            cards = response.json()["data"]
            served = tuple(str(card["id"]) for card in cards)
            lengths = {
                str(card["id"]): int(card["max_model_len"])
                for card in cards
                if card.get("max_model_len")
            }
        except (ValueError, KeyError, TypeError) as exc:
            raise BackendError(
                f"{endpoint.url}: GET /v1/models did not answer with a model list: "
                f"{response.text[:200]!r}"
            ) from exc
        return served, lengths

    async def _probe_token_ids(
        self, client: httpx.AsyncClient, endpoint: Endpoint, model: str, ids: Sequence[int]
    ) -> None:
        """One-token streamed request: the server must return the token ids (return_token_ids)."""
        body = completion_body(
            model=model,
            prompt_ids=ids,
            sampling=SamplingConfig(temperature=0.0, max_tokens=1),
            seed=0,
            resumed_tokens=0,
            max_tokens=1,
            request_id=f"deepprune-probe-{self._tag}",
        )
        try:
            async with client.stream("POST", "/v1/completions", json=body) as response:
                if response.status_code != 200:
                    await response.aread()
                    self._raise_for_status(endpoint, response, "the probe completion")
                async for line in response.aiter_lines():
                    item = parse_sse_line(line)
                    if item is None:
                        continue
                    if item is DONE:
                        break
                    assert isinstance(item, Chunk)
                    if item.token_ids is None:
                        raise BackendError(self._no_token_ids_message(endpoint))
                    return
        except httpx.TransportError as exc:
            raise _Retryable(endpoint, _describe(exc), unreachable=_unreachable(exc)) from exc
        except ServerStreamError as exc:
            raise BackendError(f"{endpoint.url}: the probe completion failed: {exc}") from exc
        raise BackendError(f"{endpoint.url}: the probe completion streamed no chunk")

    async def _compare_tokenizers(
        self, client: httpx.AsyncClient, endpoint: Endpoint, model: str
    ) -> None:
        """A local tokenizer must render like the server's, or resumed ids would be wrong."""
        assert self._renderer is not None
        prompts: list[Prompt] = [_PROBE_TEXT]
        try:
            self._renderer.ids([{"role": "user", "content": _PROBE_TEXT}], cache=False)
        except ValueError:
            pass  # no chat template: a base model, compared on text only
        else:
            prompts.append([{"role": "user", "content": _PROBE_TEXT}])
        for prompt in prompts:
            try:
                server_ids = await self._tokenize(client, endpoint, prompt, model)
            except _NoTokenizeEndpoint:
                return  # nothing to compare with (a router that forwards only /v1)
            local_ids = self._renderer.ids(prompt, cache=False)
            if tuple(server_ids) != tuple(local_ids):
                kind = "plain text" if isinstance(prompt, str) else "a chat prompt"
                raise BackendError(
                    f"tokenizer {self.tokenizer_name!r} renders {kind} differently from the server "
                    f"at {endpoint.url} ({len(local_ids)} ids against {len(server_ids)}): point "
                    "tokenizer= at the served model's own tokenizer, or leave it unset to let the "
                    "server render prompts"
                )

    def _no_token_ids_message(self, endpoint: Endpoint) -> str:
        return (
            f"{endpoint.url} streamed completions without token ids: DeepPrune needs the "
            f"completions API's return_token_ids (vLLM >= {_TOKEN_IDS_SINCE}); upgrade the server "
            "(or, behind a proxy, make it pass the field through)"
        )

    def _hint(self, status: int) -> str:
        if status == 401:
            return " (the server wants an API key: pass api_key= or api_key_env=)"
        if status == 404:
            return f" (is {self._model!r} the served model name? see GET /v1/models)"
        return ""

    def _raise_for_status(self, endpoint: Endpoint, response: httpx.Response, what: str) -> None:
        status = response.status_code
        if status == 200:
            return
        message = _error_message(response.text)
        if status >= 500 or status in (408, 429):
            raise _Retryable(endpoint, f"{what}: HTTP {status}: {message}")
        raise BackendError(f"{endpoint.url}: {what}: HTTP {status}: {message}{self._hint(status)}")

    async def _get(
        self, client: httpx.AsyncClient, endpoint: Endpoint, path: str
    ) -> httpx.Response:
        try:
            return await client.get(path)
        except httpx.TransportError as exc:
            raise _Retryable(endpoint, _describe(exc), unreachable=_unreachable(exc)) from exc

    async def _load_of(self, endpoint: Endpoint) -> ServerLoad:
        nan = float("nan")
        try:
            response = await self._client(endpoint).get("/metrics")
        except httpx.TransportError:
            return ServerLoad(endpoint.url, nan, nan)
        if response.status_code != 200:
            return ServerLoad(endpoint.url, nan, nan)
        return ServerLoad(
            endpoint.url,
            _gauge(response.text, "vllm:num_requests_running"),
            _gauge(response.text, "vllm:num_requests_waiting"),
        )

    # ------------------------------------------------------------------ prompts

    async def _prompt_ids(self, prompt: Prompt) -> tuple[int, ...]:
        """The prompt's ids for a stream: rendered here, or by a server (one request per prompt
        at a time, retried like any request)."""
        if self._renderer is not None:
            return self._renderer.ids(prompt)
        key = prompt_cache_key(prompt)
        cached = self._remote_cached(key)
        if cached is not None:
            return cached
        loop = asyncio.get_running_loop()
        with self._lock:
            pending = self._rendering.get(loop)
            if pending is None:
                pending = self._rendering[loop] = {}
            task = pending.get(key)
            if task is None:
                task = pending[key] = loop.create_task(self._render_remotely(prompt, key))
                task.add_done_callback(lambda done: self._rendered(loop, key, done))
        # Shielded: a trace cancelled while it waits does not cancel the render for the others.
        return await asyncio.shield(task)

    def _rendered(
        self, loop: asyncio.AbstractEventLoop, key: Hashable, task: asyncio.Task[tuple[int, ...]]
    ) -> None:
        with self._lock:
            pending = self._rendering.get(loop)
            if pending is not None and pending.get(key) is task:
                del pending[key]
        if not task.cancelled():
            task.exception()  # retrieved: the waiters raise it, and none may be left to

    async def _render_remotely(self, prompt: Prompt, key: Hashable) -> tuple[int, ...]:
        last: _Retryable | None = None
        try:
            async for attempt in self._retrying():
                with attempt:
                    now_up = [e for e in self._router.endpoints if not e.is_down()]
                    endpoint = next((e for e in now_up if e.checked), None) or (
                        now_up[0] if now_up else self._router.endpoints[0]
                    )
                    try:
                        ids = await self._tokenize(
                            self._client(endpoint), endpoint, prompt, self._model
                        )
                    except _Retryable as exc:
                        self._router.mark_down(endpoint)
                        last = exc
                        raise
                    except _NoTokenizeEndpoint as exc:
                        raise BackendError(_no_tokenize_message(endpoint)) from exc
                    self._remote_store(key, ids)
                    return ids
        except _Retryable as exc:
            last = exc
        assert last is not None
        raise self._exhausted("rendering the prompt", last) from last

    async def _cut_at_stop(
        self, before: StopMatcher, kept: Sequence[int], ids: list[int], text: str
    ) -> tuple[list[int], str]:
        """The ids up to the one that completed a stop string in a chunk of several, and the text
        to emit: each prefix of the chunk's ids is decoded after the trace's last ids (their
        context) and matched from the state the matcher had before the chunk."""
        context = list(kept[-8:])
        base = await self._text_of(context) if context else ""
        for end in range(1, len(ids)):
            decoded = await self._text_of([*context, *ids[:end]])
            piece = decoded[len(base) :] if decoded.startswith(base) else decoded
            out, hit = copy.copy(before).push(piece)
            if hit:
                return ids[:end], out
        return ids, text

    async def _text_of(self, ids: Sequence[int]) -> str:
        """The text of generated ids, as the server detokenises output (special tokens skipped):
        with the local tokenizer, or the server's ``/detokenize``."""
        if self._renderer is not None:
            return str(self._load_tokenizer().decode(list(ids), skip_special_tokens=True))
        last: _Retryable | None = None
        try:
            async for attempt in self._retrying():
                with attempt:
                    endpoint = next(
                        (e for e in self._router.endpoints if not e.is_down()),
                        self._router.endpoints[0],
                    )
                    body: dict[str, Any] = {"tokens": list(ids)}
                    if self._model is not None:
                        body["model"] = self._model
                    try:
                        response = await self._client(endpoint).post("/detokenize", json=body)
                    except httpx.TransportError as exc:
                        self._router.mark_down(endpoint)
                        last = _Retryable(endpoint, _describe(exc), unreachable=_unreachable(exc))
                        raise last from exc
                    if response.status_code in (404, 405):
                        raise BackendError(
                            f"{endpoint.url} has no /detokenize endpoint, needed to resume a trace "
                            "with stop strings: pass tokenizer=<a local path or name>"
                        )
                    self._raise_for_status(endpoint, response, "POST /detokenize")
                    return str(response.json()["prompt"])
        except _Retryable as exc:
            last = exc
        assert last is not None
        raise self._exhausted("detokenizing a resumed trace", last) from last

    async def _probe_ids(
        self, client: httpx.AsyncClient, endpoint: Endpoint, model: str
    ) -> tuple[int, ...]:
        """Ids of the probe text, rendered the way streams will render (here, or by the server)."""
        if self._renderer is not None:
            return self._renderer.ids(_PROBE_TEXT, cache=False)
        try:
            return await self._tokenize(client, endpoint, _PROBE_TEXT, model)
        except _NoTokenizeEndpoint as exc:
            raise BackendError(_no_tokenize_message(endpoint)) from exc

    def _tokenize_body(self, prompt: Prompt, model: str | None) -> dict[str, Any]:
        body: dict[str, Any]
        if isinstance(prompt, str):
            # Plain text: encoded as it is, with the tokenizer's special tokens (the shared rule).
            body = {"prompt": prompt, "add_special_tokens": True}
        else:
            # Chat: the template with the generation prompt, no special tokens added on top.
            body = {
                "messages": [dict(m) for m in prompt],
                "add_generation_prompt": True,
                "add_special_tokens": False,
            }
            if self.chat_template_kwargs:
                body["chat_template_kwargs"] = self.chat_template_kwargs
        if model is not None:
            body["model"] = model
        return body

    async def _tokenize(
        self, client: httpx.AsyncClient, endpoint: Endpoint, prompt: Prompt, model: str | None
    ) -> tuple[int, ...]:
        try:
            response = await client.post("/tokenize", json=self._tokenize_body(prompt, model))
        except httpx.TransportError as exc:
            raise _Retryable(endpoint, _describe(exc), unreachable=_unreachable(exc)) from exc
        return self._tokens_of(endpoint, response)

    def _tokenize_sync(self, prompt: Prompt) -> tuple[int, ...]:
        endpoint = next((e for e in self._router.endpoints if e.checked), self._router.endpoints[0])
        with self._lock:
            client = self._sync_client
            if client is None:
                client = self._sync_client = httpx.Client(
                    base_url=endpoint.root,
                    headers=self._headers,
                    timeout=self._timeout,
                    verify=self._verify,
                )
        try:
            response = client.post("/tokenize", json=self._tokenize_body(prompt, self._model))
        except httpx.TransportError as exc:
            raise BackendError(
                f"{endpoint.url}: could not render the prompt ({_describe(exc)})"
            ) from exc
        try:
            return self._tokens_of(endpoint, response)
        except _NoTokenizeEndpoint as exc:
            raise BackendError(_no_tokenize_message(endpoint)) from exc
        except _Retryable as exc:
            raise BackendError(f"could not render the prompt: {exc}") from exc

    def _tokens_of(self, endpoint: Endpoint, response: httpx.Response) -> tuple[int, ...]:
        if response.status_code in (404, 405):
            raise _NoTokenizeEndpoint(endpoint.url)
        self._raise_for_status(endpoint, response, "POST /tokenize")
        try:
            ids = tuple(int(i) for i in response.json()["tokens"])
        except (ValueError, KeyError, TypeError) as exc:
            raise BackendError(
                f"{endpoint.url}: /tokenize did not answer with tokens: {response.text[:200]!r}"
            ) from exc
        if not ids:
            raise ValueError("prompt: renders to no tokens")
        return ids

    def _remote_cached(self, key: Hashable) -> tuple[int, ...] | None:
        with self._lock:
            ids = self._remote_ids.get(key)
            if ids is not None:
                self._remote_ids.move_to_end(key)
            return ids

    def _remote_store(self, key: Hashable, ids: tuple[int, ...]) -> None:
        with self._lock:
            self._remote_ids[key] = ids
            self._remote_ids.move_to_end(key)
            while len(self._remote_ids) > _REMOTE_CACHE_SIZE:
                self._remote_ids.popitem(last=False)

    def _load_tokenizer(self) -> Any:
        with self._tokenizer_lock:
            if self._local_tokenizer is None:
                try:
                    from transformers import AutoTokenizer
                except ImportError as exc:  # pragma: no cover - transformers is in the dev venv
                    raise ImportError(
                        "tokenizer=...: loading a local tokenizer needs transformers "
                        "(pip install transformers), or leave tokenizer unset to let the server "
                        "render prompts"
                    ) from exc
                self._local_tokenizer = AutoTokenizer.from_pretrained(self.tokenizer_name)
            return self._local_tokenizer

    # ------------------------------------------------------------------ clients

    def _client(self, endpoint: Endpoint) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        with self._lock:
            per_server = self._clients.get(loop)
            if per_server is None:
                per_server = self._clients[loop] = {}
            client = per_server.get(endpoint.index)
            if client is None or client.is_closed:
                client = per_server[endpoint.index] = httpx.AsyncClient(
                    base_url=endpoint.root,
                    headers=self._headers,
                    timeout=self._timeout,
                    limits=httpx.Limits(
                        max_connections=self.max_connections,
                        max_keepalive_connections=self.max_connections,
                    ),
                    verify=self._verify,
                )
            return client

    def _loop_lock(self, name: str) -> asyncio.Lock:
        """A lock of this event loop (asyncio locks belong to one loop), one per purpose."""
        loop = asyncio.get_running_loop()
        with self._lock:
            locks = self._loop_locks.get(loop)
            if locks is None:
                locks = self._loop_locks[loop] = {}
            lock = locks.get(name)
            if lock is None:
                lock = locks[name] = asyncio.Lock()
            return lock


class _NoTokenizeEndpoint(Exception):
    """The server (or the router in front of it) has no ``/tokenize``."""


def _no_tokenize_message(endpoint: Endpoint) -> str:
    return (
        f"{endpoint.url} has no /tokenize endpoint (a router in front of the servers?): pass "
        "tokenizer=<the model's tokenizer, a local path or name> to render prompts here"
    )


def _settle(chunk: Chunk, stops: StopMatcher) -> tuple[str, FinishReason | None, bool, bool]:
    """A chunk's text after stop-string matching, the trace's finish reason if it ends here,
    whether the server ended the request on its own (an error or an abort nobody asked for), and
    whether a stop string completed in it."""
    text, hit = stops.push(chunk.text) if stops else (chunk.text, False)
    if hit:
        return text, "stop", False, True  # closing the response then stops the server's decoding
    if chunk.finish_reason is None:
        return text, None, False, False
    finish = finish_reason_of(chunk.finish_reason)
    if finish is None or finish == "abort":
        return text, None, True, False
    if stops:
        text += stops.flush()  # ended by itself: release what was held back
    return text, finish, False, False


async def _close(response: httpx.Response) -> None:
    """Close a response even when the caller is being cancelled.

    A cancellation that lands inside ``aclose`` leaves the connection open and taken in the pool
    (the server has finished with it, the socket sits in CLOSE-WAIT): enough of them and every new
    stream waits for a connection forever. Shielded, the close completes; the caller's
    cancellation is raised once it has.
    """
    closing = asyncio.ensure_future(response.aclose())
    try:
        await asyncio.shield(closing)
    except asyncio.CancelledError:
        await asyncio.wait([closing])
        raise


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _unreachable(exc: httpx.TransportError) -> bool:
    """Nothing answered at all (as opposed to a connection that broke or timed out reading)."""
    return isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)


def _error_message(text: str) -> str:
    """The ``error.message`` of an OpenAI-style error body, else the body's start."""
    try:
        payload = json.loads(text)
    except ValueError:
        return text.strip()[:300] or "(empty body)"
    if isinstance(payload, dict):
        error = payload.get("error", payload.get("detail", payload))
        if isinstance(error, dict):
            return str(error.get("message") or error)
        return str(error)
    return str(payload)[:300]


def _gauge(metrics: str, name: str) -> float:
    """A Prometheus gauge's value summed over its label sets (one per engine with data parallel)."""
    total, found = 0.0, False
    for line in metrics.splitlines():
        if line.startswith(name) and line[len(name) : len(name) + 1] in ("{", " "):
            total += float(line.rsplit(" ", 1)[1])
            found = True
    return total if found else float("nan")


def _log_retry(state: RetryCallState) -> None:
    outcome = state.outcome
    exc = outcome.exception() if outcome is not None else None
    wait = state.next_action.sleep if state.next_action is not None else 0.0
    logger.warning("attempt %d failed (%s); retrying in %.2f s", state.attempt_number, exc, wait)
