"""One vLLM ``AsyncLLM`` per set of engine arguments: validated up front, created lazily, shared.

Why a holder instead of a bare engine:

* **Lazy.** Building an engine loads the model and allocates the KV cache (tens of seconds, gigabytes
  of memory). Constructing a backend or a ``DeepPruneReasoner`` must stay cheap, so the engine is
  built on first use, in a worker thread, without blocking any event loop.
* **Shared.** Every backend, reasoner and call that names the same engine arguments gets the same
  ``SharedEngine`` (a module-level registry keyed by the normalised arguments): two engines for one
  model would split the accelerator's memory and lose each other's prefix cache.
* **One event loop.** ``AsyncLLM`` binds its output handler and its per-request queues to the loop it
  first runs on; feeding it from two loops corrupts those queues. The engine therefore always serves
  on DeepPrune's background loop (``deepprune_lc.runtime.loop.background_loop()``), the loop the sync
  LangChain entry points already run on; callers on other loops are bridged (``backend.py``).
* **Shut down cleanly.** ``shutdown()`` aborts what is still running, stops the output handler and
  terminates the engine-core process; an ``atexit`` hook does it for every engine still alive.
* **Typed failures.** ``engine_failures`` turns what vLLM raises while serving a request into the
  core's ``BackendError``, and vLLM's ``EngineDeadError`` (the engine-core process is gone) into
  ``BackendDeadError``, for the backend and the judge alike.
* **Restarted after death.** A dead engine fails every request until it is shut down, so the next
  use of a dead engine shuts it down and builds a new one (logged as a warning); only the requests
  that were running when it died fail.
* **CPU build: no split prefill.** When a step's prefills exceed ``max_num_batched_tokens``, vLLM's
  chunked prefill splits one, discards the token sampled for the partial prefill and rewinds that
  request's seeded generator (``gen.set_offset(gen.get_offset() - 4)`` in the model runner); a CPU
  ``torch.Generator`` has no offset (``RuntimeError: CPU Generator does not use offset``), and the
  engine died. Every DeepPrune trace is seeded, so on the CPU platform chunked prefill is off unless
  the engine arguments set it: vLLM then sizes ``max_num_batched_tokens`` to at least the model
  length and schedules a prompt whole or in a later step, never in pieces.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import dataclasses
import difflib
import gc
import json
import logging
import threading
from collections.abc import Iterator, Mapping
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from deepprune_lc.core import BackendDeadError, BackendError
from deepprune_lc.runtime import background_loop

if TYPE_CHECKING:
    from vllm.v1.engine.async_llm import AsyncLLM

__all__ = [
    "ENGINE_DEFAULTS",
    "SharedEngine",
    "engine_arg_names",
    "engine_failures",
    "normalise_engine_args",
    "platform_engine_args",
    "shared_engine",
    "shutdown_engines",
]

#: Defaults that differ from vLLM's own. Prefix caching is what makes resuming a parked trace cheap:
#: prompt + already-generated ids are a cache hit instead of a fresh prefill.
ENGINE_DEFAULTS: dict[str, Any] = {"enable_prefix_caching": True}

_log = logging.getLogger(__name__)

#: Seconds ``shutdown`` waits for the engine loop to abort requests and stop the output handler.
_QUIESCE_TIMEOUT_S = 10.0


@lru_cache(maxsize=1)
def engine_arg_names() -> frozenset[str]:
    """Every public field of vLLM's ``AsyncEngineArgs`` (the engine arguments it accepts)."""
    from vllm.engine.arg_utils import AsyncEngineArgs

    return frozenset(
        f.name for f in dataclasses.fields(AsyncEngineArgs) if not f.name.startswith("_")
    )


def _unknown_names_message(what: str, unknown: list[str], known: frozenset[str]) -> str:
    hints = []
    for name in unknown:
        close = difflib.get_close_matches(name, known, n=1)
        hints.append(f"{name!r} (did you mean {close[0]!r}?)" if close else repr(name))
    return f"unknown {what}: {', '.join(hints)}"


