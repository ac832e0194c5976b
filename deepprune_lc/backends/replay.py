"""``ReplayBackend``: a ``GenerationBackend`` that plays recorded traces back token by token.

Why: DeepPrune's behaviour (which traces get pruned, what the vote says, how many tokens are saved)
depends on real traces, but producing them needs a GPU. Replaying a ``TracePool`` gives the driver the
same stream/abort/resume contract a real engine has, deterministically and on any machine, so the
driver, the tests and the benchmarks exercise the real control flow without a model.

Contract, mirroring an engine:

* the prompt selects the problem (``TracePool.find_by_prompt``; chat prompts use the last user
  message) and ``trace_index`` selects the recorded trace. Past the number recorded,
  ``reuse="cycle"`` (the constructor's default) replays them again (index modulo the number) and
  ``reuse="error"`` (what ``replay:`` spec strings build) raises, naming the pool size;
  ``max_traces(prompt)`` (the ``TraceCapacity`` port) says how many there are, so a run left at
  the default ``n_traces`` samples no more than that;
* one ``TraceDelta`` per token; the last token's delta carries ``finish_reason`` (``"stop"``, or
  ``"length"`` when ``sampling.max_tokens`` cuts the trace; resumed tokens count toward the limit);
* ``sampling.stop`` strings end the trace as vLLM does (``deepprune_lc.backends.stops``): the text
  ends right before the first stop string to complete, the token that completed it is the last
  one streamed, and the finish reason is ``"stop"``; text that may start a stop string is held
  back until it cannot, so no part of a stop string is ever streamed;
* ``abort(request_id)`` is exact: the flag is checked before every token, so a stream parked at a
  ``yield`` when it is aborted produces *zero* further tokens and ends with an empty ``"abort"``
  delta. (A real engine has slack here; the replay has none, which keeps token accounting testable.)
  A request is live from its first ``__anext__`` until its generator ends; aborting it before it
  started, after it ended, or under an unknown id does nothing;
* ``resume_token_ids`` must be a prefix of the trace's ids; the stream continues after them and
  never re-emits them, as a prefix-cache hit on a real engine would.

Pacing: ``seconds_per_token > 0`` sleeps before each token (a crude model of decode latency); ``0``
runs as fast as possible but yields to the event loop every ``yield_every`` tokens, so concurrent
streams interleave as they would on a batching engine instead of finishing one after another.
So, at ``seconds_per_token=0``, time is event-loop turns and a run is reproducible: its decisions
depend only on how many turns pass between a judge request and its verdict (the tokens each trace
decodes meanwhile). Anything that takes turns on that path (an async callback handler of the
judge's child run, a judge that awaits real I/O) shifts them, as real time does on an engine.

Text-free traces (recorded as ``tokens`` + ``final_answer`` + ``probes``, ``backends.pool``) play
in chunks: one delta per ``chunk_tokens`` tokens (default ``DEFAULT_CHUNK_TOKENS``) carrying
synthetic ids (token ``i`` of a trace has id ``i + 1``) and no text; the last delta carries
``\\boxed{<final_answer>}``, all the run's answer extraction reads. A pool of 30 x 128 traces of
14k tokens is 55M tokens per configuration, which one delta per token could not play in reasonable
time. Every stream yields to the event loop after each chunk, so concurrent traces stay in
lockstep (one chunk per turn); abort is checked before every chunk, so a trace parked or aborted
mid-run keeps exactly the tokens delivered (whole chunks), and resume continues at the exact
token. ``probe(request_id)`` (the ``AnswerProbing`` port) answers with the recorded probe at the
latest offset the trace has reached.

The token budget: a replay plays each recorded trace to its end unless the caller set
``sampling.max_tokens`` (it is in the config's ``model_fields_set``): the default budget (2048)
is an engine's guard against runaway generation, and recorded reasoning traces run to 41k tokens.

The per-token path does a set lookup, a slotted-dataclass construction and a yield; token ids are
tokenised once per (problem, trace) and kept as pre-built 1-tuples, so a delta allocates nothing else.
"""

from __future__ import annotations

