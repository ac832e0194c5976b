"""Which vLLM server a trace goes to: question affinity, spill-over by load, health.

Why affinity: DeepPrune starts N traces of one question at once, and later resumes some of them
from prompt + their ids. On one server all of them share the prompt's KV blocks (vLLM's prefix
cache) and a resumed trace finds its own earlier tokens cached; spread over k servers, the prompt is
prefilled k times and a resume may land where nothing of it is cached. So every trace of a question
goes to the question's server by default, and only spills to another one when that server already
has ``affinity_limit`` traces in flight from this backend (the point past which one server's batch
is full and a second server finishes sooner). The spill target, and a new question's server, is the
least-loaded one by traces in flight.

Load is what this backend has in flight on each server (requests opened and not yet closed): it is
known exactly, costs nothing to read, and does not lag like a server's ``/metrics``. A server shared
with other clients is busier than that count says; behind a router (one URL), all of this is moot
and the router decides.

Health: a server that refused a connection or broke a stream is skipped for ``down_for_s`` seconds
(unless every server is down), so retries go elsewhere first; it is tried again after that.

Thread-safe: the backend may stream from several event loops (DeepPrune's background loop and a
caller's own), so the counters and the affinity table are guarded by one lock.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

__all__ = ["Endpoint", "EndpointStats", "Router", "split_url"]

#: Questions whose server the router remembers (least recently used forgotten first).
_AFFINITY_ENTRIES = 4096


def split_url(url: str) -> tuple[str, str]:
    """A server URL -> (its OpenAI base ending in ``/v1``, its root for ``/metrics`` and ``/tokenize``).

    Both ``http://host:8000/v1`` (the OpenAI-style base URL) and ``http://host:8000`` are accepted.
    """
    text = url.strip().rstrip("/")
    if not text.startswith(("http://", "https://")):
        raise ValueError(f"server URL {url!r}: expected http://host:port/v1 or https://...")
    if text.endswith("/v1"):
        return text, text[: -len("/v1")]
    return f"{text}/v1", text


@dataclass(frozen=True)
class EndpointStats:
    """What one server has seen from this backend (``VLLMServerBackend.endpoint_stats()``)."""

    url: str
    in_flight: int
    requests: int
    closed_early: int
    failures: int
    down: bool
    checked: bool
    max_model_len: int | None


@dataclass(eq=False)
class Endpoint:
    """One vLLM server: its URLs, what was learned about it, and this backend's load on it."""

    index: int
    url: str
    root: str
    #: Set once the server was checked (model served, ``return_token_ids`` supported).
    checked: bool = False
    max_model_len: int | None = None
    in_flight: int = 0
    requests: int = 0
    #: Streams this backend closed before the server finished them (parks, aborts, cancels).
    closed_early: int = 0
    failures: int = 0
    down_until: float = 0.0
    served_models: tuple[str, ...] = field(default=())

    def is_down(self, now: float | None = None) -> bool:
        return self.down_until > (time.monotonic() if now is None else now)

    def stats(self) -> EndpointStats:
        return EndpointStats(
            url=self.url,
            in_flight=self.in_flight,
            requests=self.requests,
            closed_early=self.closed_early,
            failures=self.failures,
            down=self.is_down(),
            checked=self.checked,
            max_model_len=self.max_model_len,
        )


class Router:
    """Chooses an endpoint per request and keeps the in-flight counts (module docstring)."""

    def __init__(
        self, urls: Sequence[str], *, affinity_limit: int = 256, down_for_s: float = 2.0
    ) -> None:
        if not urls:
            raise ValueError("url: give at least one server URL")
        if isinstance(affinity_limit, bool) or not isinstance(affinity_limit, int):
            raise ValueError(f"affinity_limit: expected an integer >= 1, got {affinity_limit!r}")
        if affinity_limit < 1:
            raise ValueError(f"affinity_limit: expected an integer >= 1, got {affinity_limit!r}")
        if down_for_s < 0:
            raise ValueError(f"down_for_s: expected a number >= 0, got {down_for_s!r}")
        endpoints = []
        for index, url in enumerate(urls):
            api, root = split_url(url)
            endpoints.append(Endpoint(index=index, url=api, root=root))
        seen = [e.url for e in endpoints]
        twice = sorted({u for u in seen if seen.count(u) > 1})
        if twice:
            raise ValueError(f"url: {twice} given more than once")
        self.endpoints: tuple[Endpoint, ...] = tuple(endpoints)
        self.affinity_limit = affinity_limit
        self.down_for_s = down_for_s
        self._lock = threading.Lock()
        self._affinity: OrderedDict[Hashable, Endpoint] = OrderedDict()

    def acquire(self, key: Hashable, *, avoid: Endpoint | None = None) -> Endpoint:
        """The endpoint for one request of question ``key``; counts it in flight until ``release``.

        ``avoid`` (the endpoint a retry failed on) is skipped when another one is up.
        """
        with self._lock:
            now = time.monotonic()
            candidates = [e for e in self.endpoints if e is not avoid and not e.is_down(now)]
            if not candidates:  # every other one is down: any that is up, else all of them
                candidates = [e for e in self.endpoints if not e.is_down(now)] or [
                    e for e in self.endpoints if e is not avoid
                ]
            if not candidates:
                candidates = list(self.endpoints)
            pinned = self._affinity.get(key)
            if pinned is not None and pinned in candidates:
                self._affinity.move_to_end(key)
                chosen = (
                    pinned if pinned.in_flight < self.affinity_limit else min(candidates, key=_load)
                )
            else:
                chosen = min(candidates, key=_load)
                self._affinity[key] = chosen
                self._affinity.move_to_end(key)
                while len(self._affinity) > _AFFINITY_ENTRIES:
                    self._affinity.popitem(last=False)
            chosen.in_flight += 1
            chosen.requests += 1
            return chosen

    def release(self, endpoint: Endpoint, *, closed_early: bool = False) -> None:
        """The request on ``endpoint`` has ended (finished, failed, or closed by this backend)."""
        with self._lock:
            endpoint.in_flight -= 1
            if closed_early:
                endpoint.closed_early += 1

    def mark_down(self, endpoint: Endpoint) -> None:
        """``endpoint`` refused or broke a request: skip it for ``down_for_s`` seconds."""
        with self._lock:
            endpoint.failures += 1
            endpoint.down_until = time.monotonic() + self.down_for_s

    def mark_up(self, endpoint: Endpoint) -> None:
        with self._lock:
            endpoint.down_until = 0.0

    def endpoint_of(self, key: Hashable) -> Endpoint | None:
        """The endpoint question ``key`` is pinned to, if any."""
        with self._lock:
            return self._affinity.get(key)


def _load(endpoint: Endpoint) -> tuple[int, int]:
    return endpoint.in_flight, endpoint.index
