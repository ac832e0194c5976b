"""The wire format of a vLLM server's ``/v1/completions`` stream, as the server backend uses it.

Why a module of its own: what goes over the wire is checked against vLLM's own code for the
version this project targets (0.32), and keeping it apart from the connection handling keeps those
facts in one place:

* ``prompt`` may be a list of token ids (``CompletionRequest.prompt``); the backend always sends
  ids (prompt ids + the trace's ids when resuming), never text, so a resumed trace continues from
  the exact ids it produced;
* ``return_token_ids=true`` puts the delta's token ids in every streamed chunk
  (``choices[0].token_ids``) and the prompt's ids in the first one (``prompt_token_ids``); a server
  that does not know the field ignores it (vLLM's request models accept extra fields), so its
  absence in a chunk is how an older server is recognised;
* ``logprobs=k`` adds ``choices[0].logprobs.top_logprobs``, one mapping per token; with
  ``return_tokens_as_token_ids=true`` its keys are ``"token_id:<id>"``, so two tokens with the same
  text do not collide (vLLM adds the sampled token when it ranks below k: it is left out here);
* the stream is Server-Sent Events: ``data: {json}`` lines, comments (``: keep-alive``) and a final
  ``data: [DONE]``; a failure after the response started is a ``data: {"error": {...}}`` chunk;
* a finished chunk's ``finish_reason`` is vLLM's (``stop``, ``length``, ``abort``, ``repetition``).

Stop strings are not sent: the backend applies them to the streamed text itself, with the shared
``StopMatcher`` (the rule every backend follows). vLLM would apply them in the engine, holding back
text that could start a stop string; a stream closed to park the trace loses that held text (the
in-process engine hands it over with the abort, a closed HTTP stream cannot), and a resumed
request checks only its own output. Matching on the client keeps the held text with the trace and
primes a resumed trace with the text of its ids, so parked + resumed text is the unparked text.

Sampling is mapped as the in-process backend maps it (``deepprune_vllm.sampling``): the run's
``SamplingConfig`` sets temperature, top-p, top-k (``-1`` becomes vLLM's ``0``), stop strings and the
token budget; each trace has its own seed, mixed with the resume point when resuming
(``trace_seed``); extra request fields (``ignore_eos``, ``min_p``, ...) are checked by name here,
since a client cannot import vLLM to validate them, and the server validates their values.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from deepprune_lc.core import FinishReason, SamplingConfig
from deepprune_vllm.engine import _unknown_names_message
from deepprune_vllm.sampling import trace_seed

__all__ = [
    "COMPLETION_OVERRIDE_FIELDS",
    "DONE",
    "MANAGED_COMPLETION_FIELDS",
    "Chunk",
    "ServerStreamError",
    "check_completion_overrides",
    "completion_body",
    "finish_reason_of",
    "parse_sse_line",
]

#: ``CompletionRequest`` fields (vLLM 0.32) a caller may set on every request through
#: ``sampling_overrides``: sampling extras and scheduling hints. Values are the server's to check.
COMPLETION_OVERRIDE_FIELDS = frozenset(
    {
        "allowed_token_ids",
        "bad_words",
        "cache_salt",
        "frequency_penalty",
        "ignore_eos",
        "logit_bias",
        "min_p",
        "min_tokens",
        "presence_penalty",
        "priority",
        "repetition_detection",
        "repetition_penalty",
        "response_format",
        "skip_special_tokens",
        "spaces_between_special_tokens",
        "stop_token_ids",
        "structured_outputs",
        "thinking_token_budget",
        "user",
        "vllm_xargs",
    }
)

#: Request fields the backend sets itself, and why a caller cannot override them.
MANAGED_COMPLETION_FIELDS: dict[str, str] = {
    **{
        name: f"set it through SamplingConfig.{name}"
        for name in ("temperature", "top_p", "top_k", "max_tokens", "stop")
    },
    "seed": "each trace gets its own seed from the run (TraceRequest.seed)",
    "n": "every trace is its own request (n is always 1)",
    "model": "use VLLMServerBackend(model=...)",
    "prompt": "the backend sends the rendered prompt ids (+ the trace's ids when resuming)",
    "include_stop_str_in_output": "stop strings are applied by the backend, which drops them",
    "stream": "the backend always streams",
    "stream_options": "the backend reads no usage chunk",
    "echo": "the backend needs only the new tokens",
    "logprobs": "use VLLMServerBackend(logprobs=k)",
    "return_token_ids": "always on: the trace's token ids come from it",
    "return_tokens_as_token_ids": "on whenever logprobs are asked for",
    "request_id": "derived from the trace's request id",
    "use_beam_search": "DeepPrune samples independent traces",
    "suffix": "not a completion of DeepPrune's kind",
}

#: ``parse_sse_line``'s result for the stream's end marker, ``data: [DONE]``.
DONE = object()

#: vLLM's finish reasons that end a trace normally, as the port's ``FinishReason`` ("repetition":
#: vLLM stopped a looping output, its own stop rule).
_FINISH_REASONS: dict[str, FinishReason] = {
    "stop": "stop",
    "length": "length",
    "abort": "abort",
    "repetition": "stop",
}


class ServerStreamError(Exception):
    """A streamed ``{"error": ...}`` chunk, or a chunk that is not what vLLM sends."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


