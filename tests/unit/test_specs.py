"""The spec grammar, ``kind:arg?key=value``, parsed once in the core for every kind."""

from __future__ import annotations

import pytest

from deepprune_lc.core import Spec, SpecError, parse_spec


@pytest.mark.parametrize(
    ("text", "kind", "arg", "options"),
    [
        ("lexical", "lexical", "", {}),
        ("replay:demo", "replay", "demo", {}),
        ("replay:/data/pools/dev.jsonl", "replay", "/data/pools/dev.jsonl", {}),
        ("replay:C:\\pools\\dev.jsonl", "replay", "C:\\pools\\dev.jsonl", {}),
        ("vllm:Qwen/Qwen3-8B", "vllm", "Qwen/Qwen3-8B", {}),
        (
            "vllm:Qwen/Qwen3-8B?max_model_len=8192&gpu_memory_utilization=0.85",
            "vllm",
            "Qwen/Qwen3-8B",
            {"max_model_len": "8192", "gpu_memory_utilization": "0.85"},
        ),
        (
            "vllm-server:http://h:8000/v1?model=x",
            "vllm-server",
            "http://h:8000/v1",
            {"model": "x"},
        ),
        ("lexical?midpoint=0.5", "lexical", "", {"midpoint": "0.5"}),
        ("  embedding  ", "embedding", "", {}),
        ("t:a?k=&x=%3D%26+y", "t", "a", {"k": "", "x": "=& y"}),
    ],
)
def test_specs_parse_into_kind_arg_and_options(
    text: str, kind: str, arg: str, options: dict[str, str]
) -> None:
    spec = parse_spec(text)
    assert (spec.kind, spec.arg, dict(spec.options)) == (kind, arg, options)
    assert spec.raw == text
    assert parse_spec(spec.canonical) == spec  # the canonical string parses back equal


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "empty"),
        ("   ", "empty"),
        (":model", "no kind before ':'"),
        ("?k=v", "no kind before '?'"),
        ("/data/pool.jsonl", "is not a name"),
        ("my kind:x", "is not a name"),
        ("replay:", "nothing after ':'"),
        ("replay:  ", "nothing after ':'"),
        ("lexical?", "nothing after '?'"),
        ("vllm:m?dtype", "'dtype' is not key=value"),
        ("vllm:m?=3", "'=3' is not key=value"),
        ("vllm:m?a=1&&b=2", "'' is not key=value"),
        ("vllm:m?dtype=a&dtype=b", "'dtype' given twice"),
    ],
)
def test_malformed_specs_say_what_is_wrong(text: str, problem: str) -> None:
    with pytest.raises(SpecError, match=problem) as info:
        parse_spec(text)
    assert isinstance(info.value, ValueError)
    assert repr(text) in str(info.value)


def test_a_spec_that_is_not_a_string_is_an_error() -> None:
    with pytest.raises(SpecError, match=r"expected a string.*got int"):
        parse_spec(3)  # type: ignore[arg-type]


def test_equal_specs_ignore_option_order_and_raw_text() -> None:
    a = parse_spec("vllm:m?b=2&a=1")
    b = parse_spec(" vllm:m?a=1&b=2 ")
    assert a == b and hash(a) == hash(b)
    assert a.canonical == b.canonical == str(a) == "vllm:m?a=1&b=2"
    assert a.raw != b.raw
    assert parse_spec("vllm:m?a=1") != parse_spec("vllm:m?a=2")
    assert parse_spec("t:x y?k=a b").canonical == "t:x y?k=a%20b"


def test_spec_options_are_read_only() -> None:
    spec = parse_spec("t?k=v")
    with pytest.raises(TypeError):
        spec.options["k"] = "w"  # type: ignore[index]
    built = Spec("t", "x", {"k": "v"})
    assert built.raw == "t:x?k=v" and built == parse_spec("t:x?k=v")
    with pytest.raises(SpecError, match="kind"):
        Spec("not a kind")


def test_check_options_names_unknown_keys_and_the_known_ones() -> None:
    spec = parse_spec("lexical?midpont=0.5&ngram=3")
    spec.check_options({"midpoint", "ngram", "midpont"})
    with pytest.raises(
        SpecError, match=r"unknown option 'midpont'; kind 'lexical' takes 'midpoint'"
    ):
        spec.check_options({"midpoint", "ngram"})
    with pytest.raises(SpecError, match="takes no options"):
        parse_spec("replay:demo?speed=2").check_options()
    parse_spec("replay:demo").check_options()
