"""What a stop that needs finished votes costs on a pool, with nothing spent on prefixes or judges.

Usage::

    python benchmarks/vote_lanes.py ../shared/data/probes/qwen3_8b_aime24_probe128.jsonl \\
        --n 64 --resamples 2 --lanes 2,4,6,8

``K`` *lanes*: K traces decode side by side (lockstep, one token per step each); when one finishes
it votes and the next trace starts in its lane; the run stops at the first settled vote over the
finished traces (the leader has ``--min-margin`` finished votes and leads every other answer by
that many, running traces not waited for), or when all N have run (then the plurality answers).
No trace reads a prefix for a judge, none is parked or resumed: this is the cost of collecting
two agreeing finished votes and nothing else, the part every such method pays, DeepPrune's
settled vote and ESC included. K = 1 is sequential sampling; ESC window 2 is close to K = 2 with
windows instead of lanes.

Resamples are the bench's (``deepprune bench replay``, same seed: the same N traces per problem),
so the ratios to cons@N sit beside its rows. Ratios are per resample, over the whole problem set
(total tokens, and latency as the sum of per-problem decoding steps), then averaged.
"""

from __future__ import annotations

import argparse
import heapq
from dataclasses import dataclass

from deepprune_lc.backends.pool import NO_ANSWER, PoolProblem, load_trace_pool
from deepprune_lc.cli.bench_bootstrap import resample_pool
from deepprune_lc.core.answers import AnswerRules, Ballot, group_votes

__all__ = ["LaneRun", "main", "run_lanes"]


@dataclass(frozen=True)
class LaneRun:
    """One problem under K lanes: its answer, tokens decoded and steps until the answer."""

    answer: str | None
    tokens: int
    latency: int


def run_lanes(problem: PoolProblem, lanes: int, min_margin: int, rules: AnswerRules) -> LaneRun:
    """Play ``problem``'s traces in order through ``lanes`` lanes until the vote is settled."""
    lengths = [t.tokens or 0 for t in problem.traces]
    answers = [t.final_answer for t in problem.traces]
    starts: dict[int, int] = {}
    running: list[tuple[int, int]] = []  # (step it ends, trace index)
    for index in range(min(lanes, len(lengths))):
        starts[index] = 0
        heapq.heappush(running, (lengths[index], index))
    ballots: list[Ballot] = []
    now = 0
    answer: str | None = None
    while running:
        now, index = heapq.heappop(running)
        if answers[index] not in (None, NO_ANSWER):
            ballots.append(Ballot(index, str(answers[index]), finish_order=len(ballots)))
            votes = group_votes(ballots, rules.equivalent)
            runner_up = votes[1].weight if len(votes) > 1 else 0.0
            if votes[0].weight >= min_margin and votes[0].weight - runner_up >= min_margin:
                answer = votes[0].answer
                break
        following = len(starts)
        if following < len(lengths):
            starts[following] = now
            heapq.heappush(running, (now + lengths[following], following))
    if answer is None and ballots:
        answer = group_votes(ballots, rules.equivalent)[0].answer
    tokens = sum(min(lengths[i], now - start) for i, start in starts.items())
    return LaneRun(answer, tokens, now)


def _consensus(problem: PoolProblem, rules: AnswerRules) -> str | None:
    """cons@N's answer: the plurality of every trace, ties to the earliest (shortest) finisher."""
    order = sorted(range(len(problem.traces)), key=lambda i: (problem.traces[i].tokens or 0, i))
    ballots = [
        Ballot(i, str(problem.traces[i].final_answer), finish_order=rank)
        for rank, i in enumerate(order)
        if problem.traces[i].final_answer not in (None, NO_ANSWER)
    ]
    return group_votes(ballots, rules.equivalent)[0].answer if ballots else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pool")
    parser.add_argument("--n", type=int, default=64, help="traces per problem (N)")
    parser.add_argument("--resamples", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0, help="the bench's resampling seed")
    parser.add_argument("--lanes", default="2,4,6,8", help="K values, comma-separated")
    parser.add_argument("--min-margin", type=int, default=2)
    args = parser.parse_args()
    lanes = [int(k) for k in args.lanes.split(",")]
    if min(lanes) < 1 or args.n < 1 or args.resamples < 1 or args.min_margin < 1:
        raise SystemExit("--lanes, --n, --resamples and --min-margin must all be >= 1")
    pool = load_trace_pool(args.pool)
    if any(t.tokens is None for p in pool.problems for t in p.traces):
        raise SystemExit(f"{args.pool}: lanes need text-free traces (tokens + final_answer)")
    rules = AnswerRules.math()

    def right(answer: str | None, truth: str | None) -> bool:
        return answer is not None and truth is not None and bool(rules.equivalent(answer, truth))

    columns = {"cons": [0.0, 1.0, 1.0], **{f"K = {k}": [0.0, 0.0, 0.0] for k in lanes}}
    for b in range(args.resamples):
        drawn = resample_pool(pool, args.n, args.seed, b, replace=True)
        cons_tokens = sum(t.tokens or 0 for p in drawn.problems for t in p.traces)
        cons_latency = sum(max(t.tokens or 0 for t in p.traces) for p in drawn.problems)
        columns["cons"][0] += sum(right(_consensus(p, rules), p.answer) for p in drawn.problems)
        for k in lanes:
            runs = [run_lanes(p, k, args.min_margin, rules) for p in drawn.problems]
            column = columns[f"K = {k}"]
            pairs = zip(runs, drawn.problems, strict=True)
            column[0] += sum(right(r.answer, p.answer) for r, p in pairs)
            column[1] += sum(r.tokens for r in runs) / cons_tokens / args.resamples
            column[2] += sum(r.latency for r in runs) / cons_latency / args.resamples
    problems = len(pool.problems) * args.resamples
    print(f"{'lanes':10} {'accuracy':>9} {'tokens / cons@N':>16} {'latency / cons@N':>17}")
    for name, (correct, tokens, latency) in columns.items():
        print(f"{name:10} {correct / problems:9.1%} {tokens:16.3f} {latency:17.3f}")


if __name__ == "__main__":
    main()
