"""DeepPrune on the embedded trace pool: run one question, then watch another run's decisions.

Run: .venv/bin/python examples/quickstart.py
"""

from __future__ import annotations

import asyncio

from deepprune_lc import DeepPrune, LexicalJudge, PruningConfig, ReplayBackend, TokensPrefix
from deepprune_lc.demo import load_demo_pool


async def main() -> None:
    pool = load_demo_pool()
    deepprune = DeepPrune(
        ReplayBackend(pool, yield_every=1),
        LexicalJudge(),
        # The embedded traces are short, so the judge reads 40-token prefixes.
        PruningConfig(n_traces=8, prefix=TokensPrefix(k=40), finalists=3),
    )
    first, second = pool.problems[0], pool.problems[1]

    result = await deepprune.run(first.problem)
    print(f"Q: {first.problem}\nA: {result.answer} (truth {first.answer})")
    print("summary:", result.summary())

    print(f"\nQ: {second.problem}")
    async for event in deepprune.stream(second.problem):
        if event.name in {"deepprune.trace_parked", "deepprune.trace_resumed", "deepprune.vote"}:
            print(f"  {event.name}: {event.payload()}")


if __name__ == "__main__":
    asyncio.run(main())