def normalise_engine_args(
    model: str, engine_args: Mapping[str, Any] | None = None, **engine_kwargs: Any
) -> dict[str, Any]:
    """Merge, check and complete engine arguments; ``ValueError`` names every unknown one.

    ``engine_args`` (a mapping) and ``engine_kwargs`` are both passed through to
    ``AsyncEngineArgs``; giving one name in both is an error rather than a silent override.
    """
    if not isinstance(model, str) or not model.strip():
        raise ValueError(f"model: expected a model name or path, got {model!r}")
    merged = dict(engine_args or {})
    twice = sorted(set(merged) & set(engine_kwargs))
    if twice:
        raise ValueError(f"engine arguments given twice (engine_args and keywords): {twice}")
    merged.update(engine_kwargs)
    if "model" in merged:
        raise ValueError("model: pass it as the first argument, not as an engine argument")
    known = engine_arg_names()
    unknown = sorted(name for name in merged if name not in known)
    if unknown:
        raise ValueError(
            _unknown_names_message("vLLM engine argument(s)", unknown, known)
            + " (see vllm.engine.arg_utils.AsyncEngineArgs)"
        )
    return {"model": model, **ENGINE_DEFAULTS, **merged}


def platform_engine_args(args: Mapping[str, Any]) -> dict[str, Any]:
    """The arguments an engine is built with on this platform: on the CPU build, chunked prefill off
    unless set (see the module docstring: a split prefill of a seeded request kills the engine)."""
    built = dict(args)
    if "enable_chunked_prefill" not in built:
        from vllm.platforms import current_platform

        if current_platform.is_cpu():
            built["enable_chunked_prefill"] = False
    return built


def _is_dead(engine: AsyncLLM) -> bool:
    """Whether an engine can no longer serve (its core process died, or its output handler)."""
    try:
        return bool(engine.errored)
    except Exception:  # pragma: no cover - a half torn-down engine
        return True


@lru_cache(maxsize=1)
def _engine_dead_error() -> type[BaseException] | None:
    """vLLM's ``EngineDeadError``, or None where this vLLM has no such class (or none imports)."""
    try:
        from vllm.v1.engine.exceptions import EngineDeadError
    except ImportError:
        return None
    return EngineDeadError


@contextlib.contextmanager
def engine_failures(what: str) -> Iterator[None]:
    """Raise what vLLM raises inside the block as ``BackendError`` (``BackendDeadError`` when the
    engine is dead), with vLLM's exception as the cause; ``what`` names the failed operation.

    Cancellation and generator exits are not failures and pass through untouched, as do the core's
    own backend errors.
    """
    try:
        yield
    except BackendError:
        raise
    except Exception as exc:
        dead = _engine_dead_error()
        if dead is not None and isinstance(exc, dead):
            raise BackendDeadError(
                f"{what}: the vLLM engine is dead; it is shut down and restarted on the next use"
            ) from exc
        raise BackendError(f"{what}: vLLM failed: {exc!r}") from exc


def _engine_key(args: Mapping[str, Any]) -> str:
    return json.dumps(dict(args), sort_keys=True, default=repr)


