"""No local file path goes out with a traced run: LangSmith's model name, parameters, invocation
parameters and the ``serialized`` description every callback receives show a spec's file by its
name and an object by its class, never by a path of this machine."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.load import dumpd, loads

from deepprune_lc import DeepPruneReasoner, ReplayBackend, load_trace_pool
from deepprune_lc.demo import load_demo_pool

QUESTION = "How many positive divisors does 360 have?"


class Recorder(BaseCallbackHandler):
    """Everything a tracer is handed when a chat model run starts."""

    def __init__(self) -> None:
        self.seen: list[Any] = []

    def on_chat_model_start(
        self,
        serialized: dict[str, Any],
        messages: list[list[Any]],
        *,
        run_id: UUID,
        **kwargs: Any,
    ) -> None:
        self.seen.append({"serialized": serialized, **kwargs})


@pytest.fixture
def pool_path(tmp_path: Path) -> Path:
    path = tmp_path / "private-folder" / "pool.jsonl"
    path.parent.mkdir()
    load_demo_pool().write_jsonl(path)
    return path


@pytest.mark.parametrize("kind", ["spec", "object"])
def test_traced_metadata_carries_no_local_path(pool_path: Path, kind: str) -> None:
    backend: Any = (
        f"replay:{pool_path}" if kind == "spec" else ReplayBackend(load_trace_pool(pool_path))
    )
    model = DeepPruneReasoner(backend=backend, judge="lexical")
    recorder = Recorder()
    model.invoke(QUESTION, config={"callbacks": [recorder]})
    assert recorder.seen
    sent = json.dumps(
        {"ls": model._get_ls_params(), "runs": recorder.seen, "params": model._identifying_params},
        default=repr,
    )
    assert str(pool_path.parent) not in sent
    assert "private-folder" not in sent
    if kind == "spec":
        assert "replay:pool.jsonl" in sent  # shown by its file name


def test_dumpd_still_round_trips_the_spec(pool_path: Path) -> None:
    """The redaction is for what tracing sends; the caller's own ``dumpd`` keeps the real spec."""
    model = DeepPruneReasoner(backend=f"replay:{pool_path}", judge="lexical")
    restored = loads(
        json.dumps(dumpd(model)),
        valid_namespaces=["deepprune_lc"],
        allowed_objects=[DeepPruneReasoner],
    )
    assert restored.backend == f"replay:{pool_path}"
