"""The methods ``deepprune bench replay`` compares, and how one resample of a pool is measured.

Every method runs on the same problems and the same resampled traces. Those that decide online
(cons@N, the settled stop, ESC, Adaptive-Consistency, DeepPrune with each judge) run through the
real runners and driver on a lockstep replay; the controls that are defined by what other rows
spent (random pruning at DeepPrune's budget, the shortest trace reaching cons@N's answer) are
computed from the recorded traces of that resample, which is what they are by definition.
"""

from __future__ import annotations

import asyncio
import functools
import random
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Literal

from deepprune_lc.backends.pool import TracePool
from deepprune_lc.backends.replay import ReplayBackend
from deepprune_lc.core.answers import AnswerRules, Ballot, group_votes
from deepprune_lc.core.config import (
    EarlyStoppingConfig,
    PruningConfig,
    SamplingConfig,
    TokensPrefix,
    VoteSettling,
)
from deepprune_lc.core.controllers import AdaptiveConsistencyConfig
from deepprune_lc.core.ports import (
    GenerationBackend,
    Judge,
    JudgeScores,
    PrefixPair,
    ProbeReply,
    Prompt,
    TraceDelta,
    TraceRequest,
)
from deepprune_lc.core.result import DeepPruneResult
from deepprune_lc.judges.fixed import RandomJudge
from deepprune_lc.judges.probe import ProbeJudge
from deepprune_lc.runtime import (
    AdaptiveConsistency,
    DeepPrune,
    EarlyStoppingSelfConsistency,
    SelfConsistency,
    resolve_judge,
    run_sync,
)

__all__ = [
    "BUILTIN_JUDGES",
    "AnswerLookupJudge",
    "BenchSettings",
    "InstantJudge",
    "JudgeUnavailableError",
    "LockstepClock",
    "ProblemNumbers",
    "RowSpec",
    "bench_rules",
    "build_judge",
    "latency_of",
    "measure_resample",
    "plan_rows",
    "random_at_budget",
    "shortest_reaching",
]

#: Judges the bench builds itself; any other name is a judge spec string (``lexical``,
#: ``embedding``, ``probe``, ``transformers:<model>``...) resolved through the plugin registry.
BUILTIN_JUDGES = ("random", "oracle", "wrong")


@dataclass(frozen=True)
class BenchSettings:
    """What one bench run compares; every resample uses the same settings."""

    n_traces: int = 8
    resamples: int = 10
    seed: int = 0
    replace: bool = True
    judges: tuple[str, ...] = ("lexical", "embedding", "probe", "random", "wrong", "oracle")
    prefix_tokens: int = 64
    threshold: float = 0.5
    finalists: tuple[int, ...] = (4,)
    #: Robust finalisation's cap on traces resumed beyond K2 (None: no cap, the product default).
    max_extra_finalists: int | None = None
    esc_windows: tuple[int, ...] = (2, 4)
    ac_batches: tuple[int, ...] = (1, 4)
    answers: str = "math"

    def __post_init__(self) -> None:
        if self.n_traces < 1:
            raise ValueError(f"n_traces: must be >= 1, got {self.n_traces}")
        if self.resamples < 1:
            raise ValueError(f"resamples: must be >= 1, got {self.resamples}")
        if not self.judges:
            raise ValueError("judges: name at least one judge")
        if not self.finalists or min(self.finalists) < 1:
            raise ValueError(f"finalists: need K2 values >= 1, got {self.finalists}")
        if self.max_extra_finalists is not None and self.max_extra_finalists < 0:
            raise ValueError(
                f"max_extra_finalists: must be >= 0 or None, got {self.max_extra_finalists}"
            )


@dataclass
class ProblemNumbers:
    """What one method did on one problem of one resample."""

    correct: bool
    tokens: int
    latency_tokens: int
    judge_prefill_tokens: int = 0
    probe_tokens: int = 0
    traces_finished: int = 0
    #: Answer probes asked (``RunTotals.probe_calls``): on replay they cost no tokens, so this is
    #: what says how many short requests a real engine would add.
    probe_calls: int = 0
    #: The answer is cons@N's on the same traces (both None counts): what the product promises,
    #: and the one quality measure a pool without ground truth still has.
    agrees_with_cons: bool = False