class SharedEngine:
    """A lazily created ``AsyncLLM`` that serves on DeepPrune's background event loop.

    Use ``await engine()`` from a coroutine running on ``loop``; ``start()`` blocks any other
    thread until the engine is up (warm-up in tests and benchmarks).
    """

    def __init__(self, args: Mapping[str, Any]) -> None:
        self.args: dict[str, Any] = dict(args)
        self._lock = threading.Lock()
        self._engine: AsyncLLM | None = None
        self._starting: concurrent.futures.Future[AsyncLLM] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:
        state = "running" if self._engine is not None else "not started"
        return f"SharedEngine({self.args['model']!r}, {state})"

    # ------------------------------------------------------------------ the loop

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The loop the engine serves on (DeepPrune's background loop, started on demand)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            loop = self._loop = background_loop()
        return loop

    def on_loop(self) -> bool:
        """True when the caller runs on the engine's loop (no bridging needed)."""
        try:
            return asyncio.get_running_loop() is self.loop
        except RuntimeError:
            return False

    # ------------------------------------------------------------------ creation

    @property
    def started(self) -> bool:
        return self._engine is not None

    def engine_nowait(self) -> AsyncLLM | None:
        """The engine if it is already up, else None (never starts it)."""
        return self._engine

    async def engine(self) -> AsyncLLM:
        """The engine, started on first use; awaiting callers share one start.

        A dead engine (its core process gone) is shut down here and a new one built: the requests
        that were running when it died have failed, the next ones are served again.
        """
        engine = self._engine
        if engine is not None and not _is_dead(engine):
            return engine
        if engine is not None:
            await self._retire(engine)
        return await asyncio.wrap_future(self._start_future())

    async def _retire(self, engine: AsyncLLM) -> None:
        """Take a dead engine out (once, however many callers saw it dead) and shut it down."""
        with self._lock:
            if self._engine is not engine:
                return  # another caller retired it already; its restart is under way
            self._engine, self._starting = None, None
        _log.warning(
            "vLLM engine for %r is dead (its engine-core process exited); shutting it down and "
            "restarting it",
            self.args["model"],
        )
        handler = engine.output_handler
        if handler is not None and not handler.done() and self.on_loop():
            handler.cancel()
            await asyncio.wait([handler])
        engine.output_handler = None
        await asyncio.to_thread(_close, engine)

    def start(self, timeout: float | None = None) -> AsyncLLM:
        """Start the engine (if needed) and block until it is up. Not from the engine loop."""
        if self.on_loop():
            raise RuntimeError("SharedEngine.start() blocks: use `await engine()` on the loop")
        self.loop  # noqa: B018 - bind the loop now so the engine's first request lands on it
        return self._start_future().result(timeout)

    async def astart(self) -> None:
        """Start the engine (if needed) and wait until it is up, from any event loop."""
        self.loop  # noqa: B018 - bind the loop now so the engine's first request lands on it
        await self.engine()

    def _start_future(self) -> concurrent.futures.Future[AsyncLLM]:
        with self._lock:
            if self._engine is not None:
                done: concurrent.futures.Future[AsyncLLM] = concurrent.futures.Future()
                done.set_result(self._engine)
                return done
            starting = self._starting
            if starting is None or (starting.done() and starting.exception() is not None):
                # First use, or the previous attempt failed: (re)try in a worker thread. Building
                # the engine takes tens of seconds and must not block the event loop; AsyncLLM
                # built outside a running loop starts its output handler on its first request,
                # which lands on the engine loop.
                starting = self._starting = concurrent.futures.Future()
                threading.Thread(
                    target=self._create, args=(starting,), name="deepprune-vllm-start", daemon=True
                ).start()
            return starting

    def _create(self, future: concurrent.futures.Future[AsyncLLM]) -> None:
        try:
            from vllm.engine.arg_utils import AsyncEngineArgs
            from vllm.v1.engine.async_llm import AsyncLLM

            engine = AsyncLLM.from_engine_args(AsyncEngineArgs(**platform_engine_args(self.args)))
        except BaseException as exc:
            future.set_exception(exc)
            return
        with self._lock:
            self._engine = engine
        _install_atexit_hook()
        future.set_result(engine)

    # ------------------------------------------------------------------ inspection

    def live_requests(self) -> set[str]:
        """Request ids the engine is still serving, read from the engine's own state.

        vLLM's output processor holds one entry per unfinished request (keyed by an internal id,
        the caller's id plus a random suffix); an aborted or finished request is removed from it.
        The ids returned are the callers' ids. Safe from any thread: the table is snapshotted in
        one call under the GIL.
        """
        engine = self._engine
        if engine is None:
            return set()
        table = engine.output_processor.request_states
        for _ in range(100):
            try:
                states = list(table.values())
                break
            except RuntimeError:  # resized by the engine loop during the copy: read again
                continue
        else:  # pragma: no cover - a table changing on every read for 100 reads
            raise RuntimeError("could not snapshot vLLM's request table")
        return {state.external_req_id or state.request_id for state in states}

    async def core_has_work(self) -> bool:
        """Whether the engine-core process's scheduler still holds requests (any loop).

        This asks the engine-core process itself (``EngineCore.has_work`` over vLLM's utility
        channel), so a request the front end forgot but the scheduler still decodes shows up here.
        """
        engine = self._engine
        if engine is None:
            return False

        async def ask() -> bool:
            return bool(await engine.engine_core.call_utility_async("has_work"))

        if self.on_loop():
            return await ask()
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(ask(), self.loop))

    # ------------------------------------------------------------------ shutdown

    def shutdown(self, timeout: float | None = _QUIESCE_TIMEOUT_S) -> None:
        """Abort everything, stop the engine and free its process; a later use starts a new one.

        Blocking (the engine-core process takes a few seconds to exit), so not from the engine
        loop: use ``await ashutdown()`` there.
        """
        if self.on_loop():
            raise RuntimeError("SharedEngine.shutdown() blocks: use `await ashutdown()` here")
        engine = self._detach(timeout)
        if engine is None:
            return
        loop = self._loop
        if loop is not None and loop.is_running():
            quiesce = asyncio.run_coroutine_threadsafe(_quiesce(engine), loop)
            try:
                quiesce.result(timeout)
            except (concurrent.futures.TimeoutError, Exception):
                quiesce.cancel()
        _close(engine)

    async def ashutdown(self) -> None:
        """``shutdown`` for coroutines, on any loop."""
        engine = await asyncio.to_thread(self._detach, _QUIESCE_TIMEOUT_S)
        if engine is None:
            return
        if self.on_loop():
            await _quiesce(engine)
        elif self._loop is not None and self._loop.is_running():
            await asyncio.wrap_future(
                asyncio.run_coroutine_threadsafe(_quiesce(engine), self._loop)
            )
        await asyncio.to_thread(_close, engine)

    def _detach(self, timeout: float | None) -> AsyncLLM | None:
        """Take the engine out of the holder (waiting for a start in progress first)."""
        with self._lock:
            starting = self._starting
        if starting is not None and not starting.done():
            with contextlib.suppress(Exception):  # a failed start leaves nothing to shut down
                starting.result(timeout)
        with self._lock:
            engine, self._engine, self._starting = self._engine, None, None
        return engine


