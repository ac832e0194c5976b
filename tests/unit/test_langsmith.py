"""LangSmith tracing, offline: what a ``LangChainTracer`` would send for a DeepPrune call.

A real ``langsmith.Client`` posts to a mocked ``requests.Session`` (``auto_batch_tracing=False`` makes
it send one JSON ``POST /runs`` per run start and one ``PATCH /runs/<id>`` per run end); the tests read
those bodies back and check the run tree: the chat model's ``llm`` run with its usage, answer and
DeepPrune summary, and the judge calls as ``deepprune_judge`` child runs.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import langsmith
import langsmith.utils
import pytest
import requests
from langchain_core.callbacks import get_usage_metadata_callback
from langchain_core.messages import AIMessage
from langchain_core.runnables import RunnableLambda
from langchain_core.tracers import LangChainTracer
from langchain_core.tracers.context import tracing_v2_enabled

import deepprune_lc.demo
from deepprune_lc.backends.replay import ReplayBackend
from deepprune_lc.core.config import PruningConfig, TokensPrefix
from deepprune_lc.demo import load_demo_pool
from deepprune_lc.langchain.callbacks import NOSTREAM_TAG
from deepprune_lc.langchain.chat_model import DeepPruneReasoner

API_URL = "http://langsmith.invalid"
POOL = load_demo_pool()
BAKERY = POOL.by_id("demo-bakery").problem
MODEL_NAME = "demo-reasoner"


def make_model() -> DeepPruneReasoner:
    return DeepPruneReasoner(
        backend=ReplayBackend(POOL, yield_every=1),
        judge="lexical",
        pruning=PruningConfig(n_traces=8, prefix=TokensPrefix(k=40), finalists=3),
        model_name=MODEL_NAME,
    )


@pytest.fixture(autouse=True)
def no_env_tracing(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No tracer from the environment (it would build a real client): only the ones tests pass."""
    for name in (
        "LANGSMITH_TRACING",
        "LANGSMITH_TRACING_V2",
        "LANGCHAIN_TRACING_V2",
        "LANGCHAIN_TRACING",
        "LANGSMITH_API_KEY",
        "LANGCHAIN_API_KEY",
    ):
        monkeypatch.delenv(name, raising=False)
    langsmith.utils.get_env_var.cache_clear()  # type: ignore[attr-defined]
    yield
    langsmith.utils.get_env_var.cache_clear()  # type: ignore[attr-defined]


@pytest.fixture
def session() -> mock.MagicMock:
    session = mock.MagicMock(spec=requests.Session)
    response = mock.MagicMock(spec=requests.Response)
    response.status_code = 200
    response.json.return_value = {}
    session.request.return_value = response
    return session


@pytest.fixture
def client(session: mock.MagicMock) -> langsmith.Client:
    return langsmith.Client(
        api_url=API_URL, api_key="test", session=session, auto_batch_tracing=False
    )


def sent_runs(session: mock.MagicMock) -> dict[str, dict[str, Any]]:
    """Runs as LangSmith would store them: each POST body updated by its PATCH bodies."""
    runs: dict[str, dict[str, Any]] = {}
    assert session.request.call_args_list, "the tracer sent nothing"
    for call in session.request.call_args_list:
        method, url = call.args[:2]
        body = json.loads(call.kwargs["data"])
        if method == "POST":
            assert url == f"{API_URL}/runs"
            assert body["id"] not in runs
            runs[body["id"]] = body
        else:
            assert method == "PATCH", f"unexpected request {method} {url}"
            assert url == f"{API_URL}/runs/{body['id']}"
            runs[body["id"]].update(body)
    return runs


