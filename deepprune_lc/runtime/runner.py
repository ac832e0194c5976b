"""Public entry points: ``DeepPrune`` and the baselines it is measured against (cons@N, ESC,
Adaptive-Consistency).

Each is a thin, reusable object holding a backend, a judge and validated configs. Every ``run`` builds
a fresh controller and driver, so one instance serves many questions, sequentially or concurrently.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

from deepprune_lc.core.answers import AnswerRules
from deepprune_lc.core.config import (
    DEFAULT_IDLE_TIMEOUT_S,
    EarlyStoppingConfig,
    ProbeClustering,
    PruningConfig,
    RunConfig,
    SamplingConfig,
    VoteSettling,
)
from deepprune_lc.core.controllers import (
    AdaptiveConsistencyConfig,
    AdaptiveConsistencyController,
    ControllerProtocol,
    DeepPruneController,
    EarlyStoppingController,
    SelfConsistencyController,
)
from deepprune_lc.core.errors import AnswerRulesError
from deepprune_lc.core.events import DeepPruneEvent, EventListener
from deepprune_lc.core.ports import GenerationBackend, Judge, Prompt, TraceCapacity
from deepprune_lc.core.result import DeepPruneResult
from deepprune_lc.runtime.driver import Driver, iterate_events, validate_prompt

__all__ = [
    "AdaptiveConsistency",
    "DeepPrune",
    "EarlyStoppingSelfConsistency",
    "SelfConsistency",
    "with_probe_clustering",
]


def _require_backend(backend: object) -> GenerationBackend:
    if not isinstance(backend, GenerationBackend):
        raise TypeError(
            f"backend: {type(backend).__name__} does not implement GenerationBackend "
            "(stream, abort, count_prompt_tokens)"
        )
    return backend


def guarded_rules(rules: AnswerRules) -> AnswerRules:
    """``rules`` whose ``extract`` / ``equivalent`` raise ``AnswerRulesError`` when they fail.

    User rules run inside the controller's steps; an exception from one would otherwise read as an
    internal error of the driver. The error names the rule, what it was given and what it raised,
    and the run fails with its partial result. An ``extract`` that returns something other than a
    string or None fails the same way (the vote compares strings).
    """
    extract, equivalent, name = rules.extract, rules.equivalent, rules.name

    def checked_extract(text: str) -> str | None:
        try:
            answer = extract(text)
        except Exception as exc:
            raise AnswerRulesError(
                f"answer rules {name!r}: extract raised {exc!r} on a trace of {len(text)} chars"
            ) from exc
        if answer is not None and not isinstance(answer, str):
            raise AnswerRulesError(
                f"answer rules {name!r}: extract returned {type(answer).__name__} "
                f"{answer!r:.80}, expected a string or None"
            )
        return answer

    def checked_equivalent(a: str, b: str) -> bool:
        try:
            return bool(equivalent(a, b))
        except Exception as exc:
            raise AnswerRulesError(
                f"answer rules {name!r}: equivalent raised {exc!r} comparing {a!r:.80} "
                f"and {b!r:.80}"
            ) from exc

    return AnswerRules(extract=checked_extract, equivalent=checked_equivalent, name=name)


class _ParallelRunner:
    """Shared surface of every method: ``run`` for a result, ``stream`` for its events."""

    def __init__(
        self,
        backend: GenerationBackend,
        *,
        sampling: SamplingConfig | None,
        answers: AnswerRules | str | None,
    ) -> None:
        self.backend = _require_backend(backend)
        self.sampling = sampling if sampling is not None else SamplingConfig()
        self.answers = AnswerRules.resolve(answers)

    def _driver(self, prompt: Prompt, listeners: Sequence[EventListener]) -> Driver:
        raise NotImplementedError

    async def run(
        self, prompt: Prompt, *, listeners: Sequence[EventListener] = ()
    ) -> DeepPruneResult:
        """Answer ``prompt``; raises ``DeepPruneError`` (with ``partial_result``) on failure."""
        return await self._driver(validate_prompt(prompt), listeners).run()

    def stream(self, prompt: Prompt) -> AsyncIterator[DeepPruneEvent]:
        """Yield the run's events as they happen; the last one is ``RunCompleted``."""
        driver_prompt = validate_prompt(prompt)

        def start(listener: EventListener) -> asyncio.Future[DeepPruneResult]:
            return asyncio.ensure_future(self._driver(driver_prompt, [listener]).run())

        return iterate_events(start)


def fit_n_traces(
    config: PruningConfig, backend: GenerationBackend, prompt: Prompt
) -> PruningConfig:
    """``config`` with ``n_traces`` capped at the backend's distinct traces for ``prompt``, when the
    caller left ``n_traces`` at its default.

    The default (16) is a sampling engine's; a backend that replays recorded traces
    (``TraceCapacity``) may hold fewer, and asking it for more would only repeat them. An
    ``n_traces`` the caller set (it is in the config's ``model_fields_set``) is never changed.
    """
    if "n_traces" in config.model_fields_set or not isinstance(backend, TraceCapacity):
        return config
    capacity = backend.max_traces(prompt)
    if capacity is None or capacity >= config.n_traces:
        return config
    return config.model_copy(update={"n_traces": max(1, capacity)})


