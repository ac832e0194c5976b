"""The two ports between the DeepPrune driver and the outside world.

``GenerationBackend`` is anything that can start, stream and abort a trace (vLLM, transformers, a
vLLM server, the replay backend). ``Judge`` is anything that scores prefix pairs. Both are Protocols, so
adapters need no base class and the core never imports an engine. ``Lifecycle`` is the optional third:
an adapter that holds an engine says how to bring it up and release it, so callers (the CLI, a server)
warm it up and shut it down without knowing which engine it is.

The per-token types (``TraceDelta``) are plain slotted dataclasses, not pydantic models: a run streams
hundreds of thousands of them and validation on that path would cost more than the work itself.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

from deepprune_lc.core.config import SamplingConfig

__all__ = [
    "DYNASOR_PROBE_SUFFIX",
    "AnswerProbing",
    "FinishReason",
    "GenerationBackend",
    "Judge",
    "JudgeScores",
    "Lifecycle",
    "PrefixPair",
    "ProbeReply",
    "Prompt",
    "PromptTokenIds",
    "TraceCapacity",
    "TraceDelta",
    "TraceRequest",
    "close_stream",
]

#: A prompt is either plain text or chat messages ``[{"role": ..., "content": ...}, ...]``; backends
#: that serve chat models apply the model's chat template to the latter.
Prompt = str | Sequence[dict[str, str]]

#: Why a trace ended: ``"stop"`` (end of sequence or a stop string), ``"length"`` (its token budget)
#: or ``"abort"`` (the request was aborted). A backend that fails raises ``BackendError`` instead of
#: inventing a fourth reason.
FinishReason = Literal["stop", "length", "abort"]


@dataclass(frozen=True, slots=True)
class TraceRequest:
    """Start (or resume) one trace.

    ``resume_token_ids`` are the exact token ids the trace produced before it was parked. A backend
    resumes by submitting prompt + these ids (a prefix-cache hit on a real engine); it never
    re-tokenises text, which could change the ids and break the continuation.
    """

    request_id: str
    trace_index: int
    prompt: Prompt
    sampling: SamplingConfig
    seed: int
    resume_token_ids: tuple[int, ...] = ()


@dataclass(slots=True)
class TraceDelta:
    """New output of one trace since the previous delta.

    ``finish_reason`` is set on the last delta only: ``"stop"`` (end of sequence or a stop string),
    ``"length"`` (max_tokens reached) or ``"abort"`` (the request was aborted). ``logprobs`` holds, per
    new token, the top-k log-probabilities when the backend was asked for them.
    """

    token_ids: Sequence[int]
    text: str
    finish_reason: FinishReason | None = None
    logprobs: Sequence[Sequence[float]] | None = None


@runtime_checkable
class GenerationBackend(Protocol):
    """Streams traces and stops them on request."""

    def stream(self, request: TraceRequest) -> AsyncIterator[TraceDelta]:
        """Start the request and yield its deltas until it finishes or is aborted.

        After ``abort(request_id)`` the stream must end (its last delta carrying
        ``finish_reason="abort"``) and yield nothing the engine did not actually produce.
        """
        ...

    async def abort(self, request_id: str) -> None:
        """Stop decoding the request as soon as possible. Aborting a finished request is a no-op."""
        ...

    def count_prompt_tokens(self, prompt: Prompt) -> int:
        """Tokens the prompt occupies (for usage reporting)."""
        ...


@runtime_checkable
class PromptTokenIds(Protocol):
    """Optional: a backend that can show the token ids it would prefill for a prompt.

    Not part of ``GenerationBackend``: the driver never needs ids of a prompt, only their count
    (``count_prompt_tokens``). What uses it is token counting outside a run, such as LangChain's
    ``get_token_ids``, which must use the backend's own tokenizer and never download one. The ids
    follow the backend's rendering rule, so ``len(prompt_token_ids(p)) == count_prompt_tokens(p)``.
    """

    def prompt_token_ids(self, prompt: Prompt) -> Sequence[int]:
        """The prompt's token ids, as this backend renders and counts it."""
        ...


@runtime_checkable
class TraceCapacity(Protocol):
    """Optional: a backend that can serve only so many distinct traces of a prompt.

    A sampling engine draws a new trace for every seed; a backend that replays recorded traces has
    a fixed number per prompt, and asking for more can only repeat them (repeated traces agree with
    themselves, so they would inflate the vote). A run whose ``n_traces`` was left at its default
    asks ``max_traces(prompt)`` first and samples at most that many; an ``n_traces`` the caller
    set is kept, and the backend decides what asking for more means (the replay backend raises,
    naming the pool size, unless told to cycle).
    """

    def max_traces(self, prompt: Prompt) -> int | None:
        """Distinct traces this backend can produce for ``prompt``; ``None`` for no limit (or a
        prompt it does not recognise, which the run's stream will then report)."""
        ...