@dataclass(frozen=True)
class RowSpec:
    """One row of the table: a method with its settings, how it is built, what it derives from."""

    key: str
    method: str
    settings: str
    kind: str  # "runner", "random_at_budget", "shortest"
    build: Callable[[GenerationBackend, TracePool, int], DeepPrune | SelfConsistency] | None = None
    #: For derived rows: the row whose per-problem numbers they read.
    source: str | None = None
    #: What the row's replay answers probes with: its recorded probes, or for the oracle and the
    #: always-wrong judge on a text-free pool the final answers and adversarial classes.
    probe_answers: Literal["recorded", "final", "adversarial"] = "recorded"


class InstantJudge:
    """A judge whose every call completes while the replay stands still.

    A judge that works on another thread (the embedding and LLM judges) lets a replay keep
    decoding while it computes, so which traces were pruned where would depend on how loaded the
    machine is. The bench blocks its own loop until the judge answers (the call runs on the
    background loop), so every judge is measured as if it answered between two decoding steps;
    what it read is reported as its prefill tokens, not hidden in the latency.
    """

    def __init__(self, inner: Judge) -> None:
        self.inner = inner

    def __repr__(self) -> str:
        return f"InstantJudge({self.inner!r})"

    async def _score(self, pairs: Sequence[PrefixPair]) -> JudgeScores:
        return await self.inner.score(pairs)

    async def score(self, pairs: Sequence[PrefixPair]) -> JudgeScores:
        return run_sync(self._score(pairs))


class JudgeUnavailableError(RuntimeError):
    """A judge named in the settings cannot be built here (not installed, unknown kind)."""


def bench_rules(name: str) -> AnswerRules:
    """The task's answer rules with extraction and equivalence memoised.

    The same recorded texts and answers recur in every row and every resample, and math-verify's
    symbolic comparison is the bench's most expensive call; the rules are pure, so caching changes
    no result.
    """
    rules = AnswerRules.resolve(name)
    return AnswerRules.custom(
        extract=functools.lru_cache(maxsize=None)(rules.extract),
        equivalent=functools.lru_cache(maxsize=None)(rules.equivalent),
        name=rules.name,
    )


class AnswerLookupJudge:
    """A bound, not a judge: reads each prefix's recorded final answer from the pool.

    ``invert=False`` is the oracle (same answer -> 1.0, else 0.0); ``invert=True`` always says the
    opposite, the worst judge there is. A prefix is matched to the recorded trace it starts.
    """

    def __init__(
        self, pool: TracePool, *, invert: bool = False, rules: AnswerRules | None = None
    ) -> None:
        self.invert = invert
        self.rules = rules if rules is not None else AnswerRules.math()
        texts = {t.text for p in pool.problems for t in p.traces}
        self._texts = [(text, self.rules.extract(text)) for text in sorted(texts)]

    def _answer(self, prefix: str) -> str | None:
        return next((a for text, a in self._texts if text.startswith(prefix)), None)

    async def score(self, pairs: Sequence[PrefixPair]) -> JudgeScores:
        scores = []
        for pair in pairs:
            a, b = self._answer(pair.prefix_a), self._answer(pair.prefix_b)
            same = a is not None and b is not None and self.rules.equivalent(a, b)
            scores.append(0.0 if same == self.invert else 1.0)
        return JudgeScores(scores)


def build_judge(name: str, pool: TracePool, resample: int, rules: AnswerRules) -> Judge:
    """The judge ``name`` for one resample; raises ``JudgeUnavailableError`` saying why not."""
    if name == "random":
        return RandomJudge(seed=resample)
    if name == "oracle":
        if _text_free(pool):
            # No text to look answers up by: the oracle is probe clustering whose every probe
            # answers the trace's final answer (the replay of oracle rows is built for it).
            return ProbeJudge(answers=rules)
        return AnswerLookupJudge(pool, rules=rules)
    if name == "wrong":
        if _text_free(pool):
            # Probe clustering on adversarial probes: every merge joins different final answers,
            # no two traces with the same one share a cluster (the replay of its rows does that).
            return ProbeJudge(answers=rules)
        return AnswerLookupJudge(pool, invert=True, rules=rules)
    try:
        judge = resolve_judge(name)
    except Exception as error:  # unknown kind, missing optional dependency, bad spec
        raise JudgeUnavailableError(f"{type(error).__name__}: {error}") from error
    if getattr(judge, "probe_clustering", None) is not None:
        if not all(problem.has_probes for problem in pool.problems):
            raise JudgeUnavailableError(
                "it clusters by answer probes, and this pool records none (a text pool: "
                "probes need 'probes' and 'probe_every_tokens', docs/trace-pools.md)"
            )
        return judge  # probe clustering calls the backend, not the judge: nothing to pause for
    return InstantJudge(judge)


