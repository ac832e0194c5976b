"""Faults a real ``vllm serve`` cannot be made to show, injected with a tiny stand-in HTTP server.

The stand-in answers the few endpoints the backend uses (``/v1/models``, ``/tokenize``,
``/detokenize``, ``/metrics``, streamed ``/v1/completions``) the way vLLM 0.32 does, and then
misbehaves on purpose, one way per test: an older server that ignores ``return_token_ids``, 5xx
answers before a response, a 4xx, a server that wants an API key, a stream that breaks mid-way or
carries an error chunk, a server-side abort. It records what it was sent, so the tests check the
retry and resume protocol itself (how often, with which prompt ids, seed and budget); token
exactness of a resume on a real engine is checked against the real server (test_vllm_server*.py).
Also here: spec strings, which need no server.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from deepprune_vllm import VLLMServerBackend, server_backend_from_spec
from deepprune_vllm.sampling import trace_seed

from deepprune_lc.core import (
    BackendError,
    SamplingConfig,
    SpecError,
    TraceRequest,
    parse_spec,
)

MODEL = "fake-model"
PROMPT_IDS = [1, 2, 3]

#: What a completion request is answered with: a status, then SSE items (dict chunks, "DONE",
#: or "CLOSE" to end the response there).
Reply = tuple[int, list[Any]]
Script = Callable[[dict[str, Any], int], Reply]


def chunk(ids: list[int] | None, text: str, finish: str | None = None) -> dict[str, Any]:
    choice: dict[str, Any] = {"index": 0, "text": text, "finish_reason": finish}
    if ids is not None:
        choice["token_ids"] = ids
    return {"id": "cmpl-x", "object": "text_completion", "model": MODEL, "choices": [choice]}


def tokens_then_finish(n: int, *, start: int = 10, finish: str = "length") -> list[Any]:
    items: list[Any] = [chunk([start + i], f"t{start + i} ") for i in range(n - 1)]
    return [*items, chunk([start + n - 1], f"t{start + n - 1} ", finish), "DONE"]


def well_behaved(body: dict[str, Any], attempt: int) -> Reply:
    return 200, tokens_then_finish(min(int(body["max_tokens"]), 3))


@dataclass
class FakeServer:
    """The stand-in (module docstring): ``script(body, n)`` answers the n-th completion request."""

    script: Script = well_behaved
    api_key: str | None = None
    completions: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"  # one response per connection, ended by closing it

            def log_message(self, *args: object) -> None:
                pass

            def _json(self, status: int, payload: object) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _authorised(self) -> bool:
                if fake.api_key is None or not self.path.startswith("/v1"):
                    return True
                if self.headers.get("Authorization") == f"Bearer {fake.api_key}":
                    return True
                self._json(401, {"error": "Unauthorized"})
                return False

            def do_GET(self) -> None:
                if not self._authorised():
                    return
                if self.path == "/v1/models":
                    self._json(200, {"data": [{"id": MODEL, "max_model_len": 1024}]})
                elif self.path == "/metrics":
                    data = b'vllm:num_requests_running{engine="0"} 0.0\n'
                    self.send_response(200)
                    self.end_headers()
                    self.wfile.write(data)
                else:
                    self._json(404, {"detail": "Not Found"})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length) or b"{}")
                if not self._authorised():
                    return
                if self.path == "/tokenize":
                    self._json(200, {"tokens": PROMPT_IDS, "count": 3, "max_model_len": 1024})
                elif self.path == "/detokenize":
                    self._json(200, {"prompt": "".join(f"t{i} " for i in body["tokens"])})
                elif self.path == "/v1/completions":
                    fake.completions.append(body)
                    fake.headers.append(dict(self.headers))
                    status, items = fake.script(body, len(fake.completions) - 1)
                    if status != 200:
                        self._json(
                            status, {"error": {"message": f"injected {status}", "code": status}}
                        )
                        return
                    self.send_response(200)
                    self.send_header("Content-Type", "text/event-stream")
                    self.end_headers()
                    for item in items:
                        if item == "CLOSE":
                            return
                        data = "[DONE]" if item == "DONE" else json.dumps(item)
                        try:
                            self.wfile.write(f"data: {data}\n\n".encode())
                            self.wfile.flush()
                        except OSError:  # the client closed the stream (a park)
                            return
                else:
                    self._json(404, {"detail": "Not Found"})

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def generation_requests(self) -> list[dict[str, Any]]:
        """Completion requests other than the start-up probe."""
        return [
            b for b in self.completions if not str(b["request_id"]).startswith("deepprune-probe")
        ]


@pytest.fixture
def fake() -> Iterator[FakeServer]:
    server = FakeServer()
    yield server
    server.close()


def trace(
    *, max_tokens: int = 8, resume: tuple[int, ...] = (), stop: tuple[str, ...] = ()
) -> TraceRequest:
    return TraceRequest(
        request_id=f"fault-{uuid.uuid4().hex[:8]}",
        trace_index=0,
        prompt="question",
        sampling=SamplingConfig(temperature=1.0, top_p=1.0, max_tokens=max_tokens, stop=stop),
        seed=7,
        resume_token_ids=resume,
    )


async def read(
    backend: VLLMServerBackend, request: TraceRequest
) -> tuple[list[int], str, str | None]:
    ids: list[int] = []
    text, finish = "", None
    try:
        async for delta in backend.stream(request):
            ids.extend(delta.token_ids)
            text += delta.text
            finish = delta.finish_reason
    finally:
        await backend.aclose()
    return ids, text, finish


def quick(fake: FakeServer, **kwargs: Any) -> VLLMServerBackend:
    """A backend on the stand-in with fast retries."""
    return VLLMServerBackend(
        fake.url, model=MODEL, retry_wait_s=0.01, retry_max_wait_s=0.05, **kwargs
    )


# ---------------------------------------------------------------------------------------- start-up


async def test_a_server_without_return_token_ids_is_refused_with_what_to_do(
    fake: FakeServer,
) -> None:
    fake.script = lambda body, n: (200, [chunk(None, "text only", "length"), "DONE"])
    backend = quick(fake)
    with pytest.raises(
        BackendError, match=r"without token ids.*return_token_ids \(vLLM >= 0\.10\.2\)"
    ):
        await backend.astart()
    assert fake.completions[0]["return_token_ids"] is True
    await backend.aclose()


async def test_the_api_key_is_sent_and_a_missing_one_is_named(fake: FakeServer) -> None:
    fake.api_key = "sekret"
    without = quick(fake)
    with pytest.raises(BackendError, match=r"HTTP 401.*api_key"):
        await without.astart()
    await without.aclose()
    with_key = quick(fake, api_key="sekret")
    ids, _, finish = await read(with_key, trace(max_tokens=3))
    assert (ids, finish) == ([10, 11, 12], "length")
    assert all(h.get("Authorization") == "Bearer sekret" for h in fake.headers)


# ---------------------------------------------------------------------------------------- retries


async def test_5xx_before_a_response_is_retried_with_backoff(fake: FakeServer) -> None:
    def script(body: dict[str, Any], n: int) -> Reply:
        if n in (1, 2):  # the probe passes, then the trace's first two attempts fail
            return 503, []
        return well_behaved(body, n)

    fake.script = script
    ids, _, finish = await read(quick(fake), trace(max_tokens=3))
    assert (ids, finish) == ([10, 11, 12], "length")
    sent = fake.generation_requests()
    assert len(sent) == 3 and sent[0]["prompt"] == sent[2]["prompt"] == PROMPT_IDS


async def test_retries_are_bounded(fake: FakeServer) -> None:
    fake.script = lambda body, n: (200, tokens_then_finish(1)) if n == 0 else (500, [])
    backend = quick(fake, max_attempts=3)
    with pytest.raises(BackendError, match=r"gave up after retries .*HTTP 500: injected 500"):
        await read(backend, trace())
    assert len(fake.generation_requests()) == 3


async def test_a_4xx_is_not_retried_and_carries_the_servers_message(fake: FakeServer) -> None:
    fake.script = lambda body, n: (200, tokens_then_finish(1)) if n == 0 else (400, [])
    with pytest.raises(BackendError, match=r"HTTP 400: injected 400"):
        await read(quick(fake), trace())
    assert len(fake.generation_requests()) == 1


# ---------------------------------------------------------------------------------------- resumes


@pytest.mark.parametrize(
    "breakage",
    [
        ["CLOSE"],  # the connection ends mid-stream (a server going away)
        [{"error": {"message": "engine core died", "type": "InternalServerError", "code": 500}}],
        [chunk([], "", "abort")],  # the server aborted it, not this backend
    ],
    ids=["connection-lost", "error-chunk", "server-abort"],
)
async def test_a_stream_broken_mid_way_resumes_from_the_ids_delivered(
    fake: FakeServer, breakage: list[Any]
) -> None:
    def script(body: dict[str, Any], n: int) -> Reply:
        if n == 1:  # the trace's first attempt: two tokens, then the breakage
            return 200, [chunk([10], "t10 "), chunk([11], "t11 "), *breakage]
        if n == 2:
            return 200, tokens_then_finish(int(body["max_tokens"]), start=12)
        return well_behaved(body, n)

    fake.script = script
    ids, text, finish = await read(quick(fake), trace(max_tokens=6))
    assert (ids, finish) == ([10, 11, 12, 13, 14, 15], "length")
    assert text == "t10 t11 t12 t13 t14 t15 "
    first, resumed = fake.generation_requests()
    # The resume sends prompt + the two ids delivered, for what is left of the budget, reseeded
    # as any resume is (the seed mixed with the resume point).
    assert resumed["prompt"] == [*PROMPT_IDS, 10, 11]
    assert (first["max_tokens"], resumed["max_tokens"]) == (6, 4)
    assert (first["seed"], resumed["seed"]) == (trace_seed(7, 0), trace_seed(7, 2))


async def test_resumes_after_breakage_are_bounded(fake: FakeServer) -> None:
    fake.script = lambda body, n: (200, tokens_then_finish(1)) if n == 0 else (200, ["CLOSE"])
    with pytest.raises(BackendError, match="the stream broke 3 times"):
        await read(quick(fake, max_resumes=2), trace())
    assert len(fake.generation_requests()) == 3


async def test_a_resumed_trace_is_sent_its_ids_and_primed_for_stop_strings(
    fake: FakeServer,
) -> None:
    """The run resumes a trace whose text so far ends in "t11 ": the stop string "t11 t12" starts
    in it and is caught in the resumed stream (text read back through /detokenize)."""
    fake.script = lambda body, n: (200, tokens_then_finish(3, start=12))
    ids, text, finish = await read(quick(fake), trace(resume=(10, 11), stop=("t11 t12",)))
    assert (ids, finish) == ([12], "stop")
    assert text == ""  # the text ended right before "t11 ", which the parked stream held back
    [sent] = fake.generation_requests()
    assert sent["prompt"] == [*PROMPT_IDS, 10, 11] and "stop" not in sent


async def test_a_stop_string_inside_a_chunk_of_several_tokens_ends_at_its_token(
    fake: FakeServer,
) -> None:
    """vLLM merges a request's deltas when its client lags: the trace still ends at the token that
    completed the stop string (found by decoding the chunk's ids one prefix at a time)."""
    merged = chunk([10, 11, 12, 13], "t10 t11 t12 t13 ")
    fake.script = lambda body, n: (200, [merged, *tokens_then_finish(2, start=14)])
    ids, text, finish = await read(quick(fake), trace(max_tokens=8, stop=("11 t",)))
    assert (ids, text, finish) == ([10, 11, 12], "t10 t", "stop")


# ---------------------------------------------------------------------------------------- specs


def test_several_servers_in_one_spec() -> None:
    spec = parse_spec(
        "vllm-server:http://a:8000/v1, http://b:8001?model=m&affinity_limit=32&read_timeout=none"
    )
    backend = server_backend_from_spec(spec)
    assert backend.urls == ["http://a:8000/v1", "http://b:8001/v1"]
    assert backend.model == "m" and backend.model_name == "m"
    assert [s.url for s in backend.endpoint_stats()] == backend.urls


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("vllm-server", "no URL"),
        ("vllm-server:http://a/v1?modle=m", "unknown option 'modle'"),
        ("vllm-server:http://a/v1?logprobs=many", "option logprobs='many'"),
        ("vllm-server:ftp://a/v1", "expected http://host:port/v1"),
        ("vllm-server:http://a/v1,http://a/v1", "given more than once"),
        ("vllm-server:http://a/v1?sampling_overrides=%7B%22ignore_eso%22%3A1%7D", "ignore_eso"),
        ("vllm-server:http://a/v1?sampling_overrides=%7B%22seed%22%3A1%7D", "may not set"),
        ("vllm-server:http://a/v1?api_key_env=DEEPPRUNE_NO_SUCH_VARIABLE", "is not set"),
    ],
)
def test_bad_specs_name_the_problem(text: str, match: str) -> None:
    with pytest.raises(SpecError, match=match):
        server_backend_from_spec(parse_spec(text))
