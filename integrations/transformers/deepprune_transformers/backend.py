"""``TransformersBackend``: DeepPrune's ``GenerationBackend`` on a Hugging Face causal LM.

Why its own decode loop rather than ``model.generate``: ``generate`` runs a fixed batch to the end.
DeepPrune's savings come from traces that *stop* (parked at their prefix, or aborted once the winner
is certain) and from parked traces that *restart* later as finalists. Here every trace is one row of
a shared batch; a stopped trace's row is removed before the next forward pass, so it costs nothing
from then on, and a resumed trace joins the running batch with its prompt + the exact ids it had.

Concurrency: one decode loop (an asyncio task on the caller's event loop, started by the first
stream) runs every forward pass on one dedicated worker thread, so the event loop, where the
DeepPrune driver and the judge run, stays responsive while the model computes. Each iteration of the
loop: remove rows whose request was aborted or finished, admit waiting requests (up to
``max_batch_size`` rows), run one step (a decode forward over the batch, plus a prefill for admitted
rows), and push one ``TraceDelta`` per row to its request's queue. The loop ends when no request is
left and restarts with the next one; a backend therefore survives ``asyncio.run`` being called many
times (a new loop takes it over; requests of a closed loop are dropped).

Abort is exact at token granularity: ``abort`` flags the request; its row is removed at the next step
boundary (a forward pass already running for it is finished, and its token discarded and counted in
``stats.computed_after_abort``), tokens that were computed but not yet read from the stream are
dropped, and the stream ends with an empty delta whose ``finish_reason`` is ``"abort"``. So a trace
aborted after it has read k tokens keeps exactly those k tokens, and resuming it with them continues
from exactly there: sampling draws its random numbers from ``(seed, position)``, so with the same seed
a resumed trace samples what it would have sampled unparked.

Prompts are rendered to ids by the rule every DeepPrune backend shares
(``deepprune_lc.backends.rendering``: chat messages through the chat template, plain text encoded as
it is, as vLLM's OpenAI server does) and cached. A failed forward pass ends every stream in the batch
with ``EngineError``, a ``deepprune_lc.core.BackendError``; the next request starts a fresh batch.
``astart`` / ``aclose`` (the ``Lifecycle`` port) load the model and release it from a coroutine.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import threading
import time
from collections.abc import AsyncGenerator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from deepprune_lc.backends import (
    ProbeStats,
    PromptRenderer,
    check_probe_tokens,
    probe_suffix_text,
    think_block_open,
    think_tokens,
)
from deepprune_lc.core import BackendError, ProbeReply, Prompt, TraceDelta, TraceRequest
from deepprune_transformers.models import (
    default_cache_dir,
    limit_cpu_threads,
    load_model,
    load_tokenizer,
    pad_token_id,
    pick_device,
    pick_dtype,
    resolve_model_source,
)

if TYPE_CHECKING:
    import torch

    from deepprune_transformers.engine import BatchEngine, EngineRow, EngineStats, StepOutput

__all__ = ["EngineError", "TransformersBackend"]

#: How long a closed stream waits for its row to leave the batch (one step at most, normally).
_CLOSE_WAIT_S = 30.0


class EngineError(BackendError):
    """A forward pass failed; every request that was in the batch ends with this error.

    The decode loop survives it: the batch is dropped and the next request starts a fresh one.
    """


@dataclass(eq=False, slots=True)
class _Request:
    """Loop-side state of one stream (the engine holds the tensors-side ``EngineRow``)."""

    request_id: str
    queue: asyncio.Queue[TraceDelta | BaseException] = field(default_factory=asyncio.Queue)
    removed: asyncio.Event = field(default_factory=asyncio.Event)
    row: EngineRow | None = None
    state: Literal["new", "waiting", "active", "done"] = "new"
    abort_requested: bool = False
    #: Ids of the row the stream has handed out (resumed ids included): what a probe sees.
    sent: int = 0


class TransformersBackend:
    """Streams traces from a local transformers causal LM with real row removal (module docstring).

    ``model`` is a model directory, a ``.gguf`` file (or a directory + ``gguf_file``), or a hub id
    already in the local Hugging Face cache; nothing is downloaded. The constructor only checks the
    path: the model loads on the first stream, in the worker thread. ``ignore_eos`` keeps traces
    going past end-of-sequence until ``max_tokens`` (benchmarks that need fixed-length traces).
    ``num_threads`` sets torch's intra-op threads (process-wide) when a CPU model loads. The default
    leaves one core to the event loop, where the driver and the judge run: when every core runs an
    OpenMP thread, each forward pass waits for whichever thread the event loop pushed off its core,
    and on two cores that made SmolLM2 steps 5-20x slower. It only ever lowers torch's count.
    ``gguf_cache``: where a GGUF model is kept converted to safetensors (default: the user's cache,
    see ``deepprune_transformers.models``), or ``False`` to convert on every load.
    """

    def __init__(
        self,
        model: str | os.PathLike[str],
        *,
        tokenizer: Any = None,
        device: str = "auto",
        dtype: str | torch.dtype | None = None,
        gguf_file: str | None = None,
        gguf_cache: str | os.PathLike[str] | Literal[False] | None = None,
        max_batch_size: int = 64,
        ignore_eos: bool = False,
        num_threads: int | None = None,
        model_name: str | None = None,
    ) -> None:
        if isinstance(max_batch_size, bool) or not isinstance(max_batch_size, int):
            raise ValueError(f"max_batch_size: must be an integer, got {max_batch_size!r}")
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size: must be >= 1, got {max_batch_size}")
        if num_threads is not None and (
            isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1
        ):
            raise ValueError(f"num_threads: must be an integer >= 1, got {num_threads!r}")
        if not isinstance(device, str) or not device:
            raise ValueError(f"device: expected 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")
        self._source, self._gguf_file = resolve_model_source(model, gguf_file)
        self._tokenizer_arg = tokenizer
        self._device_arg = device
        self._dtype_arg = dtype
        if gguf_cache is False:
            self._gguf_cache: Path | None = None
        else:
            self._gguf_cache = Path(gguf_cache) if gguf_cache is not None else default_cache_dir()
        self.max_batch_size = max_batch_size
        self.ignore_eos = ignore_eos
        self.num_threads = num_threads
        self.model_name = model_name or _default_name(self._source, self._gguf_file)

        self._load_lock = threading.Lock()
        self._tokenizer: Any = None
        self._engine: BatchEngine | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._renderer = PromptRenderer(self._loaded_tokenizer, model_name=self.model_name)

        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self._load_future: asyncio.Future[None] | None = None
        self._live: dict[str, _Request] = {}
        self._waiting: collections.deque[_Request] = collections.deque()
        self._active: list[_Request] = []
        self._needs_reset = False
        #: Tokens computed for a row after its abort call (the forward already running then).
        self.computed_after_abort = 0
        #: What the answer probes cost so far (``probe``).
        self.probe_stats = ProbeStats()
        self._think: tuple[tuple[int, int] | None] | None = None
        self._context: int | None = None

    # ------------------------------------------------------------------ protocol

    def stream(self, request: TraceRequest) -> AsyncGenerator[TraceDelta, None]:
        """Start (or resume) ``request`` and yield one delta per token (see the module docstring).

        Returns the async generator itself, so a caller that stops early can ``aclose()`` it: the
        row is then removed from the batch before the close returns.
        """
        return self._stream(request)

    async def abort(self, request_id: str) -> None:
        """Stop the request at the next step boundary; a no-op for unknown or ended requests."""
        request = self._live.get(request_id)
        if request is None or request.abort_requested or request.state == "done":
            return
        request.abort_requested = True
        if request.state == "waiting":
            with contextlib.suppress(ValueError):
                self._waiting.remove(request)
            self._end(request, TraceDelta((), "", "abort"))

    def count_prompt_tokens(self, prompt: Prompt) -> int:
        """Tokens the prompt occupies once templated (loads the tokenizer if needed)."""
        return self._renderer.count(prompt)

    async def probe(
        self, request_id: str, *, suffix: str | None = None, max_tokens: int = 20
    ) -> ProbeReply:
        """``AnswerProbing``: ask the trace ``request_id`` (streaming, waiting for a row, or
        decoding) for its answer now.

        A forked row: prompt ids + the ids the stream has handed out so far + the suffix's ids
        (``deepprune_lc.backends.probes``: the think block closed first where the tokenizer has
        one), decoded greedily on a cache of its own for at most ``max_tokens`` tokens, stopped
        at end of sequence or once the box's brace closes. It runs on the worker thread between
        two decode steps, so the batch is never touched: the traces keep their rows, and their
        sampling draws from ``(seed, position)``, so a probed trace produces exactly the ids it
        would have unprobed (the next step only waits for the probe). ``prefill_tokens`` is every
        id the probe read (no prefix cache here). A probe with no room left in the model's
        context answers ``unknown`` at no cost. ``KeyError`` when no trace ``request_id`` is
        streaming here.
        """
        check_probe_tokens(max_tokens)
        entry = self._live.get(request_id)
        if entry is None or entry.state == "done" or entry.row is None:
            raise KeyError(request_id)
        started = time.perf_counter()
        row = entry.row
        held = row.generated[: entry.sent]  # the decode step may append meanwhile: not seen
        context = [*row.prompt_ids, *held]
        tokenizer = self._loaded_tokenizer()
        if self._think is None:
            self._think = (think_tokens(lambda t: tokenizer.encode(t, add_special_tokens=False)),)
        text_suffix = probe_suffix_text(
            suffix, close_think=think_block_open(self._think[0], context)
        )
        ids = [*context, *tokenizer.encode(text_suffix, add_special_tokens=False)]
        engine = self._engine
        assert engine is not None  # a row exists, so the model is loaded
        room = self._room() - len(ids)
        if room <= 0:
            return ProbeReply("", len(held), unknown=True)  # no room left in the context
        loop = asyncio.get_running_loop()
        output = await loop.run_in_executor(
            self._worker(), engine.probe, ids, text_suffix, min(max_tokens, room)
        )
        reply = ProbeReply(
            text=output.text,
            at_tokens=len(held),
            prefill_tokens=output.prefill_tokens,
            decoded_tokens=output.decoded_tokens,
            seconds=time.perf_counter() - started,
            unknown=not output.text.strip(),
        )
        self.probe_stats.add(reply)
        return reply

    def context_length(self) -> int | None:
        """Tokens a sequence (prompt + trace) may hold: the model's ``max_position_embeddings``
        once it is loaded (None before, or for a model that does not say)."""
        return self._context

    def _room(self) -> int:
        """The context length, or no limit for a model that does not say."""
        return self._context if self._context is not None else 1 << 62

    def prompt_token_ids(self, prompt: Prompt, *, cache: bool = True) -> list[int]:
        """``PromptTokenIds``: the ids the engine prefills (``deepprune_lc.backends.rendering``).

        Loads only the tokenizer, from the model's files. ``cache=False`` is for one-off prompts
        that would only evict the ones worth keeping.
        """
        return list(self._renderer.ids(prompt, cache=cache))

    # ------------------------------------------------------------------ lifecycle

    async def astart(self) -> None:
        """``Lifecycle``: load the tokenizer and the model now, on the worker thread."""
        if self._engine is None:
            await asyncio.get_running_loop().run_in_executor(self._worker(), self._load)

    async def aclose(self) -> None:
        """``Lifecycle``: ``close`` from a coroutine, on the loop the backend streams on, once its
        streams have ended (the wait for the worker thread runs off the loop)."""
        executor = self._detach()
        if executor is not None:
            await asyncio.to_thread(executor.shutdown, wait=True)

    # ------------------------------------------------------------------ inspection

    def live_requests(self) -> set[str]:
        """Requests the engine holds: waiting for admission, or rows of the batch not yet ended."""
        live = {r.request_id for r in self._waiting}
        live.update(r.request_id for r in self._active if r.state != "done")
        return live

    def engine_row_ids(self) -> list[str]:
        """Request ids of the rows physically in the batch tensors, in batch order.

        Finished rows stay until the next step boundary (they are removed before any further
        forward pass); once the decode loop is idle this is empty.
        """
        engine = self._engine
        return [] if engine is None else [row.request_id for row in engine.rows]

    @property
    def stats(self) -> EngineStats:
        """Work done so far: decode steps, tokens, prefill, and the batch size of every step."""
        self._load()
        assert self._engine is not None
        return self._engine.stats

    @property
    def step_batch_sizes(self) -> list[int]:
        """Batch size of every decode forward pass so far (the last 65 536), oldest first."""
        return [] if self._engine is None else list(self._engine.stats.step_batch_sizes)

    def reset_stats(self) -> None:
        """Zero the counters (benchmarks measure one run at a time)."""
        from deepprune_transformers.engine import EngineStats

        if self._engine is not None:
            self._engine.stats = EngineStats()
        self.computed_after_abort = 0

    async def wait_idle(self) -> None:
        """Wait until the decode loop has nothing left to do (tests check the engine then)."""
        task = self._loop_task
        if task is not None and not task.done():
            await asyncio.wait([task])

    @property
    def tokenizer(self) -> Any:
        """The tokenizer (loaded on first access)."""
        return self._loaded_tokenizer()

    @property
    def model(self) -> Any:
        """The model (loaded on first access; this blocks, so async code should stream first)."""
        self._load()
        assert self._engine is not None
        return self._engine.model

    def close(self) -> None:
        """Release the worker thread and the model. The backend loads again if used later."""
        executor = self._detach()
        if executor is not None:
            executor.shutdown(wait=True)

    def _detach(self) -> ThreadPoolExecutor | None:
        """Drop the model and the requests; return the worker to shut down (None when idle)."""
        executor, self._executor = self._executor, None
        self._engine = None
        self._live.clear()
        self._waiting.clear()
        self._active = []
        return executor

    # ------------------------------------------------------------------ loading

    def load(self) -> None:
        """Load the tokenizer and the model now (blocking) instead of on the first stream.

        For programs that want start-up cost out of their first request's latency (the CLI demo
        does it to report load time separately). Safe to call more than once.
        """
        self._load()

    def _loaded_tokenizer(self) -> Any:
        self._load_tokenizer()
        return self._tokenizer

    def _load_tokenizer(self) -> None:
        with self._load_lock:
            if self._tokenizer is not None:
                return
            if self._tokenizer_arg is None:
                self._tokenizer = load_tokenizer(
                    self._source, self._gguf_file, gguf_cache=self._gguf_cache
                )
            elif isinstance(self._tokenizer_arg, str | os.PathLike):
                from transformers import AutoTokenizer

                self._tokenizer = AutoTokenizer.from_pretrained(
                    str(self._tokenizer_arg), local_files_only=True
                )
            else:
                self._tokenizer = self._tokenizer_arg

    def _load(self) -> None:
        """Load tokenizer and model (once); runs on the worker thread when called by a stream."""
        self._load_tokenizer()
        with self._load_lock:
            if self._engine is not None:
                return
            import torch

            from deepprune_transformers.engine import BatchEngine

            device = torch.device(pick_device(self._device_arg))
            limit_cpu_threads(self.num_threads, device.type)
            model = load_model(
                self._source,
                self._gguf_file,
                dtype=pick_dtype(self._dtype_arg, device),
                gguf_cache=self._gguf_cache,
                tokenizer=self._tokenizer,
            )
            model.to(device)
            positions = getattr(model.config, "max_position_embeddings", None)
            self._context = positions if isinstance(positions, int) and positions > 0 else None
            tokenizer = self._tokenizer
            self._engine = BatchEngine(
                model,
                _decoder(tokenizer),
                device=device,
                eos_token_ids=_eos_ids(model, tokenizer),
                pad_token_id=pad_token_id(model, tokenizer),
                ignore_eos=self.ignore_eos,
            )

    def _worker(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="deepprune-tf")
        return self._executor

    # ------------------------------------------------------------------ prompts

    def _make_row(self, request: TraceRequest) -> EngineRow:
        from deepprune_transformers.engine import EngineRow
        from deepprune_transformers.sampling import RowSampling

        sampling = request.sampling
        prompt_ids = self._renderer.ids(request.prompt)
        # The trace stops at the end of the model's context ("length") whatever its budget.
        room = self._room() - len(prompt_ids)
        if room <= 0:
            raise ValueError(
                f"prompt: {len(prompt_ids)} tokens do not fit the model's context "
                f"({self._room()} positions)"
            )
        budget = room if sampling.max_tokens is None else min(sampling.max_tokens, room)
        return EngineRow(
            request_id=request.request_id,
            prompt_ids=prompt_ids,
            generated=[int(t) for t in request.resume_token_ids],
            max_tokens=budget,
            sampling=RowSampling(
                temperature=float(sampling.temperature),
                top_p=float(sampling.top_p),
                top_k=int(sampling.top_k),
                seed=int(request.seed),
            ),
            stop=tuple(s for s in sampling.stop if s),
        )

    # ------------------------------------------------------------------ streams

    async def _stream(self, request: TraceRequest) -> AsyncGenerator[TraceDelta, None]:
        request_id = request.request_id
        self._bind_loop()
        if request_id in self._live:
            raise ValueError(f"request_id: {request_id!r} is already streaming")
        entry = _Request(request_id)
        self._live[request_id] = entry
        try:
            await self._ensure_loaded()
            if entry.abort_requested:  # aborted while the model was loading
                entry.state = "done"
                yield TraceDelta((), "", "abort")
                return
            row = self._make_row(request)
            if len(row.generated) >= row.max_tokens:  # resumed at (or past) its token budget
                entry.state = "done"
                yield TraceDelta((), "", "length")
                return
            row.owner = entry
            entry.row = row
            entry.sent = len(row.generated)
            entry.state = "waiting"
            self._waiting.append(entry)
            self._ensure_decode_loop()
            while True:
                item = await entry.queue.get()
                if isinstance(item, BaseException):
                    raise EngineError(f"generation failed for {request_id}: {item!r}") from item
                if item.finish_reason is None and entry.abort_requested:
                    continue  # computed before the abort took effect, never read: dropped
                yield item
                if item.finish_reason is not None:
                    return
        finally:
            if entry.state != "done":
                # Closed early (aclose, cancellation): take the row out before returning.
                await self._release(entry)
            if self._live.get(request_id) is entry:
                del self._live[request_id]

    async def _ensure_loaded(self) -> None:
        """Load on the worker thread; concurrent streams share one load and wake together."""
        if self._engine is not None:
            return
        future = self._load_future
        if future is None or (
            future.done() and (future.cancelled() or future.exception() is not None)
        ):
            future = asyncio.get_running_loop().run_in_executor(self._worker(), self._load)
            self._load_future = future
        await asyncio.shield(future)

    async def _release(self, entry: _Request) -> None:
        await self.abort(entry.request_id)
        if entry.state == "done" or entry.state == "new":
            entry.state = "done"
            return
        task = self._loop_task
        if task is not None and not task.done():
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(entry.removed.wait(), _CLOSE_WAIT_S)

    def _end(self, entry: _Request, final: TraceDelta | BaseException | None) -> None:
        """The request leaves the engine; ``final`` is its last queue item (if not yet sent)."""
        if entry.state == "done":
            return
        if final is not None:
            entry.queue.put_nowait(final)
        entry.state = "done"
        entry.removed.set()

    def _bind_loop(self) -> None:
        """Attach the backend to the running loop; a new loop takes over from a finished one."""
        loop = asyncio.get_running_loop()
        if self._loop is loop:
            return
        old = self._loop
        busy = bool(self._live) or (self._loop_task is not None and not self._loop_task.done())
        if old is not None and not old.is_closed() and old.is_running() and busy:
            raise RuntimeError(
                "TransformersBackend: requests are streaming on another event loop; use one event "
                "loop per backend at a time"
            )
        # Requests of a loop that is gone can never be read again: forget them and the batch.
        for entry in [*self._waiting, *self._active]:
            entry.state = "done"
        self._live.clear()
        self._waiting.clear()
        self._active = []
        self._needs_reset = self._engine is not None
        self._loop = loop
        self._loop_task = None
        self._load_future = None

    def _ensure_decode_loop(self) -> None:
        if self._loop_task is None or self._loop_task.done():
            self._loop_task = asyncio.get_running_loop().create_task(
                self._decode_loop(), name="deepprune-transformers-decode"
            )

    async def _decode_loop(self) -> None:
        loop = asyncio.get_running_loop()
        engine = self._engine
        assert engine is not None
        worker = self._worker()
        try:
            if self._needs_reset:
                await loop.run_in_executor(worker, engine.reset)
                self._needs_reset = False
            while True:
                if any(entry.abort_requested for entry in self._active):
                    keep = [i for i, e in enumerate(self._active) if not e.abort_requested]
                    dropped = [e for e in self._active if e.abort_requested]
                    self._needs_reset = True
                    await loop.run_in_executor(worker, engine.retain, keep)
                    self._needs_reset = False
                    self._active = [self._active[i] for i in keep]
                    for entry in dropped:  # out of the batch: now their streams may end
                        self._end(entry, TraceDelta((), "", "abort"))
                admit: list[_Request] = []
                while self._waiting and len(self._active) + len(admit) < self.max_batch_size:
                    admit.append(self._waiting.popleft())
                if not self._active and not admit:
                    return
                for entry in admit:
                    entry.state = "active"
                self._active = self._active + admit
                rows = [e.row for e in admit if e.row is not None]
                # The batch is inconsistent with self._active until the step returns: if this task
                # is cancelled meanwhile, the next loop starts from an empty batch.
                self._needs_reset = True
                outputs = await loop.run_in_executor(worker, engine.step, rows)
                self._needs_reset = False
                self._deliver(outputs)
                # The engine removed the rows that finished in this step; mirror it.
                self._active = [
                    e for e in self._active if e.row is not None and e.row.finish_reason is None
                ]
        except asyncio.CancelledError:
            self._fail_all(EngineError("the decode loop was cancelled"))
            raise
        except Exception as exc:
            self._needs_reset = True
            self._fail_all(exc)

    def _deliver(self, outputs: Sequence[StepOutput]) -> None:
        for output in outputs:
            entry = output.row.owner
            if not isinstance(entry, _Request) or entry.state == "done":
                continue
            if entry.abort_requested:
                # Computed by the forward that was running when the abort came: discarded.
                self.computed_after_abort += 1
                if output.finish_reason is not None:  # already out of the batch
                    self._end(entry, TraceDelta((), "", "abort"))
                continue
            entry.queue.put_nowait(
                TraceDelta((output.token_id,), output.text, output.finish_reason)
            )
            entry.sent += 1
            if output.finish_reason is not None:
                self._end(entry, None)  # the engine removed its row at the end of the step

    def _fail_all(self, error: BaseException) -> None:
        for entry in [*self._waiting, *self._active]:
            self._end(entry, error)
        self._waiting.clear()
        self._active = []


# ---------------------------------------------------------------------- helpers


def _default_name(source: str, gguf_file: str | None) -> str:
    if gguf_file is not None:
        return Path(gguf_file).stem
    return Path(source).name or source


def _decoder(tokenizer: Any) -> Any:
    """A fast ``ids -> text`` function (the Rust tokenizer when there is one)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:

        def decode_fast(ids: Sequence[int]) -> str:
            return str(backend.decode(list(ids), skip_special_tokens=True))

        return decode_fast

    def decode_slow(ids: Sequence[int]) -> str:
        return str(tokenizer.decode(list(ids), skip_special_tokens=True))

    return decode_slow


def _as_ids(value: Any) -> set[int]:
    if value is None:
        return set()
    if isinstance(value, int):
        return {value}
    return {int(v) for v in value}


def _eos_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    ids = _as_ids(getattr(tokenizer, "eos_token_id", None))
    generation_config = getattr(model, "generation_config", None)
    if generation_config is not None:
        ids |= _as_ids(generation_config.eos_token_id)
    ids |= _as_ids(getattr(model.config, "eos_token_id", None))
    return frozenset(ids)