#: The builtin judges whose rows replay other probes than the recorded ones (text-free pools).
_PROBE_ANSWERS: dict[str, Literal["final", "adversarial"]] = {
    "oracle": "final",
    "wrong": "adversarial",
}


def _text_free(pool: TracePool) -> bool:
    return any(problem.text_free for problem in pool.problems)


def plan_rows(settings: BenchSettings, judges: Sequence[str]) -> list[RowSpec]:
    """Every row, in table order; ``judges`` are the ones that resolved."""
    n = settings.n_traces
    sampling = SamplingConfig(max_tokens=1_000_000)
    rows: list[RowSpec] = [
        RowSpec(
            "cons",
            f"self-consistency (cons@{n})",
            "",
            "runner",
            lambda backend, pool, b: SelfConsistency(backend, n, sampling=sampling),
        ),
        RowSpec(
            "cons_settled",
            f"self-consistency (cons@{n}) + settled stop",
            f"min margin {VoteSettling().min_margin}",
            "runner",
            lambda backend, pool, b: SelfConsistency(
                backend, n, sampling=sampling, settle=VoteSettling()
            ),
        ),
    ]
    for window in settings.esc_windows:
        rows.append(
            RowSpec(
                f"esc_w{window}",
                "ESC",
                f"window {window}",
                "runner",
                functools.partial(_esc, n, window),
            )
        )
    for batch in settings.ac_batches:
        rows.append(
            RowSpec(
                f"ac_b{batch}",
                "Adaptive-Consistency",
                f"batch {batch}, confidence 0.95",
                "runner",
                functools.partial(_adaptive, n, batch),
            )
        )
    prefix = TokensPrefix(k=settings.prefix_tokens)
    for judge in judges:
        for k2 in settings.finalists:
            for finalisation in ("robust", "paper"):
                capped = finalisation == "robust" and settings.max_extra_finalists is not None
                config = PruningConfig(
                    n_traces=n,
                    prefix=prefix,
                    threshold=settings.threshold,
                    finalists=k2,
                    finalisation=finalisation,
                    max_extra_finalists=settings.max_extra_finalists if capped else None,
                )
                extra = f", at most {settings.max_extra_finalists} more" if capped else ""
                key = f"deepprune_{finalisation}_{judge}_k{k2}"
                label = {
                    "oracle": "oracle judge (bound)",
                    "wrong": "always-wrong judge",
                }.get(judge, f"{judge} judge")
                rows.append(
                    RowSpec(
                        key,
                        f"DeepPrune, {finalisation} finalisation",
                        f"{label}, {settings.prefix_tokens} tokens, tau {settings.threshold}, "
                        f"K2 {k2}{extra}",
                        "runner",
                        functools.partial(_deepprune, config, judge, settings.answers),
                        probe_answers=_PROBE_ANSWERS.get(judge, "recorded"),
                    )
                )
                if judge not in BUILTIN_JUDGES:
                    rows.append(
                        RowSpec(
                            f"random_at_{key}",
                            "random pruning at DeepPrune's budget",
                            f"budget of: {finalisation}, {judge} judge, K2 {k2}{extra}",
                            "random_at_budget",
                            source=key,
                        )
                    )
    rows.append(
        RowSpec(
            "shortest",
            "shortest trace reaching cons@N's answer (bound)",
            "",
            "shortest",
            source="cons",
        )
    )
    return rows


_SAMPLING = SamplingConfig(max_tokens=1_000_000)


def _esc(
    n: int, window: int, backend: GenerationBackend, pool: TracePool, b: int
) -> SelfConsistency:
    return EarlyStoppingSelfConsistency(
        backend, EarlyStoppingConfig(n_traces=n, window=window), sampling=_SAMPLING
    )


def _adaptive(
    n: int, batch: int, backend: GenerationBackend, pool: TracePool, b: int
) -> SelfConsistency:
    config = AdaptiveConsistencyConfig(n_traces=n, batch=batch)
    return AdaptiveConsistency(backend, config, sampling=_SAMPLING)


def _deepprune(
    config: PruningConfig,
    judge: str,
    answers: str,
    backend: GenerationBackend,
    pool: TracePool,
    b: int,
) -> DeepPrune:
    rules = bench_rules(answers)
    return DeepPrune(
        backend,
        build_judge(judge, pool, b, rules),
        config,
        sampling=SamplingConfig(max_tokens=1_000_000),
    )