@dataclass(slots=True)
class Chunk:
    """One streamed chunk of ``/v1/completions``: the delta of the request's one choice.

    ``token_ids`` is None when the server sent none (it does not support ``return_token_ids``);
    ``finish_reason`` is vLLM's raw string.
    """

    token_ids: list[int] | None
    text: str
    finish_reason: str | None
    logprobs: list[list[float]] | None = None


def check_completion_overrides(overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """Validate the names of extra request fields (``{"ignore_eos": True}``); return a copy.

    ``ValueError`` names an unknown field (with the closest known one) or a field the backend
    manages (with the reason). Values go to the server, which rejects bad ones with a 400.
    """
    extras = dict(overrides or {})
    managed = sorted(name for name in extras if name in MANAGED_COMPLETION_FIELDS)
    if managed:
        reasons = "; ".join(f"{name}: {MANAGED_COMPLETION_FIELDS[name]}" for name in managed)
        raise ValueError(f"sampling_overrides may not set {managed}: {reasons}")
    unknown = sorted(name for name in extras if name not in COMPLETION_OVERRIDE_FIELDS)
    if unknown:
        raise ValueError(
            _unknown_names_message(
                "/v1/completions field(s) for sampling_overrides",
                unknown,
                COMPLETION_OVERRIDE_FIELDS,
            )
        )
    return extras


def completion_body(
    *,
    model: str | None,
    prompt_ids: Sequence[int],
    sampling: SamplingConfig,
    seed: int,
    resumed_tokens: int,
    max_tokens: int | None,
    request_id: str,
    logprobs: int | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON body of one streamed ``/v1/completions`` request for a trace.

    ``prompt_ids`` already holds the resumed ids; ``resumed_tokens`` says how many of them the
    trace produced (they count toward ``min_tokens`` and reseed the request, as in-process);
    ``max_tokens`` is what is left of the trace's budget (None: left out, and the server
    decodes to the end of its context window, finishing with "length").
    """
    extras = dict(overrides or {})
    if resumed_tokens and extras.get("min_tokens"):
        extras["min_tokens"] = max(0, int(extras["min_tokens"]) - resumed_tokens)
    body: dict[str, Any] = {
        **extras,
        "prompt": list(prompt_ids),
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "top_k": 0 if sampling.top_k == -1 else sampling.top_k,
        "seed": trace_seed(seed, resumed_tokens),
        "n": 1,
        "stream": True,
        "return_token_ids": True,
        "request_id": request_id,
    }
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    if model is not None:
        body["model"] = model
    # sampling.stop is applied by the caller (see the module docstring), never by the server.
    if logprobs is not None:
        body["logprobs"] = logprobs
        body["return_tokens_as_token_ids"] = True
    return body


def parse_sse_line(line: str, *, logprobs: int | None = None) -> Chunk | object | None:
    """One line of the event stream: a ``Chunk``, ``DONE``, or None (blank line, comment, a chunk
    with no choice such as a usage chunk).

    Raises ``ServerStreamError`` for an error chunk (its ``code`` is the server's status code) and
    for data that is not JSON of the expected shape.
    """
    if not line.startswith("data:"):
        return None  # blank separator, ": keep-alive" comment, "event:"/"id:" fields
    data = line[5:].strip()
    if data == "[DONE]":
        return DONE
    try:
        payload = json.loads(data)
    except json.JSONDecodeError as exc:
        raise ServerStreamError(
            f"the server sent a chunk that is not JSON: {data[:200]!r}"
        ) from exc
    if not isinstance(payload, dict):
        raise ServerStreamError(f"the server sent an unexpected chunk: {data[:200]!r}")
    error = payload.get("error")
    if error is not None:
        if isinstance(error, dict):
            code = error.get("code")
            message = str(error.get("message") or error)
            raise ServerStreamError(message, code if isinstance(code, int) else None)
        raise ServerStreamError(str(error))
    choices = payload.get("choices")
    if not choices:
        return None
    choice = choices[0]
    ids = choice.get("token_ids")
    rows = None
    if logprobs:
        rows = _top_logprobs(choice.get("logprobs"), logprobs)
    return Chunk(
        token_ids=None if ids is None else [int(i) for i in ids],
        text=choice.get("text") or "",
        finish_reason=choice.get("finish_reason"),
        logprobs=rows,
    )


def finish_reason_of(reason: str) -> FinishReason | None:
    """vLLM's finish reason as the port's; None for one that is not a normal end ("error")."""
    return _FINISH_REASONS.get(reason)


def _top_logprobs(entry: Any, k: int) -> list[list[float]] | None:
    """Per token, the k highest log-probabilities, best first."""
    if not isinstance(entry, dict):
        return None
    per_token = entry.get("top_logprobs")
    if per_token is None:
        return None
    rows = []
    for by_token in per_token:
        values = sorted((float(v) for v in (by_token or {}).values()), reverse=True)
        rows.append(values[:k])
    return rows
