"""``DeepPruneReasoner`` behaves like LangChain's own chat models where user code relies on it.

Per-call sampling parameters (keywords, ``bind``, ``model_copy``, ``configurable_fields``) as on
ChatOpenAI / ChatOllama; LangChain's token-counting methods on the backend's own tokenizer, offline,
so ``trim_messages(..., token_counter=model)`` trims; agents (LangChain's ``create_agent``,
LangGraph's ``create_react_agent``) given tools fail with the reason before any trace runs; and
``dumpd`` / ``load`` and ``llm_output`` as ChatOpenAI fills them. Everything runs on the replay
backend over the embedded demo pool.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.load import dumpd, dumps, load, loads
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_core.messages.utils import trim_messages
from langchain_core.outputs import ChatGeneration, Generation, LLMResult
from langchain_core.runnables import ConfigurableField
from langgraph.prebuilt import create_react_agent
from pydantic import BaseModel

from deepprune_lc.backends.replay import ReplayBackend
from deepprune_lc.core.config import PruningConfig, SamplingConfig, TokensPrefix
from deepprune_lc.core.errors import DeepPruneTimeoutError
from deepprune_lc.core.ports import PromptTokenIds, TraceRequest
from deepprune_lc.demo import load_demo_pool
from deepprune_lc.langchain import DeepPruneReasoner
from deepprune_lc.langchain.messages import messages_to_prompt
from deepprune_lc.testing import DeafBackend

POOL = load_demo_pool()
PRUNING = PruningConfig(n_traces=8, prefix=TokensPrefix(k=40), finalists=3)
BAKERY = POOL.by_id("demo-bakery").problem


def make_model(backend: Any = None, **kwargs: Any) -> DeepPruneReasoner:
    return DeepPruneReasoner(
        backend=backend if backend is not None else ReplayBackend(POOL, yield_every=1),
        judge=kwargs.pop("judge", "lexical"),
        pruning=kwargs.pop("pruning", PRUNING),
        **kwargs,
    )


@pytest.fixture
def requests(monkeypatch: pytest.MonkeyPatch) -> list[TraceRequest]:
    """Every trace request any ReplayBackend streams."""
    seen: list[TraceRequest] = []
    original = ReplayBackend.stream

    def stream(self: ReplayBackend, request: TraceRequest) -> Any:
        seen.append(request)
        return original(self, request)

    monkeypatch.setattr(ReplayBackend, "stream", stream)
    return seen


def sampled(requests: list[TraceRequest], field: str) -> set[Any]:
    assert requests, "the run streamed no trace"
    return {getattr(r.sampling, field) for r in requests}


def ai_message(generation: Generation) -> AIMessage:
    assert isinstance(generation, ChatGeneration) and isinstance(generation.message, AIMessage)
    return generation.message


class StartRecorder(BaseCallbackHandler):
    """What LangChain reports when the model run starts, and the ``llm_output`` it ends with."""

    def __init__(self) -> None:
        self.invocation_params: list[dict[str, Any]] = []
        self.metadata: list[dict[str, Any]] = []
        self.llm_outputs: list[dict[str, Any] | None] = []

    def on_chat_model_start(
        self, serialized: dict[str, Any], messages: list[list[BaseMessage]], **kwargs: Any
    ) -> None:
        self.invocation_params.append(kwargs["invocation_params"])
        self.metadata.append(kwargs.get("metadata") or {})

    def on_llm_end(self, response: LLMResult, **kwargs: Any) -> None:
        self.llm_outputs.append(response.llm_output)


# -- per-call sampling parameters ------------------------------------------------------------------


def test_per_call_sampling_parameters_reach_every_trace(requests: list[TraceRequest]) -> None:
    model = make_model(temperature=0.7)
    message = model.invoke(BAKERY, temperature=0.2, top_p=0.5, top_k=5, max_tokens=30)
    assert sampled(requests, "temperature") == {0.2}
    assert sampled(requests, "top_p") == {0.5}
    assert sampled(requests, "top_k") == {5}
    assert sampled(requests, "max_tokens") == {30}
    assert message.response_metadata["deepprune"]["decoded_tokens"] <= 30 * PRUNING.n_traces
    # The call's values were for that call only.
    requests.clear()
    model.invoke(BAKERY)
    assert sampled(requests, "temperature") == {0.7}
    assert sampled(requests, "max_tokens") == {SamplingConfig().max_tokens}


async def test_per_call_parameters_on_the_async_path(requests: list[TraceRequest]) -> None:
    await make_model().ainvoke(BAKERY, temperature=0.3, max_tokens=25)
    assert sampled(requests, "temperature") == {0.3}
    assert sampled(requests, "max_tokens") == {25}


def test_bind_reaches_the_run(requests: list[TraceRequest]) -> None:
    make_model().bind(max_tokens=16, temperature=0.4).invoke(BAKERY)
    assert sampled(requests, "max_tokens") == {16}
    assert sampled(requests, "temperature") == {0.4}


def test_bind_stop_and_per_call_stop_still_work(requests: list[TraceRequest]) -> None:
    make_model().bind(stop=["\n\n###"]).invoke(BAKERY)
    assert sampled(requests, "stop") == {("\n\n###",)}
    requests.clear()
    make_model(stop="END").invoke(BAKERY, stop=["FIN"])
    assert sampled(requests, "stop") == {("FIN",)}


def test_per_call_timeout_is_the_runs_deadline() -> None:
    slow = ReplayBackend(POOL, seconds_per_token=0.01)
    model = make_model(slow, pruning=PruningConfig(n_traces=4, prefix=TokensPrefix(k=10_000)))
    with pytest.raises(DeepPruneTimeoutError, match=r"deadline \(0\.1 s\)"):
        model.invoke(BAKERY, timeout=0.1)
    assert model.timeout is None and model.pruning.deadline_s is None


def test_model_copy_of_a_flat_field_takes_effect(requests: list[TraceRequest]) -> None:
    model = make_model(temperature=0.6)
    copy = model.model_copy(update={"temperature": 0.1, "max_tokens": 20})
    copy.invoke(BAKERY)
    assert sampled(requests, "temperature") == {0.1}
    assert sampled(requests, "max_tokens") == {20}
    requests.clear()
    model.invoke(BAKERY)
    assert sampled(requests, "temperature") == {0.6}


def test_configurable_fields_reach_the_flat_parameters(requests: list[TraceRequest]) -> None:
    configurable = make_model().configurable_fields(
        temperature=ConfigurableField(id="temperature"),
        max_tokens=ConfigurableField(id="max_tokens"),
    )
    configurable.invoke(BAKERY, config={"configurable": {"temperature": 0.25, "max_tokens": 40}})
    assert sampled(requests, "temperature") == {0.25}
    assert sampled(requests, "max_tokens") == {40}
    requests.clear()
    configurable.invoke(BAKERY)
    assert sampled(requests, "temperature") == {SamplingConfig().temperature}


def test_construction_still_folds_flat_values_into_the_configs() -> None:
    model = make_model(temperature=0.3, max_tokens=64, stop="###", timeout=9)
    assert model.temperature == 0.3 and model.sampling.temperature == 0.3
    assert model.sampling.max_tokens == 64 and model.sampling.stop == ("###",)
    assert model.timeout == 9 and model.pruning.deadline_s == 9
    plain = make_model()
    assert plain.temperature is None and plain.sampling == SamplingConfig()


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"temperature": -1.0}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_k": 0}, "top_k"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": "many"}, "max_tokens"),
        ({"timeout": 0}, "timeout"),
    ],
)
def test_a_bad_per_call_value_fails_before_any_trace_naming_it(
    kwargs: dict[str, Any], name: str, requests: list[TraceRequest]
) -> None:
    with pytest.raises(ValueError, match=rf"\b{name}\b"):
        make_model().invoke(BAKERY, **kwargs)
    assert requests == []


def test_unknown_per_call_arguments_are_named(requests: list[TraceRequest]) -> None:
    with pytest.raises(TypeError, match=r"\['frequency_penalty'\]"):
        make_model().invoke(BAKERY, temperature=0.2, frequency_penalty=0.5)
    assert requests == []


def test_the_runner_is_not_rebuilt_for_per_call_parameters() -> None:
    model = make_model()
    runner = model._deepprune()
    model.invoke(BAKERY, temperature=0.2, max_tokens=40)
    model.bind(top_p=0.5).invoke(BAKERY)
    assert model._deepprune() is runner
    assert runner.sampling == SamplingConfig()


def test_tracing_reports_the_values_the_call_ran_with() -> None:
    model = make_model(temperature=0.5, max_tokens=200)
    params = model._get_ls_params(temperature=0.2, max_tokens=16, stop=["END"])
    assert params["ls_temperature"] == 0.2
    assert params["ls_max_tokens"] == 16
    assert params["ls_stop"] == ["END"]
    copy = model.model_copy(update={"temperature": 0.1})
    assert copy._get_ls_params()["ls_temperature"] == 0.1
    assert copy._identifying_params["sampling"]["temperature"] == 0.1

    recorder = StartRecorder()
    model.invoke(BAKERY, config={"callbacks": [recorder]}, temperature=0.2, timeout=30)
    (invocation,) = recorder.invocation_params
    assert invocation["sampling"]["temperature"] == 0.2
    assert invocation["sampling"]["max_tokens"] == 200
    assert invocation["pruning"]["deadline_s"] == 30
    assert recorder.metadata[0]["ls_temperature"] == 0.2


# -- token counting --------------------------------------------------------------------------------


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[object]]:
    """Fail any connection or name lookup that leaves this machine; yields what was attempted."""
    attempts: list[object] = []
    connect, getaddrinfo = socket.socket.connect, socket.getaddrinfo

    def guarded_connect(self: socket.socket, address: Any) -> Any:
        host = address[0] if isinstance(address, tuple) else address
        if self.family in (socket.AF_INET, socket.AF_INET6) and host not in (
            "127.0.0.1",
            "::1",
            "localhost",
        ):
            attempts.append(address)
            raise OSError(f"network disabled in this test: connect to {address!r}")
        return connect(self, address)

    def guarded_getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host not in (None, "127.0.0.1", "::1", "localhost"):
            attempts.append(host)
            raise OSError(f"network disabled in this test: lookup of {host!r}")
        return getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", guarded_connect)
    monkeypatch.setattr(socket, "getaddrinfo", guarded_getaddrinfo)
    yield attempts
    assert attempts == [], f"token counting reached for the network: {attempts}"


HISTORY: list[BaseMessage] = [
    SystemMessage("You are a careful tutor who explains every step of a calculation."),
    *[
        message
        for turn in range(8)
        for message in (
            HumanMessage(f"Question {turn}: {POOL.problems[turn % len(POOL)].problem}"),
            AIMessage(f"Answer {turn}: " + POOL.problems[turn % len(POOL)].traces[0].text[:600]),
        )
    ],
    HumanMessage(BAKERY),
]


def test_token_counting_uses_the_backends_tokenizer_offline(no_network: list[object]) -> None:
    backend = ReplayBackend(POOL, yield_every=1)
    model = make_model(backend)
    text = "How many muffins did the bakery sell in all?"
    assert model.get_num_tokens(text) == backend.count_prompt_tokens(text) > 0
    assert model.get_token_ids(text) == backend.prompt_token_ids(text)
    assert len(model.get_token_ids(text)) == model.get_num_tokens(text)
    expected = backend.count_prompt_tokens(messages_to_prompt(HISTORY))
    assert model.get_num_tokens_from_messages(HISTORY) == expected > 0
    assert model.get_num_tokens("") == 0 and model.get_token_ids("") == []
    assert model.get_num_tokens_from_messages([]) == 0


def test_spec_string_models_count_offline_too(no_network: list[object]) -> None:
    model = DeepPruneReasoner(backend="replay:demo")
    assert model.get_num_tokens("six times seven") == 3
    assert model._runner is None  # counting resolves the backend only, never the whole runner


def test_trim_messages_trims_with_the_model_as_token_counter(no_network: list[object]) -> None:
    model = make_model()
    assert model.get_num_tokens_from_messages(HISTORY) > 400
    trimmed = trim_messages(
        HISTORY, max_tokens=400, token_counter=model, strategy="last", include_system=True
    )
    assert 1 < len(trimmed) < len(HISTORY)
    assert trimmed[0] == HISTORY[0] and trimmed[-1] == HISTORY[-1]
    assert model.get_num_tokens_from_messages(trimmed) <= 400


def test_a_backend_without_token_ids_still_counts_and_says_why_ids_are_missing(
    no_network: list[object],
) -> None:
    backend = DeafBackend(ReplayBackend(POOL, yield_every=1))
    assert not isinstance(backend, PromptTokenIds)
    model = make_model(backend)
    assert model.get_num_tokens("six times seven") == 3
    with pytest.raises(NotImplementedError, match="DeafBackend does not expose token ids"):
        model.get_token_ids("six times seven")


def test_custom_get_token_ids_still_wins() -> None:
    model = make_model(custom_get_token_ids=lambda text: [1] * len(text))
    assert model.get_token_ids("abc") == [1, 1, 1]
    assert model.get_num_tokens("abcd") == 4


# -- agents ----------------------------------------------------------------------------------------


def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


#: The refusal's reason and what to do instead (bind_tools raises it, whichever factory calls it).
NO_TOOLS = (
    r"^DeepPruneReasoner .*does not support tools"
    r".*give the agent a tool-calling model.*build the agent with no tools"
)


def test_create_agent_given_tools_fails_on_its_first_call_before_any_trace(
    requests: list[TraceRequest],
) -> None:
    # create_agent only stores the model while it builds (it neither calls bind_tools nor reads
    # the profile then): it binds the tools inside its model node, so the first call fails there,
    # before the model is invoked.
    model = make_model()
    recorder = StartRecorder()
    agent = create_agent(model, tools=[add])
    with pytest.raises(NotImplementedError, match=NO_TOOLS):
        agent.invoke({"messages": [{"role": "user", "content": BAKERY}]}, {"callbacks": [recorder]})
    assert requests == []
    assert recorder.invocation_params == []
    assert model._runner is None  # no engine or judge was even resolved


async def test_create_agent_given_tools_fails_on_its_first_async_call_too(
    requests: list[TraceRequest],
) -> None:
    model = make_model()
    agent = create_agent(model, tools=[add])
    with pytest.raises(NotImplementedError, match=NO_TOOLS):
        await agent.ainvoke({"messages": [HumanMessage(BAKERY)]})
    assert requests == []
    assert model._runner is None


def test_create_agent_with_a_response_format_names_structured_output(
    requests: list[TraceRequest],
) -> None:
    # Without a native structured-output mode, create_agent binds the schema as a tool it forces
    # the model to call (tool_choice="any"): the error must say that is the structured output.
    class Answer(BaseModel):
        value: int

    agent = create_agent(make_model(), tools=[], response_format=Answer)
    with pytest.raises(NotImplementedError, match=NO_TOOLS + r".*response_format"):
        agent.invoke({"messages": [{"role": "user", "content": BAKERY}]})
    assert requests == []


def test_create_agent_without_tools_answers(requests: list[TraceRequest]) -> None:
    agent = create_agent(make_model(), tools=[])
    state = agent.invoke({"messages": [{"role": "user", "content": BAKERY}]})
    answer = state["messages"][-1]
    assert isinstance(answer, AIMessage) and not answer.tool_calls
    assert answer.response_metadata["deepprune"]["answer"] == "216"
    assert requests  # the traces ran on the replay backend


# LangGraph's prebuilt create_react_agent (deprecated since LangGraph 1.0 for create_agent) binds
# the tools while it builds the graph, so there building fails.
@pytest.mark.filterwarnings("ignore::langgraph.warnings.LangGraphDeprecatedSinceV10")
def test_create_react_agent_given_tools_fails_at_build_with_the_reason() -> None:
    with pytest.raises(NotImplementedError, match=NO_TOOLS):
        create_react_agent(make_model(), tools=[add])


@pytest.mark.filterwarnings("ignore::langgraph.warnings.LangGraphDeprecatedSinceV10")
def test_create_react_agent_without_tools_answers() -> None:
    agent = create_react_agent(make_model(), tools=[])
    state = agent.invoke({"messages": [HumanMessage(BAKERY)]})
    assert state["messages"][-1].response_metadata["deepprune"]["answer"] == "216"


# -- serialisation and llm_output ------------------------------------------------------------------


def test_dumpd_is_a_constructor_that_loads_back() -> None:
    model = DeepPruneReasoner(
        backend="replay:demo", judge="lexical?midpoint=0.6", pruning=PRUNING, temperature=0.2
    )
    assert DeepPruneReasoner.is_lc_serializable() and model.lc_secrets == {}
    serialised = dumpd(model)
    assert serialised["type"] == "constructor"
    assert serialised["id"] == ["deepprune_lc", "langchain", "DeepPruneReasoner"]
    kwargs = serialised["kwargs"]
    assert kwargs["backend"] == "replay:demo" and kwargs["judge"] == "lexical?midpoint=0.6"
    assert kwargs["pruning"]["prefix"] == {"kind": "tokens", "k": 40}
    assert kwargs["temperature"] == 0.2

    loaded = load(
        serialised, valid_namespaces=["deepprune_lc"], allowed_objects=[DeepPruneReasoner]
    )
    assert isinstance(loaded, DeepPruneReasoner)
    assert loaded == model
    assert loaded.pruning == PRUNING and loaded.sampling.temperature == 0.2
    again = loads(
        dumps(model), valid_namespaces=["deepprune_lc"], allowed_objects=[DeepPruneReasoner]
    )
    assert again == model
    message = loaded.invoke(BAKERY)
    assert message.response_metadata["deepprune"]["answer"] == "216"


def test_objects_serialise_as_markers_that_load_refuses() -> None:
    model = make_model()
    serialised = dumpd(model)
    assert serialised["type"] == "constructor"
    backend = serialised["kwargs"]["backend"]
    assert backend["type"] == "not_implemented" and backend["id"][-1] == "ReplayBackend"
    with pytest.raises(NotImplementedError, match="ReplayBackend"):
        load(serialised, valid_namespaces=["deepprune_lc"], allowed_objects=[DeepPruneReasoner])


def test_llm_output_carries_usage_model_and_summary_like_chat_openai() -> None:
    recorder = StartRecorder()
    model = make_model(model_name="my-reasoner")
    result = model.generate([[HumanMessage(BAKERY)]], callbacks=[recorder])
    message = ai_message(result.generations[0][0])
    usage = message.usage_metadata
    assert usage is not None
    (run_output,) = recorder.llm_outputs
    assert run_output is not None
    assert run_output["token_usage"] == {
        "prompt_tokens": usage["input_tokens"],
        "completion_tokens": usage["output_tokens"],
        "total_tokens": usage["total_tokens"],
        "prompt_tokens_details": {"cached_tokens": usage["input_token_details"]["cache_read"]},
        "completion_tokens_details": {
            "reasoning_tokens": usage["output_token_details"]["reasoning"]
        },
    }
    assert run_output["model_name"] == "my-reasoner"
    assert run_output["model_provider"] == "deepprune"
    assert run_output["deepprune"] == message.response_metadata["deepprune"]
    assert result.llm_output is not None
    assert result.llm_output["token_usage"]["total_tokens"] == usage["total_tokens"]
    assert result.llm_output["model_name"] == "my-reasoner"


def test_llm_output_of_a_batch_sums_the_usage() -> None:
    model = make_model()
    questions: list[list[BaseMessage]] = [[HumanMessage(p.problem)] for p in POOL.problems[:2]]
    result = model.generate(questions)
    assert result.llm_output is not None
    totals = [ai_message(g[0]).usage_metadata for g in result.generations]
    assert result.llm_output["token_usage"]["total_tokens"] == sum(
        u["total_tokens"] for u in totals if u is not None
    )