import asyncio
import math
import random
import threading
from collections import Counter
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from typing import Literal

from deepprune_lc.backends.pool import NO_ANSWER, PoolProblem, PoolTrace, TracePool
from deepprune_lc.backends.stops import StopMatcher
from deepprune_lc.backends.tokenizer import RegexTokenizer
from deepprune_lc.core.config import SamplingConfig
from deepprune_lc.core.ports import FinishReason, ProbeReply, Prompt, TraceDelta, TraceRequest

__all__ = ["DEFAULT_CHUNK_TOKENS", "ReplayBackend", "replay_budget"]

#: Tokens per delta when a text-free trace is played (a fifth of the usual probe spacing, so a
#: decision taken on one delta lands within 100 tokens).
DEFAULT_CHUNK_TOKENS = 100


def replay_budget(sampling: SamplingConfig) -> int | None:
    """The token budget a replay applies: ``max_tokens`` when the caller set it, else none."""
    return sampling.max_tokens if "max_tokens" in sampling.model_fields_set else None


@dataclass(slots=True)
class _Position:
    """Where a live text-free stream is: what ``probe`` reads."""

    problem: PoolProblem
    index: int
    delivered: int


_PROMPT_CACHE_LIMIT = 1024
#: Sentences (about 12 tokens each) that synthetic traces with the same answer share at the start.
_OPENING_SENTENCES = 12


@dataclass(frozen=True, slots=True)
class _Tokens:
    """A trace tokenised once: ids, 1-tuples of ids (what deltas carry) and piece texts."""

    ids: tuple[int, ...]
    singles: tuple[tuple[int], ...]
    pieces: tuple[str, ...]

    @classmethod
    def of(cls, ids: Sequence[int], pieces: Sequence[str]) -> _Tokens:
        return cls(tuple(ids), tuple((i,) for i in ids), tuple(pieces))