@runtime_checkable
class Lifecycle(Protocol):
    """An adapter whose engine can be brought up ahead of use and released when done.

    Optional: backends (and judges) load lazily on first use, so nothing requires ``astart``; it
    moves the load (weights, KV cache, worker threads) out of the first request's latency and lets
    a caller report it separately. ``aclose`` releases what ``astart`` (or first use) acquired. Both
    are idempotent and may be awaited from any event loop. The ``a`` prefix follows the Python
    convention for the async twin (``aclose`` as in ``contextlib.aclosing``): several adapters also
    offer blocking ``start``/``load``/``close`` methods for code outside an event loop.
    """

    async def astart(self) -> None:
        """Load or warm up the engine now (a no-op when it already runs)."""
        ...

    async def aclose(self) -> None:
        """Release the engine (a no-op when nothing is held); a later use may start it again."""
        ...


#: The published Dynasor probe (Fu et al., 2024), the default question a probe asks a thinking trace.
#: A backend whose chat template has a think block closes it first (``</think>``) and then appends
#: this; it ends inside ``\\boxed{`` so the model's next tokens are the answer itself.
DYNASOR_PROBE_SUFFIX = (
    "... Oh, I suddenly got the answer to the whole problem, **Final Answer**\n\n\\[ \\boxed{"
)


@dataclass(frozen=True, slots=True)
class ProbeReply:
    """What a trace answered when it was asked for its answer now, without being disturbed.

    ``text`` is what the model said after the probe suffix (raw, e.g. ``"204} \\]"``); ``answer`` is
    the answer when the backend knows it directly (a recorded probe), else None and the caller
    extracts it from ``"\\boxed{" + text`` with the run's answer rules. ``at_tokens``: the trace's
    decoded tokens the probe saw. ``prefill_tokens`` / ``decoded_tokens`` / ``seconds``: what the
    probe cost (counted in the result like judge cost; 0 on replay, which runs no model).
    ``unknown``: the probe produced no answer (the recorded ``"ERR"``, or nothing parseable).
    ``observed_at``: the decoded tokens at which the answer was observed, when that is not
    ``at_tokens``: a recording answers with the probe recorded at the last offset the trace
    reached, so two replies with the same ``observed_at`` are one observation, not two (a probe a
    model answers now leaves it None).
    """

    text: str
    at_tokens: int
    answer: str | None = None
    prefill_tokens: int = 0
    decoded_tokens: int = 0
    seconds: float = 0.0
    unknown: bool = False
    observed_at: int | None = None


@runtime_checkable
class AnswerProbing(Protocol):
    """Optional: a backend that can ask a running trace "what is your answer now?".

    The probe must not disturb the trace: its tokens are not appended to the trace, its sampling
    state is unchanged, and the trace keeps decoding (or stays parked) as before. On an engine it is
    a short extra greedy request (prompt ids + the trace's ids so far + ``suffix``; the prefix cache
    makes the prefill nearly free); on replay, the recorded probe at the latest offset reached.
    ``suffix=None`` takes the backend's default (``DYNASOR_PROBE_SUFFIX``, the think block closed
    first where the chat template has one). Raises ``KeyError`` for a request id the backend does
    not hold (never started, or already ended and forgotten).
    """

    async def probe(
        self, request_id: str, *, suffix: str | None = None, max_tokens: int = 20
    ) -> ProbeReply:
        """Ask the trace ``request_id`` for its answer now."""
        ...


@dataclass(frozen=True, slots=True)
class PrefixPair:
    """Two trace prefixes the judge should compare."""

    trace_a: int
    trace_b: int
    prefix_a: str
    prefix_b: str


@dataclass(frozen=True, slots=True)
class JudgeScores:
    """The judge's answer for a batch of pairs.

    ``probabilities[i]`` is P(both traces of pair i end in the same answer). ``prefill_tokens`` is what
    the judge had to read to decide (0 for judges that run no model), so a run can report judge cost.
    """

    probabilities: Sequence[float]
    prefill_tokens: int = 0
    details: dict[str, object] = field(default_factory=dict)


@runtime_checkable
class Judge(Protocol):
    """Predicts whether two traces will reach the same final answer from their prefixes."""

    async def score(self, pairs: Sequence[PrefixPair]) -> JudgeScores:
        """Score every pair; ``len(result.probabilities) == len(pairs)``."""
        ...


async def close_stream(stream: AsyncIterator[TraceDelta] | None) -> None:
    """Close what ``GenerationBackend.stream`` returned, if it can be closed.

    The port promises an ``AsyncIterator``; an async generator (every backend here) has
    ``aclose``, which runs its cleanup (the engine's abort) now rather than when it is collected.
    Whoever stops reading a stream early calls this: the driver, wrappers that relay a stream.
    """
    aclose = getattr(stream, "aclose", None) if stream is not None else None
    if aclose is not None:
        await aclose()
