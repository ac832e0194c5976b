"""Factories of the kinds that ship in the core: ``replay`` (backend), ``lexical`` and ``probe``
(judges).

They are registered through the core's own ``pyproject.toml`` entry points, exactly as an
integration or a third-party package registers its kinds, so the registry has no special cases.
They live in the runtime layer because ``replay:demo`` reads the embedded demo pool
(``deepprune_lc.demo``), which the backends layer may not import.
"""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from deepprune_lc.backends.pool import load_trace_pool
from deepprune_lc.backends.replay import ReplayBackend
from deepprune_lc.core.config import ProbeClustering
from deepprune_lc.core.specs import Spec, SpecError
from deepprune_lc.demo import load_demo_pool
from deepprune_lc.judges.lexical import LexicalJudge, LexicalJudgeConfig
from deepprune_lc.judges.probe import ProbeJudge
from deepprune_lc.runtime.registry import factory_check

_Options = TypeVar("_Options", bound=BaseModel)

__all__ = ["check_replay_spec", "lexical_judge", "probe_judge", "replay_backend"]


def check_replay_spec(spec: Spec) -> None:
    """``replay``'s spec check (run when a reasoner is constructed): a pool is named, no options,
    and a pool file exists; reading and validating the file waits for the first use."""
    if not spec.arg:
        raise SpecError(
            f"backend {spec.raw!r}: name the pool, 'replay:demo' or 'replay:<pool.jsonl>'"
        )
    spec.check_options()
    if spec.arg == "demo":
        return
    path = Path(spec.arg)
    if not path.is_file():
        what = "is a directory, not a file" if path.is_dir() else "does not exist"
        raise FileNotFoundError(
            f"backend {spec.raw!r}: the trace pool {spec.arg!r} {what} (resolved to "
            f"{path.resolve()}); pass the path of a pool JSONL file, 'replay:<pool.jsonl>', or "
            "'replay:demo' for the embedded demo pool"
        )


@factory_check(check_replay_spec)
def replay_backend(spec: Spec) -> ReplayBackend:
    """``replay:demo`` (the embedded demo pool) or ``replay:<pool.jsonl>``; no options.

    The backend does not cycle (``reuse="error"``): a run left at the default ``n_traces`` uses at
    most the traces recorded for its question (``ReplayBackend.max_traces``), and a run that asks
    for more fails with an error naming the pool size instead of replaying the same traces again,
    which would make duplicates agree with themselves and inflate the vote.
    """
    if not spec.arg:
        raise SpecError(
            f"backend {spec.raw!r}: name the pool, 'replay:demo' or 'replay:<pool.jsonl>'"
        )
    spec.check_options()
    pool = load_demo_pool() if spec.arg == "demo" else load_trace_pool(spec.arg)
    # One token per event-loop turn: concurrent traces interleave as on a batching engine.
    return ReplayBackend(pool, yield_every=1, reuse="error")


def lexical_judge(spec: Spec) -> LexicalJudge:
    """``lexical``, optionally with ``LexicalJudgeConfig`` fields: ``lexical?midpoint=0.5&ngram=3``."""
    return LexicalJudge(_judge_options(spec, LexicalJudgeConfig, "lexical?midpoint=0.5"))


def check_probe_spec(spec: Spec) -> None:
    """``probe``'s spec check: no argument; options are ``ProbeClustering`` fields."""
    _judge_options(spec, ProbeClustering, _PROBE_EXAMPLE)


_PROBE_EXAMPLE = "probe?at_tokens=1000&unknown=together"


def _judge_options(spec: Spec, model: type[_Options], example: str) -> _Options:
    """A judge kind that takes no argument: its options validated as ``model``'s fields, each
    problem named in one ``SpecError`` (``example`` shows the form)."""
    if spec.arg:
        raise SpecError(
            f"judge {spec.raw!r}: {spec.kind!r} takes no argument; set its {model.__name__} "
            f"fields as options, e.g. {example!r}"
        )
    spec.check_options(model.model_fields)
    try:
        return model.model_validate(dict(spec.options))
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}"
            for error in exc.errors()
        )
        raise SpecError(f"judge {spec.raw!r}: {problems}") from exc


@factory_check(check_probe_spec)
def probe_judge(spec: Spec) -> ProbeJudge:
    """``probe``, optionally with ``ProbeClustering`` fields: ``probe?at_tokens=1000``.

    Clusters traces by their answer probes (``AnswerProbing``) instead of pairwise judge calls;
    needs a backend that answers probes (replay of a pool with recorded probes, or an engine).
    """
    return ProbeJudge(_judge_options(spec, ProbeClustering, _PROBE_EXAMPLE))
