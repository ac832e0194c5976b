"""How much a recorded answer probe says about a trace's final answer, by offset.

Usage::

    python benchmarks/probe_information.py ../shared/data/probes/qwen3_8b_aime24_probe128.jsonl

Two tables, both over every trace of every problem of a text-free pool (docs/trace-pools.md):

* **Stable probes.** For probes at offsets in each 2000-token band: how often the probe names the
  trace's final answer, over all probes, over those equal to the previous probe as well (what
  ``ProbeClustering.agree_stop=2`` calls committed), and over those that name the problem's
  majority final answer. This is why the settled vote counts committed probes only beside
  finished votes (docs/method.md, "Answer probes"): a stable probe of a wrong answer is often a
  value the trace only passes through.
* **Largest probe class.** Among the first ``--n`` traces, the traces in the largest class of
  probe answers at offset o: how often they end on the majority final answer of those ``n``,
  against any trace (what a random choice of finalists gets).

Answers are compared under the math rules (math-verify equivalence), as a run compares them, with
each probe answer matched against the problem's final answers.
"""

from __future__ import annotations

import argparse
from collections import Counter
from collections.abc import Callable

from deepprune_lc.backends.pool import NO_ANSWER, PoolProblem, load_trace_pool
from deepprune_lc.core.answers import AnswerRules

__all__ = ["main"]

_BAND = 2000


def _classes(finals: list[str], equivalent: Callable[[str, str], bool]) -> Callable[[str], str]:
    """Map an answer to the first final answer it is equivalent to, else to itself.

    Only the problem's final answers (a few distinct ones) are compared under the rules; two
    probe answers equivalent to no final answer are told apart by their text, which keeps this
    fast on thousands of distinct probe answers.
    """
    representatives: list[str] = []
    for final in finals:
        if final != NO_ANSWER and not any(equivalent(r, final) for r in representatives):
            representatives.append(final)
    cache: dict[str, str] = {}

    def canonical(answer: str) -> str:
        known = cache.get(answer)
        if known is None:
            known = answer
            if answer != NO_ANSWER:
                known = next((r for r in representatives if equivalent(r, answer)), answer)
            cache[answer] = known
        return known

    return canonical


def _stable_probe_table(problems: list[PoolProblem], rules: AnswerRules) -> None:
    counts: dict[int, Counter[str]] = {}
    for problem in problems:
        raw = [t.final_answer or NO_ANSWER for t in problem.traces]
        canonical = _classes(raw, rules.equivalent)
        finals = [canonical(f) for f in raw]
        majority = Counter(f for f in finals if f != NO_ANSWER).most_common(1)[0][0]
        every = problem.probe_every_tokens or 0
        for trace, final in zip(problem.traces, finals, strict=True):
            probes = [canonical(p) for p in trace.probes or []]
            for k, probe in enumerate(probes):
                if probe == NO_ANSWER:
                    continue
                band = counts.setdefault(min((k + 1) * every // _BAND, 6) * _BAND, Counter())
                right = probe == final
                stable = k > 0 and probes[k - 1] == probe
                band["all"] += 1
                band["all_right"] += right
                if stable:
                    band["stable"] += 1
                    band["stable_right"] += right
                    if probe == majority:
                        band["majority"] += 1
                        band["majority_right"] += right
    print("P(probe names the final answer), by offset band:")
    print(f"{'offset':>10} {'any probe':>16} {'two equal':>16} {'two equal, majority':>22}")
    for start in sorted(counts):
        c = counts[start]
        label = f"{start}+" if start == 6 * _BAND else f"{start}-{start + _BAND}"
        cells = [
            f"{c[k + '_right'] / c[k]:.3f} ({c[k]:>5})" if c[k] else "-"
            for k in ("all", "stable", "majority")
        ]
        print(f"{label:>10} {cells[0]:>16} {cells[1]:>16} {cells[2]:>22}")


def _largest_class_table(problems: list[PoolProblem], rules: AnswerRules, n: int) -> None:
    offsets = (500, 2000, 4000, 6000, 8000)
    hits = Counter[int]()
    sizes = Counter[int]()
    any_right = any_total = 0
    for problem in problems:
        traces = problem.traces[:n]
        raw = [t.final_answer or NO_ANSWER for t in traces]
        canonical = _classes(raw, rules.equivalent)
        finals = [canonical(f) for f in raw]
        majority = Counter(f for f in finals if f != NO_ANSWER).most_common(1)[0][0]
        any_right += sum(f == majority for f in finals)
        any_total += len(finals)
        every = problem.probe_every_tokens or 1
        for offset in offsets:
            k = offset // every - 1
            if k < 0:
                continue  # before this pool's first probe
            probes = [
                canonical(t.probes[min(k, len(t.probes) - 1)]) if t.probes else NO_ANSWER
                for t in traces
            ]
            known = Counter(p for p in probes if p != NO_ANSWER)
            if not known:
                continue
            top = known.most_common(1)[0][0]
            members = [f for p, f in zip(probes, finals, strict=True) if p == top]
            hits[offset] += sum(f == majority for f in members)
            sizes[offset] += len(members)
    print(f"\nLargest probe class among the first {n} traces: P(ends on their majority answer)")
    for offset in offsets:
        if sizes[offset]:
            print(f"{offset:>10} {hits[offset] / sizes[offset]:.3f} ({sizes[offset]} traces)")
    print(f"{'any trace':>10} {any_right / any_total:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pool")
    parser.add_argument("--n", type=int, default=64, help="Traces per problem for the class table")
    args = parser.parse_args()
    pool = load_trace_pool(args.pool)
    problems = [p for p in pool.problems if p.probe_every_tokens]
    if not problems:
        raise SystemExit(f"{args.pool}: no problem records answer probes")
    rules = AnswerRules.math()
    _stable_probe_table(problems, rules)
    _largest_class_table(problems, rules, args.n)


if __name__ == "__main__":
    main()