async def _quiesce(engine: AsyncLLM) -> None:
    """On the engine loop: abort every live request and stop the output handler."""
    live = list(engine.output_processor.request_states)
    if live:
        await engine.abort(live, internal=True)
    handler = engine.output_handler
    if handler is not None and not handler.done():
        handler.cancel()
        await asyncio.wait([handler])
    engine.output_handler = None


def _close(engine: AsyncLLM) -> None:
    engine.shutdown()
    # Drop our reference while the interpreter is whole: AsyncLLM.__del__ shuts down again, and at
    # interpreter exit it would run with vLLM's module globals already torn down.
    del engine
    gc.collect()


# ---------------------------------------------------------------------- registry

_registry_lock = threading.Lock()
_registry: dict[str, SharedEngine] = {}
_atexit_installed = False


def shared_engine(args: Mapping[str, Any]) -> SharedEngine:
    """The one ``SharedEngine`` for these (normalised) engine arguments."""
    key = _engine_key(args)
    with _registry_lock:
        engine = _registry.get(key)
        if engine is None:
            engine = _registry[key] = SharedEngine(args)
        return engine


def shutdown_engines() -> None:
    """Shut down every engine this process started (also run at interpreter exit)."""
    with _registry_lock:
        engines = list(_registry.values())
    for engine in engines:
        with contextlib.suppress(Exception):  # best effort at exit
            engine.shutdown()


def _install_atexit_hook() -> None:
    global _atexit_installed
    with _registry_lock:
        if not _atexit_installed:
            atexit.register(shutdown_engines)
            _atexit_installed = True