class LockstepClock:
    """A replay backend that also counts lockstep decoding steps: the run's latency in tokens.

    A batching engine decodes one token of every running trace per step, so a run's latency is the
    number of steps until its answer is decided. A stream that starts (or resumes) at step ``s``
    and has produced ``k`` tokens is at step ``s + k``; the clock is the furthest any stream got.
    This counts sequential windows (ESC, Adaptive-Consistency) and resumed traces, where "the
    longest trace" would not. A stream started by another's event (a window after a window, a
    resume) may start one step late, when a trace that decodes later in the same loop turn moved
    the clock first: at most one step per such start.
    """

    def __init__(self, inner: ReplayBackend) -> None:
        self.inner = inner
        self.now = 0

    def stream(self, request: TraceRequest) -> AsyncGenerator[TraceDelta, None]:
        return self._stream(request)

    async def _stream(self, request: TraceRequest) -> AsyncGenerator[TraceDelta, None]:
        start, produced = self.now, 0
        # Read the first token one loop turn later: streams started together all record their
        # start before any of them produces, as the traces of one engine step start together.
        await asyncio.sleep(0)
        deltas = self.inner.stream(request)
        try:
            async for delta in deltas:
                produced += len(delta.token_ids)
                self.now = max(self.now, start + produced)
                yield delta
        finally:
            await deltas.aclose()

    async def abort(self, request_id: str) -> None:
        await self.inner.abort(request_id)

    def count_prompt_tokens(self, prompt: Prompt) -> int:
        return self.inner.count_prompt_tokens(prompt)

    async def probe(
        self, request_id: str, *, suffix: str | None = None, max_tokens: int = 20
    ) -> ProbeReply:
        """The replay's recorded probe (``AnswerProbing``): probes cost no decoding step."""
        return await self.inner.probe(request_id, suffix=suffix, max_tokens=max_tokens)

    def records_probes(self, prompt: Prompt) -> bool:
        return self.inner.records_probes(prompt)


def latency_of(result: DeepPruneResult, clock_steps: int) -> int:
    """The result's own ``latency_tokens`` when it reports one, else the lockstep clock's count."""
    for holder in (result, result.totals):
        value = getattr(holder, "latency_tokens", None)
        if isinstance(value, int):
            return value
    return clock_steps


def _probe_tokens(result: DeepPruneResult) -> int:
    """Tokens spent on answer probes, when the result reports them (``probe*_tokens`` totals)."""
    totals = result.totals.model_dump()
    return sum(
        int(v)
        for k, v in totals.items()
        if k.startswith("probe") and k.endswith("tokens") and isinstance(v, int)
    )


@dataclass
class _TraceFacts:
    tokens: int
    answer: str | None


@dataclass
class _ProblemFacts:
    """The recorded facts of one problem in one resample, read off cons@N's run."""

    traces: list[_TraceFacts] = field(default_factory=list)
    cons_answer: str | None = None


def _vote(traces: Sequence[_TraceFacts], rules: AnswerRules) -> str | None:
    """Majority over equivalent answers; in lockstep the shorter trace finishes first (tie-break)."""
    order = sorted(range(len(traces)), key=lambda i: traces[i].tokens)
    ballots = [
        Ballot(i, answer, 1.0, rank)
        for rank, i in enumerate(order)
        if (answer := traces[i].answer) is not None
    ]
    votes = group_votes(ballots, rules.equivalent) if ballots else []
    return votes[0].answer if votes else None


def random_at_budget(
    traces: Sequence[_TraceFacts], budget: int, rng: random.Random, rules: AnswerRules
) -> tuple[str | None, list[_TraceFacts]]:
    """Finish traces in random order while they fit in ``budget`` tokens, then vote.

    A trace that would overrun the budget is skipped (a shorter one later may still fit), so the
    tokens spent never exceed the budget; with a budget below every trace nothing finishes and
    there is no answer.
    """
    order = list(range(len(traces)))
    rng.shuffle(order)
    chosen: list[_TraceFacts] = []
    left = budget
    for i in order:
        if traces[i].tokens <= left:
            chosen.append(traces[i])
            left -= traces[i].tokens
    return _vote(chosen, rules), chosen


def shortest_reaching(facts: _ProblemFacts, rules: AnswerRules) -> _TraceFacts | None:
    """The shortest trace whose answer is cons@N's: what knowing which trace to finish would cost."""
    if facts.cons_answer is None:
        return None
    reaching = [
        t
        for t in facts.traces
        if t.answer is not None and rules.equivalent(t.answer, facts.cons_answer)
    ]
    return min(reaching, key=lambda t: t.tokens) if reaching else None