class ReplayBackend:
    """Replays a ``TracePool`` through the ``GenerationBackend`` protocol (see module docstring)."""

    def __init__(
        self,
        pool: TracePool,
        *,
        tokenizer: RegexTokenizer | None = None,
        seconds_per_token: float = 0.0,
        yield_every: int = 16,
        reuse: Literal["error", "cycle"] = "cycle",
        fallback_problem: str | None = None,
        chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
        probe_answers: Literal["recorded", "final", "adversarial"] = "recorded",
    ) -> None:
        if not isinstance(pool, TracePool):
            raise ValueError(f"pool: expected a TracePool, got {type(pool).__name__}")
        if len(pool) == 0:
            raise ValueError("pool: the trace pool has no problems")
        if isinstance(seconds_per_token, bool) or not isinstance(seconds_per_token, int | float):
            raise ValueError("seconds_per_token: must be a number")
        if not math.isfinite(seconds_per_token) or seconds_per_token < 0:
            raise ValueError(
                f"seconds_per_token: must be finite and >= 0, got {seconds_per_token!r}"
            )
        if isinstance(yield_every, bool) or not isinstance(yield_every, int) or yield_every < 1:
            raise ValueError(f"yield_every: must be an integer >= 1, got {yield_every!r}")
        if isinstance(chunk_tokens, bool) or not isinstance(chunk_tokens, int) or chunk_tokens < 1:
            raise ValueError(f"chunk_tokens: must be an integer >= 1, got {chunk_tokens!r}")
        if reuse not in ("error", "cycle"):
            raise ValueError(f"reuse: must be 'error' or 'cycle', got {reuse!r}")
        if probe_answers not in ("recorded", "final", "adversarial"):
            raise ValueError(
                "probe_answers: must be 'recorded', 'final' or 'adversarial', "
                f"got {probe_answers!r}"
            )
        #: ``"final"``: every probe answers the trace's recorded final answer, from its first
        #: token on. Not a model's behaviour: the oracle a bench measures better probes against.
        #: ``"adversarial"``: the worst probes there are, the always-wrong judge of a bench: a
        #: trace's probe names its rank among the problem's traces with the same final answer, as
        #: an integer no trace answered (``-1000000000000000`` + rank, further out if need be:
        #: integers compare by value, with no verifier round trip, which at 512 traces is what
        #: keeps such a run in seconds), so probe classes join traces with different final
        #: answers and never two with the same one; no probe names a real answer.
        self.probe_answers = probe_answers
        self._ranks: dict[str, list[int]] = {}
        self._label_base: dict[str, int] = {}
        self.pool = pool
        self.tokenizer: RegexTokenizer = tokenizer if tokenizer is not None else RegexTokenizer()
        self.seconds_per_token = float(seconds_per_token)
        self.yield_every = yield_every
        self.reuse: Literal["error", "cycle"] = reuse
        #: Problem id replayed for prompts the pool does not hold (smoke tests, demos of a chat
        #: surface); None makes an unknown prompt an error.
        self.fallback_problem = pool.by_id(fallback_problem) if fallback_problem else None
        self._tokens: dict[tuple[str, int], _Tokens] = {}
        self._prompts: dict[str, PoolProblem] = {}
        self._live: set[str] = set()
        self._aborted: set[str] = set()
        # Guards the tokenizer's growing vocabulary: ``prompt_token_ids`` may be called from any
        # thread (LangChain's ``get_token_ids``) while a run tokenises traces on its loop.
        self._vocab_lock = threading.Lock()
        self.chunk_tokens = chunk_tokens
        self._positions: dict[str, _Position] = {}

    # ------------------------------------------------------------------ protocol

    def stream(self, request: TraceRequest) -> AsyncGenerator[TraceDelta, None]:
        """Replay the selected trace as one delta per token (see the module docstring).

        Returns the async generator itself (a subtype of the protocol's ``AsyncIterator``), so a
        caller that stops early can ``aclose()`` it and the request is released at once.
        """
        try:
            problem = self.problem_for(request.prompt)
        except ValueError:
            return self._stream(request)  # reports the unknown prompt on first use
        if problem.text_free:
            return self._stream_counted(request)
        return self._stream(request)

    async def probe(
        self, request_id: str, *, suffix: str | None = None, max_tokens: int = 20
    ) -> ProbeReply:
        """``AnswerProbing``: the recorded probe at the latest offset the trace has reached.

        ``probes[k]`` is the answer after ``(k + 1) * probe_every_tokens`` tokens; before the first
        offset, or where the record says ``"ERR"``, the reply is ``unknown``. Past the last
        recorded probe the last one stands. The reply's ``observed_at`` is the recorded offset, so
        a caller can tell a repeat of one recorded probe from a new one. ``suffix`` and
        ``max_tokens`` shape a model's probe;
        a recording has one answer per offset, so they are accepted and not used. Costs nothing
        (no model runs). ``KeyError`` for a request that is not streaming; ``ValueError`` for a
        trace of a text pool, which recorded no probes.
        """
        del suffix, max_tokens  # a recording answers the same whatever the question's wording
        position = self._positions.get(request_id)
        if position is None:
            if request_id in self._live:
                raise ValueError(
                    f"probe: request {request_id!r} replays a text trace of the pool "
                    f"{self.pool.source}, which records no answer probes (only text-free traces "
                    "with 'probes' and 'probe_every_tokens' can be probed)"
                )
            raise KeyError(f"probe: no live request {request_id!r} in this replay backend")
        problem = position.problem
        trace = problem.traces[position.index]
        every = problem.probe_every_tokens
        if every is None or not trace.probes:
            raise ValueError(
                f"probe: trace {position.index} of problem {problem.id!r} in the pool "
                f"{self.pool.source} records no answer probes"
            )
        if self.probe_answers == "adversarial":
            label = self._adversarial_label(problem, position.index)
            return ProbeReply(text=f"{label}}}", at_tokens=position.delivered, answer=label)
        if self.probe_answers == "final":
            final = trace.final_answer
            if final is None or final == NO_ANSWER or not final.strip():
                return ProbeReply(text="", at_tokens=position.delivered, unknown=True)
            return ProbeReply(text=f"{final}}}", at_tokens=position.delivered, answer=final)
        k = min(position.delivered // every, len(trace.probes)) - 1
        if k < 0:
            return ProbeReply(text="", at_tokens=position.delivered, unknown=True)
        answer = trace.probes[k]
        # The recorded probe at offset (k + 1) * every: asked again before the next offset (or
        # past the last one), the reply is the same observation, and says so.
        observed_at = (k + 1) * every
        if answer == NO_ANSWER or not answer.strip():
            return ProbeReply(
                text="", at_tokens=position.delivered, unknown=True, observed_at=observed_at
            )
        return ProbeReply(
            text=f"{answer}}}", at_tokens=position.delivered, answer=answer, observed_at=observed_at
        )

    def _adversarial_label(self, problem: PoolProblem, index: int) -> str:
        """Trace ``index``'s adversarial probe answer: its same-answer rank, as an integer far
        from every final answer the problem recorded."""
        ranks = self._same_answer_rank(problem)
        base = self._label_base.get(problem.id)
        if base is None:
            finals = {(t.final_answer or "").strip() for t in problem.traces}
            base = 10**15
            while any(f"-{base + rank}" in finals for rank in ranks):
                base *= 10
            self._label_base[problem.id] = base
        return f"-{base + ranks[index]}"

    def _same_answer_rank(self, problem: PoolProblem) -> list[int]:
        """For each trace of ``problem``: how many earlier traces recorded the same final answer."""
        ranks = self._ranks.get(problem.id)
        if ranks is None:
            seen: dict[str | None, int] = {}
            ranks = []
            for trace in problem.traces:
                ranks.append(seen.get(trace.final_answer, 0))
                seen[trace.final_answer] = ranks[-1] + 1
            self._ranks[problem.id] = ranks
        return ranks

    def records_probes(self, prompt: Prompt) -> bool:
        """Whether the prompt's problem recorded answer probes (what ``probe`` can answer)."""
        return self.problem_for(prompt).has_probes

    def probe_every_tokens(self, prompt: Prompt) -> int | None:
        """Tokens between the prompt's recorded probes (its first is at that offset), or None."""
        return self.problem_for(prompt).probe_every_tokens

    async def abort(self, request_id: str) -> None:
        """Stop a live request before its next token; a no-op for unknown or finished ones."""
        if request_id in self._live:
            self._aborted.add(request_id)

    def count_prompt_tokens(self, prompt: Prompt) -> int:
        """Prompt tokens by this backend's tokenizer (chat: the sum over message contents)."""
        if isinstance(prompt, str):
            return self.tokenizer.count(prompt)
        return sum(self.tokenizer.count(message.get("content", "")) for message in prompt)

    def prompt_token_ids(self, prompt: Prompt) -> list[int]:
        """``PromptTokenIds``: the ids ``count_prompt_tokens`` counts (``RegexTokenizer``'s).

        The tokenizer is the documented approximation of a BPE tokenizer, so these ids are only
        meaningful within this backend (they are not a real model's vocabulary). Thread-safe.
        """
        texts = [prompt] if isinstance(prompt, str) else [m.get("content", "") for m in prompt]
        with self._vocab_lock:
            return [i for text in texts for i in self.tokenizer.encode(text)]

    def max_traces(self, prompt: Prompt) -> int | None:
        """``TraceCapacity``: how many distinct traces the pool recorded for the prompt's problem.

        ``None`` when the pool does not hold the prompt (the stream then reports it). With
        ``reuse="cycle"`` more can be streamed, but only as repeats.
        """
        try:
            return len(self.problem_for(prompt).traces)
        except ValueError:
            return None

    async def astart(self) -> None:
        """``Lifecycle``: nothing to load (the pool is in memory already)."""

    async def aclose(self) -> None:
        """``Lifecycle``: nothing to release (no engine, no threads)."""

    # ------------------------------------------------------------------ inspection

    def live_requests(self) -> set[str]:
        """Ids of requests started and not yet ended (a copy), so tests can check for leaks."""
        return set(self._live)

    def problem_for(self, prompt: Prompt) -> PoolProblem:
        """The pool problem a prompt selects; ``ValueError`` when the pool does not hold it."""
        text = _prompt_text(prompt)
        problem = self._prompts.get(text)
        if problem is None:
            problem = self.pool.find_by_prompt(text) or self.fallback_problem
            if problem is None:
                head = text.strip()[:60]
                raise ValueError(f"prompt not found in replay pool {self.pool.source}: {head!r}...")
            if len(self._prompts) >= _PROMPT_CACHE_LIMIT:
                self._prompts.clear()
            self._prompts[text] = problem
        return problem

    def trace_token_ids(self, problem_id: str, trace_index: int) -> tuple[int, ...]:
        """Token ids of a recorded trace as this backend streams them (index taken as given)."""
        problem = self.pool.by_id(problem_id)
        trace = problem.traces[trace_index]
        if trace.text_free:
            return tuple(range(1, (trace.tokens or 0) + 1))
        return self._tokens_of(problem, trace_index).ids

    # ------------------------------------------------------------------ internals

    def _select(self, problem: PoolProblem, trace_index: int) -> int:
        n = len(problem.traces)
        if trace_index < 0:
            raise ValueError(f"trace_index: must be >= 0, got {trace_index}")
        if trace_index >= n:
            if self.reuse == "error":
                raise ValueError(
                    f"trace_index: {trace_index} out of range: the replay pool {self.pool.source} "
                    f"recorded {n} traces of problem {problem.id!r}, so a run can use at most "
                    f"n_traces={n} (leave n_traces unset to use them all; "
                    "ReplayBackend(pool, reuse='cycle') replays them again instead)"
                )
            return trace_index % n
        return trace_index

    def _tokens_of(self, problem: PoolProblem, index: int) -> _Tokens:
        key = (problem.id, index)
        tokens = self._tokens.get(key)
        if tokens is None:
            pieces = self.tokenizer.split(problem.traces[index].text)
            with self._vocab_lock:
                ids = self.tokenizer.ids_of(pieces)
            tokens = _Tokens.of(ids, pieces)
            self._tokens[key] = tokens
        return tokens

    async def _stream(self, request: TraceRequest) -> AsyncGenerator[TraceDelta, None]:
        request_id = request.request_id
        if request_id in self._live:
            raise ValueError(f"request_id: {request_id!r} is already streaming")
        problem = self.problem_for(request.prompt)
        index = self._select(problem, request.trace_index)
        tokens = self._tokens_of(problem, index)
        start = _check_resume(tokens.ids, request.resume_token_ids, problem.id, index)

        total = len(tokens.ids)
        budget = replay_budget(request.sampling)
        end = total if budget is None else min(total, budget)
        reason: FinishReason = "stop" if end == total else "length"
        pieces: Sequence[str] = tokens.pieces
        held = ""
        if request.sampling.stop:
            pieces, end, reason, held = _apply_stops(
                pieces, start, end, reason, request.sampling.stop
            )

        aborted = self._aborted
        self._live.add(request_id)
        try:
            if start >= end:
                # Nothing left to produce (resumed at the end, or at/past max_tokens); text a
                # parked stream held back for its stop strings is released.
                yield TraceDelta((), held, reason)
                return
            singles = tokens.singles
            last = end - 1
            delay = self.seconds_per_token
            if delay > 0:
                for i in range(start, last):
                    await asyncio.sleep(delay)
                    if request_id in aborted:
                        yield TraceDelta((), "", "abort")
                        return
                    yield TraceDelta(singles[i], pieces[i])
                await asyncio.sleep(delay)
            else:
                step = self.yield_every
                for chunk in range(start, last, step):
                    if chunk != start:
                        await asyncio.sleep(0)
                    for i in range(chunk, min(chunk + step, last)):
                        if request_id in aborted:
                            yield TraceDelta((), "", "abort")
                            return
                        yield TraceDelta(singles[i], pieces[i])
            if request_id in aborted:
                yield TraceDelta((), "", "abort")
                return
            yield TraceDelta(singles[last], pieces[last], reason)
        finally:
            self._live.discard(request_id)
            aborted.discard(request_id)

    async def _stream_counted(self, request: TraceRequest) -> AsyncGenerator[TraceDelta, None]:
        """A text-free trace, one delta per ``chunk_tokens`` (see the module docstring)."""
        request_id = request.request_id
        if request_id in self._live:
            raise ValueError(f"request_id: {request_id!r} is already streaming")
        problem = self.problem_for(request.prompt)
        index = self._select(problem, request.trace_index)
        trace = problem.traces[index]
        total = trace.tokens or 0
        start = _check_counted_resume(total, request.resume_token_ids, problem.id, index)
        budget = replay_budget(request.sampling)
        end = total if budget is None else min(total, budget)
        reason: FinishReason = "stop" if end == total else "length"
        final_text = "" if reason == "length" else _final_text(trace.final_answer)
        aborted = self._aborted
        position = _Position(problem, index, start)
        self._live.add(request_id)
        self._positions[request_id] = position
        try:
            if start >= end:
                yield TraceDelta((), final_text if start == total else "", reason)
                return
            step = self.chunk_tokens
            delay = self.seconds_per_token
            at = start
            while True:
                if delay > 0:
                    await asyncio.sleep(delay * min(step, end - at))
                elif at != start:
                    await asyncio.sleep(0)
                if request_id in aborted:
                    yield TraceDelta((), "", "abort")
                    return
                upto = min(at + step, end)
                position.delivered = upto
                if upto == end:
                    yield TraceDelta(range(at + 1, upto + 1), final_text, reason)
                    return
                yield TraceDelta(range(at + 1, upto + 1), "")
                at = upto
        finally:
            self._live.discard(request_id)
            self._positions.pop(request_id, None)
            aborted.discard(request_id)

    # ------------------------------------------------------------------ synthetic pools

    @classmethod
    def synthetic(
        cls,
        n_traces: int,
        tokens_per_trace: int,
        *,
        prompt: str = "synthetic",
        answers: Sequence[str] | None = None,
        ground_truth: str | None = None,
        seed: int = 0,
        tokenizer: RegexTokenizer | None = None,
        seconds_per_token: float = 0.0,
        yield_every: int = 16,
        reuse: Literal["error", "cycle"] = "cycle",
    ) -> ReplayBackend:
        """A backend over an in-memory one-problem pool of reasoning-like traces.

        For tests and benchmarks that need many long traces without a recorded pool. Each trace is
        about ``tokens_per_trace`` tokens (never fewer than its closing sentence) of sentences with
        reasoning words ("So", "Then", "Wait", "Therefore", ...) and ends with
        ``\\boxed{<answer>}``, trace ``i`` taking ``answers[i % len(answers)]`` (default all
        ``"42"``). Like real samples, traces with the same answer share an opening (the same
        ``_OPENING_SENTENCES`` sentences, each swapped for another with probability 0.1) and then
        draw most sentences from a bank of their own, so a lexical judge can group them by answer.
        ``ground_truth`` defaults to the most common answer. Deterministic for a given ``seed``; the
        traces are tokenised while being built (the streams start warm), which takes well under a
        second for 512 x 2000 tokens.
        """
        if isinstance(n_traces, bool) or not isinstance(n_traces, int) or n_traces < 1:
            raise ValueError(f"n_traces: must be an integer >= 1, got {n_traces!r}")
        if (
            isinstance(tokens_per_trace, bool)
            or not isinstance(tokens_per_trace, int)
            or tokens_per_trace < 1
        ):
            raise ValueError(f"tokens_per_trace: must be an integer >= 1, got {tokens_per_trace!r}")
        if not prompt.strip():
            raise ValueError("prompt: must be non-empty")
        answer_list = list(answers) if answers is not None else ["42"]
        if not answer_list:
            raise ValueError("answers: must be non-empty when given")
        if ground_truth is None:
            ground_truth = Counter(answer_list).most_common(1)[0][0]

        tok = tokenizer if tokenizer is not None else RegexTokenizer()
        rng = random.Random(seed)
        shared = _sentence_bank(tok, rng, tag=None)
        banks = {a: _sentence_bank(tok, rng, tag=a) for a in dict.fromkeys(answer_list)}
        endings = {
            a: _split_ids(tok, f" Therefore, the final answer is \\boxed{{{a}}}.") for a in banks
        }
        openings = {
            a: [rng.randrange(len(bank)) for _ in range(_OPENING_SENTENCES)]
            for a, bank in banks.items()
        }

        traces: list[PoolTrace] = []
        token_lists: list[_Tokens] = []
        for i in range(n_traces):
            answer = answer_list[i % len(answer_list)]
            own = banks[answer]
            end_pieces, end_ids = endings[answer]
            pieces: list[str] = []
            ids: list[int] = []
            budget = tokens_per_trace - len(end_ids)
            opening = openings[answer]
            n_sentences = 0
            while len(ids) < budget:
                if n_sentences < len(opening) and rng.random() < 0.9:
                    s_pieces, s_ids = own[opening[n_sentences]]
                else:
                    bank = own if rng.random() < 0.75 else shared
                    s_pieces, s_ids = bank[rng.randrange(len(bank))]
                if n_sentences == 0:
                    # Drop the sentence's leading space piece so the text does not start with one.
                    s_pieces, s_ids = _strip_leading_space(tok, s_pieces, s_ids)
                n_sentences += 1
                pieces.extend(s_pieces)
                ids.extend(s_ids)
            if len(ids) > budget:
                del pieces[budget:], ids[budget:]
            if pieces:
                pieces.extend(end_pieces)
                ids.extend(end_ids)
            else:  # a trace shorter than its closing sentence: only the sentence, unindented
                pieces, ids = _strip_leading_space(tok, end_pieces, end_ids)
            traces.append(
                PoolTrace(
                    text="".join(pieces),
                    reference_answer=answer,
                    reference_correct=answer == ground_truth,
                )
            )
            token_lists.append(_Tokens.of(ids, pieces))

        problem = PoolProblem(id="synthetic", problem=prompt, answer=ground_truth, traces=traces)
        pool = TracePool(problems=[problem], source="<synthetic>")
        backend = cls(
            pool,
            tokenizer=tok,
            seconds_per_token=seconds_per_token,
            yield_every=yield_every,
            reuse=reuse,
        )
        for i, tokens in enumerate(token_lists):
            backend._tokens[(problem.id, i)] = tokens
        return backend


def _prompt_text(prompt: Prompt) -> str:
    """The text that identifies the problem: the prompt, or the last user message's content."""
    if isinstance(prompt, str):
        return prompt
    for message in reversed(prompt):
        if message.get("role") == "user":
            return message.get("content", "")
    raise ValueError("prompt: chat prompt has no user message")


def _apply_stops(
    pieces: Sequence[str],
    start: int,
    end: int,
    reason: FinishReason,
    stops: Sequence[str],
) -> tuple[Sequence[str], int, FinishReason, str]:
    """What a stream with stop strings emits: ``(texts, end, reason, held)`` (``backends.stops``).

    A recorded trace's text is known in advance, so the match is computed once, before streaming,
    and the per-token loop stays what it is without stop strings: ``texts[i]`` is what token ``i``
    emits (held-back text comes out with a later token), ``end`` is one past the token that
    completed a stop string (its reason then ``"stop"``), and ``held`` is text a parked stream held
    back, for a resumed stream that has nothing left to produce.
    """
    matcher = StopMatcher(stops)
    if not matcher:
        return pieces, end, reason, ""
    matcher.resume("".join(pieces[:start]))
    if start >= end:
        return pieces, end, reason, matcher.flush()
    texts = list(pieces)
    for i in range(start, end):
        text, hit = matcher.push(pieces[i])
        texts[i] = text
        if hit:
            return texts, i + 1, "stop", ""
    texts[end - 1] += matcher.flush()
    return texts, end, reason, ""


def _final_text(final_answer: str | None) -> str:
    """What a text-free trace says at its end: its answer boxed, or nothing when it has none."""
    if final_answer is None or final_answer == NO_ANSWER or not final_answer.strip():
        return ""
    return f"\\boxed{{{final_answer}}}"


def _check_counted_resume(total: int, resume: Sequence[int], problem_id: str, index: int) -> int:
    """Where a resumed text-free stream continues: its ids are ``1..n``, so resume must be too."""
    n = len(resume)
    if n == 0:
        return 0
    if n > total:
        raise ValueError(
            f"resume ids do not match trace {index} of problem {problem_id!r}: {n} ids given, "
            f"the trace has {total} tokens"
        )
    if list(resume) != list(range(1, n + 1)):
        position = next(i for i in range(n) if resume[i] != i + 1)
        raise ValueError(
            f"resume ids do not match trace {index} of problem {problem_id!r} at position {position}"
        )
    return n


def _check_resume(ids: tuple[int, ...], resume: Sequence[int], problem_id: str, index: int) -> int:
    """Where a resumed stream continues; ``ValueError`` if ``resume`` is not a prefix of ``ids``."""
    n = len(resume)
    if n == 0:
        return 0
    if n > len(ids):
        raise ValueError(
            f"resume ids do not match trace {index} of problem {problem_id!r}: {n} ids given, "
            f"the trace has {len(ids)} tokens"
        )
    if tuple(resume) != ids[:n]:
        position = next(i for i in range(n) if resume[i] != ids[i])
        raise ValueError(
            f"resume ids do not match trace {index} of problem {problem_id!r} at position {position}"
        )
    return n


# Sentence templates for synthetic traces. Placeholders: {a}, {b}, {c} numbers, {x} a variable name.
_TEMPLATES: tuple[str, ...] = (
    " First, we write down what we know: {x} = {a} and the total is {c}.",
    " So {a} + {b} = {c}, which means the sum is {c}.",
    " Then we multiply both sides by {b} to get {x} \\cdot {b} = {c}.",
    " Wait, let me check that step again, because {a} - {b} is not {c}.",
    " Therefore {x} must equal {a}, since {c} / {b} = {a}.",
    " Now substitute {x} = {a} into the second equation.",
    " Hmm, that gives {a} \\times {b}, so the product is {c}.",
    " Let's simplify: \\frac{{{a}}}{{{b}}} reduces to {c}.",
    " But we also need the remainder when {c} is divided by {b}.",
    " So the equation becomes {x}^2 + {a}{x} - {b} = 0.",
    " Next, recall that the area is {a} times {b}, that is {c}.",
    " Then adding {b} more gives {c} in total.",
    " Wait, actually the question asks for {x}, not the total.",
    " Therefore the value we need is {c} minus {a}.",
    " Let me verify: {a} + {b} + {c} gives the same result.",
    " Since {x} is positive, we keep the root {a}.",
    " So, step by step, we have {a}, then {b}, then {c}.",
    " Notice that {c} is divisible by {b}, so {x} is an integer.",
)
_VARIABLES = ("x", "y", "n", "k", "m", "t")


def _split_ids(tok: RegexTokenizer, text: str) -> tuple[list[str], list[int]]:
    pieces = tok.split(text)
    return pieces, tok.ids_of(pieces)


def _strip_leading_space(
    tok: RegexTokenizer, pieces: list[str], ids: list[int]
) -> tuple[list[str], list[int]]:
    if pieces and pieces[0].startswith(" "):
        head = pieces[0][1:]
        return [head, *pieces[1:]], [*tok.ids_of([head]), *ids[1:]]
    return pieces, ids


def _sentence_bank(
    tok: RegexTokenizer, rng: random.Random, tag: str | None, size: int = 64
) -> list[tuple[list[str], list[int]]]:
    """Pre-tokenised sentences; ``tag`` seeds the numbers so each answer's bank has its own."""
    local = random.Random(f"{rng.random()}:{tag}")
    bank: list[tuple[list[str], list[int]]] = []
    for _ in range(size):
        template = _TEMPLATES[local.randrange(len(_TEMPLATES))]
        text = template.format(
            a=local.randrange(2, 100),
            b=local.randrange(2, 50),
            c=local.randrange(10, 1000),
            x=_VARIABLES[local.randrange(len(_VARIABLES))],
        )
        bank.append(_split_ids(tok, text))
    return bank