def with_probe_clustering(config: PruningConfig, judge: object) -> PruningConfig:
    """``config`` set to cluster by answer probes when ``judge`` is the probe judge.

    The probe judge (``ProbeJudge``, ``judge="probe"``) makes no pair calls: it carries the
    ``ProbeClustering`` settings the controller clusters by. Decided from the judge itself, so a
    caller that wraps the judge (the chat model traces each judge call) decides it before
    wrapping; a config that already sets ``probe`` is kept.
    """
    settings = getattr(judge, "probe_clustering", None)
    if config.probe is None and isinstance(settings, ProbeClustering):
        return config.model_copy(update={"probe": settings})
    return config


class DeepPrune(_ParallelRunner):
    """Parallel reasoning that stops redundant traces early (Tu et al., 2025).

    >>> result = await DeepPrune(backend, judge, PruningConfig(n_traces=8)).run("What is 6 * 7?")
    >>> result.answer, result.totals.token_savings
    """

    def __init__(
        self,
        backend: GenerationBackend,
        judge: Judge,
        config: PruningConfig | None = None,
        *,
        sampling: SamplingConfig | None = None,
        answers: AnswerRules | str | None = None,
    ) -> None:
        super().__init__(backend, sampling=sampling, answers=answers)
        if not isinstance(judge, Judge):
            raise TypeError(f"judge: {type(judge).__name__} does not implement Judge (score)")
        self.judge = judge
        self.config = config if config is not None else PruningConfig()

    def _driver(self, prompt: Prompt, listeners: Sequence[EventListener]) -> Driver:
        # The probe judge: cluster by probe answers, no pair calls (decided before the controller
        # is built, so the driver needs to know nothing of judges; a caller that wraps the judge
        # has decided it already, see with_probe_clustering).
        config = with_probe_clustering(fit_n_traces(self.config, self.backend, prompt), self.judge)
        controller = DeepPruneController(config, guarded_rules(self.answers))
        return Driver(
            self.backend,
            self.judge,
            controller,
            prompt=prompt,
            sampling=self.sampling,
            run=config,
            listeners=listeners,
            policy=config.policy,
        )


class SelfConsistency(_ParallelRunner):
    """Baseline cons@N: all N traces finish; majority vote over equivalent answers.

    ``settle=VoteSettling()`` adds the settled-vote stop: the traces still running stop once the
    vote over the finished ones is settled (a baseline of its own, with no judge).
    """

    def __init__(
        self,
        backend: GenerationBackend,
        n_traces: int = 16,
        *,
        sampling: SamplingConfig | None = None,
        answers: AnswerRules | str | None = None,
        seed: int = 0,
        deadline_s: float | None = None,
        settle: VoteSettling | None = None,
        idle_timeout_s: float | None = DEFAULT_IDLE_TIMEOUT_S,
    ) -> None:
        super().__init__(backend, sampling=sampling, answers=answers)
        self.idle_timeout_s = idle_timeout_s
        self.run_config = self._run_config(n_traces, seed, deadline_s)
        self.n_traces, self.seed, self.deadline_s = n_traces, seed, deadline_s
        self.settle = settle

    def _run_config(self, n_traces: int, seed: int, deadline_s: float | None) -> RunConfig:
        return RunConfig(
            n_traces=n_traces,
            seed=seed,
            deadline_s=deadline_s,
            idle_timeout_s=self.idle_timeout_s,
        )

    def _controller(self) -> ControllerProtocol:
        rules = guarded_rules(self.answers)
        return SelfConsistencyController(self.n_traces, rules, settle=self.settle)

    def _driver(self, prompt: Prompt, listeners: Sequence[EventListener]) -> Driver:
        return Driver(
            self.backend,
            None,
            self._controller(),
            prompt=prompt,
            sampling=self.sampling,
            run=self.run_config,
            listeners=listeners,
        )


class EarlyStoppingSelfConsistency(SelfConsistency):
    """Baseline ESC (Li et al., 2024): windows of w traces, stop at the first unanimous window."""

    def __init__(
        self,
        backend: GenerationBackend,
        config: EarlyStoppingConfig | None = None,
        *,
        sampling: SamplingConfig | None = None,
        answers: AnswerRules | str | None = None,
    ) -> None:
        self.esc_config = config if config is not None else EarlyStoppingConfig()
        super().__init__(
            backend,
            self.esc_config.n_traces,
            sampling=sampling,
            answers=answers,
            seed=self.esc_config.seed,
            deadline_s=self.esc_config.deadline_s,
        )

    def _run_config(self, n_traces: int, seed: int, deadline_s: float | None) -> RunConfig:
        return self.esc_config

    def _controller(self) -> ControllerProtocol:
        return EarlyStoppingController(self.esc_config, guarded_rules(self.answers))


class AdaptiveConsistency(SelfConsistency):
    """Baseline Adaptive-Consistency (Aggarwal et al., 2023): batches of ``batch`` traces, stop once
    a Beta posterior says the leading answer is the majority with probability >= ``confidence``.
    """

    def __init__(
        self,
        backend: GenerationBackend,
        config: AdaptiveConsistencyConfig | None = None,
        *,
        sampling: SamplingConfig | None = None,
        answers: AnswerRules | str | None = None,
    ) -> None:
        self.ac_config = config if config is not None else AdaptiveConsistencyConfig()
        super().__init__(
            backend,
            self.ac_config.n_traces,
            sampling=sampling,
            answers=answers,
            seed=self.ac_config.seed,
            deadline_s=self.ac_config.deadline_s,
        )

    def _run_config(self, n_traces: int, seed: int, deadline_s: float | None) -> RunConfig:
        return self.ac_config

    def _controller(self) -> ControllerProtocol:
        return AdaptiveConsistencyController(self.ac_config, guarded_rules(self.answers))