def _correct(rules: AnswerRules, truth: str | None, answer: str | None) -> bool:
    return truth is not None and answer is not None and rules.equivalent(truth, answer)


def _agrees(rules: AnswerRules, cons_answer: str | None, answer: str | None) -> bool:
    if cons_answer is None or answer is None:
        return cons_answer is None and answer is None
    return rules.equivalent(cons_answer, answer)


async def _run_rows(
    rows: Sequence[RowSpec],
    pool: TracePool,
    resample: int,
    rules: AnswerRules,
) -> dict[str, list[ProblemNumbers]]:
    backend = ReplayBackend(pool, yield_every=1, reuse="error")
    clock = LockstepClock(backend)
    # Oracle and always-wrong rows on text-free pools replay other probes (see build_judge).
    clocks: dict[str, LockstepClock] = {"recorded": clock}
    for answers in _PROBE_ANSWERS.values():
        clocks[answers] = LockstepClock(
            ReplayBackend(pool, yield_every=1, reuse="error", probe_answers=answers)
        )
    numbers: dict[str, list[ProblemNumbers]] = {}
    facts: list[_ProblemFacts] = [_ProblemFacts() for _ in pool.problems]
    for row in rows:
        if row.kind != "runner" or row.build is None:
            continue
        row_clock = clocks[row.probe_answers]
        runner = row.build(row_clock, pool, resample)
        per_problem: list[ProblemNumbers] = []
        for index, problem in enumerate(pool.problems):
            row_clock.now = 0
            result = await runner.run(problem.problem)
            if row.key == "cons":  # the first row: every later row is compared with it
                facts[index] = _ProblemFacts(
                    [_TraceFacts(t.tokens_decoded, t.answer) for t in result.traces],
                    result.answer,
                )
            per_problem.append(
                ProblemNumbers(
                    correct=_correct(rules, problem.answer, result.answer),
                    tokens=result.totals.decoded_tokens,
                    latency_tokens=latency_of(result, row_clock.now),
                    judge_prefill_tokens=result.totals.judge_prefill_tokens,
                    probe_tokens=_probe_tokens(result),
                    traces_finished=sum(t.status == "finished" for t in result.traces),
                    probe_calls=result.totals.probe_calls,
                    agrees_with_cons=_agrees(rules, facts[index].cons_answer, result.answer),
                )
            )
        numbers[row.key] = per_problem
    for row in rows:
        if row.kind == "random_at_budget" and row.source in numbers:
            per_problem = []
            for index, problem in enumerate(pool.problems):
                budget = numbers[row.source][index].tokens
                # Its own order per row and problem: the control does not change with the other
                # rows benched beside it (--judges, --finalists) or the other problems.
                rng = random.Random(f"random-at-budget:{resample}:{row.key}:{problem.id}")
                answer, chosen = random_at_budget(facts[index].traces, budget, rng, rules)
                per_problem.append(
                    ProblemNumbers(
                        correct=_correct(rules, problem.answer, answer),
                        tokens=sum(t.tokens for t in chosen),
                        latency_tokens=max((t.tokens for t in chosen), default=0),
                        traces_finished=len(chosen),
                        agrees_with_cons=_agrees(rules, facts[index].cons_answer, answer),
                    )
                )
            numbers[row.key] = per_problem
        elif row.kind == "shortest":
            per_problem = []
            for index, problem in enumerate(pool.problems):
                best = shortest_reaching(facts[index], rules)
                tokens = best.tokens if best is not None else 0
                per_problem.append(
                    ProblemNumbers(
                        correct=_correct(rules, problem.answer, facts[index].cons_answer),
                        tokens=tokens,
                        latency_tokens=tokens,
                        traces_finished=int(best is not None),
                        agrees_with_cons=True,
                    )
                )
            numbers[row.key] = per_problem
    return numbers


def measure_resample(
    settings: BenchSettings, judges: Sequence[str], pool: TracePool, resample: int
) -> dict[str, list[dict[str, int | bool]]]:
    """Run every row on one resampled pool; per row, one dict of numbers per problem.

    Takes the settings, not the rows (their builders are closures), so it runs in a worker
    process; plain dicts come back, and land in ``--json`` as they are.
    """
    rules = bench_rules(settings.answers)
    rows = plan_rows(settings, judges)
    numbers = asyncio.run(_run_rows(rows, pool, resample, rules))
    return {key: [asdict(n) for n in per_problem] for key, per_problem in numbers.items()}
