"""Nothing contacts the network unless a server backend is configured.

A fresh interpreter (so ``import deepprune_lc`` itself is covered) replaces ``socket.connect`` and
``connect_ex`` with a guard that refuses, and records, any address that is not loopback or a Unix
socket; it then imports the package and runs DeepPrune end to end on the replay backend (directly
and as the LangChain chat model) and on the transformers backend with a local model. LangSmith
tracing and the offline switches of the Hugging Face libraries are left at their defaults.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

GUARD = r"""
import ipaddress, json, socket, sys

attempts = []
_connect, _connect_ex = socket.socket.connect, socket.socket.connect_ex

def _local(sock, address):
    if sock.family == getattr(socket, "AF_UNIX", None):
        return True
    host = address[0] if isinstance(address, tuple) else address
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False

def connect(self, address):
    if not _local(self, address):
        attempts.append(repr(address))
        raise OSError(f"network access blocked by the test: {address!r}")
    return _connect(self, address)

def connect_ex(self, address):
    if not _local(self, address):
        attempts.append(repr(address))
        return 111
    return _connect_ex(self, address)

socket.socket.connect, socket.socket.connect_ex = connect, connect_ex

def report(**extra):
    print("GUARD-REPORT " + json.dumps({"attempts": attempts, **extra}))
"""

SELF_CHECK = (
    GUARD
    + r"""
try:
    socket.create_connection(("192.0.2.1", 9), timeout=1)
except OSError:
    pass
report()
"""
)

REPLAY_RUN = (
    GUARD
    + r"""
import asyncio
import deepprune_lc
from deepprune_lc import DeepPrune, DeepPruneReasoner, LexicalJudge, ReplayBackend
from deepprune_lc.demo import load_demo_pool

question = "How many positive divisors does 360 have?"
result = asyncio.run(DeepPrune(ReplayBackend(load_demo_pool()), LexicalJudge()).run(question))
message = DeepPruneReasoner(backend="replay:demo", judge="lexical").invoke(question)
report(answer=result.answer, chat=message.response_metadata["deepprune"]["answer"])
"""
)

TRANSFORMERS_RUN = (
    GUARD
    + r"""
import asyncio
from deepprune_lc import DeepPrune, LexicalJudge, PruningConfig, SamplingConfig
from deepprune_transformers import TransformersBackend

backend = TransformersBackend(sys.argv[1], device="cpu", num_threads=1)
runner = DeepPrune(
    backend, LexicalJudge(), PruningConfig(n_traces=4), sampling=SamplingConfig(max_tokens=24)
)
result = asyncio.run(runner.run("What is 6 times 7?"))
report(traces=len(result.traces))
"""
)

#: Variables that would switch tracing on, or the libraries offline (the test wants defaults).
_CLEARED = (
    "LANGSMITH_TRACING",
    "LANGCHAIN_TRACING_V2",
    "LANGSMITH_API_KEY",
    "LANGCHAIN_API_KEY",
    "HF_HUB_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "HF_DATASETS_OFFLINE",
)


def _run(code: str, *args: str) -> dict[str, object]:
    env = {k: v for k, v in os.environ.items() if k not in _CLEARED}
    done = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("GUARD-REPORT ")]
    assert done.returncode == 0 and lines, done.stderr[-3000:]
    return json.loads(lines[-1].removeprefix("GUARD-REPORT "))


def test_the_guard_catches_a_connection() -> None:
    assert _run(SELF_CHECK)["attempts"] == ["('192.0.2.1', 9)"]


def test_import_and_replay_runs_stay_offline() -> None:
    report = _run(REPLAY_RUN)
    assert report["attempts"] == []
    assert report["answer"] == report["chat"] == "24"


def test_a_transformers_run_stays_offline(tmp_path: Path) -> None:
    testing = pytest.importorskip("deepprune_transformers.testing")
    model = testing.build_tiny_qwen2(tmp_path / "tiny")
    report = _run(TRANSFORMERS_RUN, str(model))
    assert report["attempts"] == []
    assert report["traces"] == 4
