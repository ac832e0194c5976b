"""Construction-time checks and the package surface: none of these start an engine."""

from __future__ import annotations

import subprocess
import sys
import types

import deepprune_vllm
import pytest
from deepprune_vllm import VLLMBackend, backend_from_spec, spec_arguments
from deepprune_vllm.sampling import build_sampling_params, check_sampling_overrides, trace_seed

from deepprune_lc import SamplingConfig
from deepprune_lc.core import parse_spec
from deepprune_lc.runtime import resolve_backend

MODEL = "/nonexistent/model-for-config-tests"


def test_unknown_engine_arguments_are_named() -> None:
    with pytest.raises(ValueError, match=r"'max_model_length' \(did you mean 'max_model_len'\?\)"):
        VLLMBackend(MODEL, max_model_length=1024)
    with pytest.raises(ValueError, match="'bogus_arg'"):
        VLLMBackend(MODEL, engine_args={"bogus_arg": 1, "dtype": "float32"})


def test_engine_argument_conflicts_are_errors() -> None:
    with pytest.raises(ValueError, match="first argument"):
        VLLMBackend(MODEL, engine_args={"model": "other"})
    with pytest.raises(ValueError, match="given twice"):
        VLLMBackend(MODEL, engine_args={"dtype": "float32"}, dtype="bfloat16")
    with pytest.raises(ValueError, match="model"):
        VLLMBackend("  ")


def test_prefix_caching_is_on_by_default_and_args_pass_through() -> None:
    backend = VLLMBackend(
        MODEL, tensor_parallel_size=2, gpu_memory_utilization=0.5, engine_args={"seed": 3}
    )
    assert backend.engine_args == {
        "model": MODEL,
        "enable_prefix_caching": True,
        "tensor_parallel_size": 2,
        "gpu_memory_utilization": 0.5,
        "seed": 3,
    }
    assert (
        VLLMBackend(MODEL, enable_prefix_caching=False).engine_args["enable_prefix_caching"]
        is False
    )
    assert not backend.engine.started  # lazy: nothing loaded yet


def test_equal_engine_arguments_share_one_engine() -> None:
    a = VLLMBackend(MODEL, dtype="float32", max_model_len=512)
    b = VLLMBackend(MODEL, engine_args={"max_model_len": 512}, dtype="float32", logprobs=2)
    c = VLLMBackend(MODEL, dtype="float32", max_model_len=256)
    assert a.engine is b.engine
    assert a.engine is not c.engine
    assert (
        backend_from_spec(parse_spec(f"vllm:{MODEL}?dtype=float32&max_model_len=512")).engine
        is a.engine
    )


def test_spec_parsing() -> None:
    assert spec_arguments(parse_spec("vllm:Qwen/Qwen3-8B")) == ("Qwen/Qwen3-8B", {})
    model, kwargs = spec_arguments(
        parse_spec("vllm:m?enforce_eager=true&max_model_len=1024&gpu_memory_utilization=0.5")
    )
    assert (model, kwargs) == (
        "m",
        {"enforce_eager": True, "max_model_len": 1024, "gpu_memory_utilization": 0.5},
    )
    backend = backend_from_spec(parse_spec("vllm:m?logprobs=3&model_name=tiny&dtype=float32"))
    assert (backend.logprobs, backend.model_name, backend.engine_args["dtype"]) == (
        3,
        "tiny",
        "float32",
    )
    with pytest.raises(ValueError, match="twice"):
        parse_spec("vllm:m?dtype=a&dtype=b")
    with pytest.raises(ValueError, match="unknown vLLM engine"):
        backend_from_spec(parse_spec("vllm:m?not_an_arg=1"))


def test_core_specs_resolve_to_this_backend() -> None:
    backend = resolve_backend(f"vllm:{MODEL}?dtype=float32")
    assert isinstance(backend, VLLMBackend)
    assert resolve_backend(f"vllm:{MODEL}?dtype=float32") is backend


def test_unknown_or_managed_sampling_keys_are_errors() -> None:
    with pytest.raises(ValueError, match=r"'ignore_eso' \(did you mean 'ignore_eos'\?\)"):
        VLLMBackend(MODEL, sampling_overrides={"ignore_eso": True})
    with pytest.raises(ValueError, match=r"SamplingConfig\.temperature"):
        check_sampling_overrides({"temperature": 0.3})
    with pytest.raises(ValueError, match="own seed"):
        check_sampling_overrides({"seed": 1})
    with pytest.raises(ValueError, match="logprobs=k"):
        check_sampling_overrides({"logprobs": 5})
    with pytest.raises(ValueError, match="repetition_penalty"):
        check_sampling_overrides({"repetition_penalty": -1.0})
    assert check_sampling_overrides({"ignore_eos": True, "min_p": 0.1}) == {
        "ignore_eos": True,
        "min_p": 0.1,
    }


@pytest.mark.parametrize("bad", [0, -1, True, 2.5])
def test_logprobs_must_be_a_positive_integer(bad: object) -> None:
    with pytest.raises(ValueError, match="logprobs"):
        VLLMBackend(MODEL, logprobs=bad)  # type: ignore[arg-type]


def test_sampling_config_maps_onto_sampling_params() -> None:
    from vllm.sampling_params import RequestOutputKind

    config = SamplingConfig(temperature=0.6, top_p=0.9, top_k=-1, max_tokens=100, stop=("END",))
    params = build_sampling_params(
        config, seed=7, logprobs=4, overrides={"ignore_eos": True, "min_tokens": 50}
    )
    assert (params.temperature, params.top_p, params.top_k) == (0.6, 0.9, 0)
    assert (params.max_tokens, params.min_tokens, params.stop) == (100, 50, ["END"])
    assert (params.seed, params.n, params.logprobs, params.ignore_eos) == (7, 1, 4, True)
    assert params.output_kind == RequestOutputKind.DELTA
    assert build_sampling_params(SamplingConfig(top_k=20), seed=0).top_k == 20

    resumed = build_sampling_params(config, seed=7, resumed_tokens=30, overrides={"min_tokens": 50})
    assert (resumed.max_tokens, resumed.min_tokens) == (70, 20)  # budgets count resumed tokens
    assert resumed.seed == trace_seed(7, 30) != 7  # the continuation does not replay its draws
    assert len({trace_seed(s, 0) for s in range(64)}) == 64
    assert 0 <= trace_seed(2**80 + 5, 0) < 2**63

    with pytest.raises(ValueError, match="temperature"):
        build_sampling_params(SamplingConfig(temperature=3.0), seed=0)  # vLLM caps it at 2


def test_public_api_is_exactly_all() -> None:
    # The server names load lazily: resolve every one, then nothing public may be there that
    # __all__ omits.
    for name in deepprune_vllm.__all__:
        assert not isinstance(getattr(deepprune_vllm, name), types.ModuleType)
    exported = {
        name
        for name, value in vars(deepprune_vllm).items()
        if not name.startswith("_")
        and not isinstance(value, types.ModuleType)
        and name in dir(deepprune_vllm)
    }
    assert set(deepprune_vllm.__all__) - {"__version__"} == exported


def test_the_core_does_not_import_the_integration() -> None:
    code = (
        "import sys, deepprune_lc; from deepprune_lc import DeepPruneReasoner; "
        "print('deepprune_vllm' in sys.modules, 'vllm' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False False"