def check_run_tree(
    runs: dict[str, dict[str, Any]], message: AIMessage, parent_id: str | None
) -> dict[str, Any]:
    """The model run and its judge children; returns the model run."""
    (llm,) = [r for r in runs.values() if r["run_type"] == "llm"]
    assert llm["name"] == "DeepPruneReasoner"
    assert llm["parent_run_id"] == parent_id
    assert llm["end_time"] is not None and not llm.get("error")
    assert llm["inputs"]["messages"][0][0]["kwargs"]["content"] == BAKERY

    # Provider and model for LangSmith's cost and model views.
    metadata = llm["extra"]["metadata"]
    assert metadata["ls_provider"] == "deepprune"
    assert metadata["ls_model_name"] == MODEL_NAME
    assert metadata["ls_model_type"] == "chat"

    # The answer message, with usage and the pruning summary (LangSmith keeps no custom events).
    (generation,) = llm["outputs"]["generations"][0]
    sent = generation["message"]["kwargs"]
    assert sent["content"] == message.content
    assert "\\boxed{216}" in sent["content"]
    assert message.usage_metadata is not None
    assert sent["usage_metadata"] == dict(message.usage_metadata)
    assert sent["usage_metadata"]["output_token_details"]["reasoning"] > 0
    summary = sent["response_metadata"]["deepprune"]
    assert summary == message.response_metadata["deepprune"]
    assert summary["answer"] == "216"
    assert summary["trace_status"].get("pruned", 0) + summary["trace_status"].get("aborted", 0) > 0
    assert sent["response_metadata"]["model_name"] == MODEL_NAME

    judges = [r for r in runs.values() if r["name"] == "deepprune_judge"]
    assert len(judges) == summary["judge_calls"] >= 1
    for judge in judges:
        assert judge["run_type"] == "chain"
        assert judge["parent_run_id"] == llm["id"]
        assert judge["trace_id"] == llm["trace_id"]
        assert judge["dotted_order"].startswith(llm["dotted_order"] + ".")
        assert NOSTREAM_TAG in judge["tags"]
        assert judge["inputs"]["judge"] == "lexical"
        assert len(judge["outputs"]["probabilities"]) == len(judge["inputs"]["pairs"]) >= 1
        assert judge["end_time"] is not None and not judge.get("error")
        # Model-run keys (ls_*) describe the model run only, not its children.
        assert not any(k.startswith("ls_") for k in judge["extra"].get("metadata", {}))
    return llm


def test_invoke_sends_the_model_run_and_judge_child_runs(
    client: langsmith.Client, session: mock.MagicMock
) -> None:
    tracer = LangChainTracer(client=client, project_name="deepprune-tests")
    message = make_model().invoke(BAKERY, {"callbacks": [tracer]})
    tracer.wait_for_futures()
    runs = sent_runs(session)
    check_run_tree(runs, message, parent_id=None)
    assert {r["name"] for r in runs.values()} == {"DeepPruneReasoner", "deepprune_judge"}
    assert {r["session_name"] for r in runs.values()} == {"deepprune-tests"}


async def test_ainvoke_inside_a_chain_under_tracing_v2_enabled(
    client: langsmith.Client, session: mock.MagicMock
) -> None:
    model = make_model()

    async def ask(question: str) -> AIMessage:
        return await model.ainvoke(question)

    chain = RunnableLambda(ask, name="ask_deepprune")
    with tracing_v2_enabled(project_name="deepprune-tests", client=client) as tracer:
        message = await chain.ainvoke(BAKERY)
    tracer.wait_for_futures()
    runs = sent_runs(session)
    (root,) = [r for r in runs.values() if r["name"] == "ask_deepprune"]
    assert root["parent_run_id"] is None
    llm = check_run_tree(runs, message, parent_id=root["id"])
    assert llm["trace_id"] == root["id"]


def test_no_local_path_goes_to_langsmith(
    client: langsmith.Client, session: mock.MagicMock, tmp_path: Path
) -> None:
    """A pool named by its absolute path: LangSmith sees its file name, never the directories."""
    private = tmp_path / "home-of-someone" / "pools"
    private.mkdir(parents=True)
    pool = private / "dev.jsonl"
    pool.write_text(
        (Path(deepprune_lc.demo.__file__).parent / "demo_pool.jsonl").read_text(encoding="utf-8"),
        encoding="utf-8",
    )
    model = DeepPruneReasoner(
        backend=f"replay:{pool}",
        judge="lexical",
        pruning=PruningConfig(n_traces=8, prefix=TokensPrefix(k=40), finalists=3),
    )
    tracer = LangChainTracer(client=client, project_name="deepprune-tests")
    with get_usage_metadata_callback() as usage:
        message = model.invoke(BAKERY, {"callbacks": [tracer]})
    tracer.wait_for_futures()
    runs = sent_runs(session)
    (llm,) = [r for r in runs.values() if r["run_type"] == "llm"]
    assert llm["extra"]["metadata"]["ls_model_name"] == "replay:dev.jsonl"
    assert message.response_metadata["model_name"] == "replay:dev.jsonl"
    assert set(usage.usage_metadata) == {"replay:dev.jsonl"}  # the usage key
    assert llm["extra"]["invocation_params"]["model_name"] == "replay:dev.jsonl"
    for run in runs.values():
        # ``serialized`` is the model's constructor arguments (what dumpd gives, to rebuild the
        # model): the backend spec is there as the caller wrote it, as ChatOpenAI's base URL is.
        sent = {key: value for key, value in run.items() if key != "serialized"}
        assert str(tmp_path) not in json.dumps(sent), run["name"]
