"""Malformed and oversized trace-pool lines fail with the file and line, never a raw error.

Before: a 100k-deep nested field raised a raw RecursionError, invalid UTF-8 a raw
UnicodeDecodeError (no file:line), and a 50 MB trace was accepted, then tokenised whole on the event
loop when first streamed (seconds of stalled loop, gigabytes of memory).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from deepprune_lc import TracePoolError, load_trace_pool
from deepprune_lc.backends.pool import MAX_LINE_BYTES, MAX_TRACE_CHARS

GOOD = {"id": "p1", "problem": "What is 2+3?", "answer": "5", "traces": [{"text": "\\boxed{5}"}]}


def _write(path: Path, *lines: bytes) -> Path:
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    return path


def _good(problem_id: str = "p1") -> bytes:
    return json.dumps(GOOD | {"id": problem_id}).encode()


def test_a_deeply_nested_field_names_the_file_and_line(tmp_path: Path) -> None:
    nested = b'{"id": "p2", "problem": "q", "traces": [{"text": "t"}], "meta": '
    nested += b"[" * 100_000 + b"]" * 100_000 + b"}"
    path = _write(tmp_path / "deep.jsonl", _good(), nested)
    with pytest.raises(TracePoolError, match=r"deep\.jsonl:2: invalid JSON: nested too deeply"):
        load_trace_pool(path)


def test_invalid_utf8_names_the_file_line_and_byte(tmp_path: Path) -> None:
    bad = b'{"id": "p2", "problem": "caf\xe9", "traces": [{"text": "t"}]}'
    path = _write(tmp_path / "latin1.jsonl", _good(), _good("p3"), bad)
    with pytest.raises(TracePoolError, match=r"latin1\.jsonl:3: not UTF-8: byte 0xe9 at column 29"):
        load_trace_pool(path)


def test_a_line_over_the_size_limit_is_refused_before_it_is_read_whole(tmp_path: Path) -> None:
    big = json.dumps(GOOD | {"id": "p2", "traces": [{"text": "x" * 5000}]}).encode()
    path = _write(tmp_path / "big.jsonl", _good(), big)
    with pytest.raises(TracePoolError, match=r"big\.jsonl:2: line longer than 4096 bytes"):
        load_trace_pool(path, max_line_bytes=4096)
    assert len(load_trace_pool(path)) == 2  # the default limit is far above real pools
    assert MAX_LINE_BYTES >= 64 * 2**20


def test_a_trace_longer_than_any_context_is_refused_naming_it(tmp_path: Path) -> None:
    huge = {"id": "p2", "problem": "q", "traces": [{"text": "t"}, {"text": "7 " * MAX_TRACE_CHARS}]}
    path = _write(tmp_path / "huge.jsonl", _good(), json.dumps(huge).encode())
    with pytest.raises(
        TracePoolError,
        match=rf"huge\.jsonl:2: traces\.1\.text: {2 * MAX_TRACE_CHARS} characters, over the limit",
    ):
        load_trace_pool(path)
    assert len(load_trace_pool(path, max_trace_chars=3 * MAX_TRACE_CHARS)) == 2


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"[1, 2]", "expected a JSON object, got list"),
        (b'{"id": "p2", "problem": "q"', "invalid JSON"),
        (b'{"id": "p2", "problem": "q", "traces": []}', "traces: List should have at least 1"),
        (b'{"id": "p2", "problem": "q", "traces": [{"text": 5}]}', "traces.0.text"),
        (b'{"id": "p2", "problem": "q", "traces": [{"text": "t"}], "answer": NaN}', "answer"),
    ],
)
def test_other_malformed_lines_name_the_file_and_line(
    tmp_path: Path, line: bytes, expected: str
) -> None:
    path = _write(tmp_path / "pool.jsonl", _good(), line)
    with pytest.raises(TracePoolError) as caught:
        load_trace_pool(path)
    assert str(caught.value).startswith(f"{path}:2: ")
    assert expected in str(caught.value)
