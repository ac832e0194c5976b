"""The runtime: the asyncio driver, the public runners, the background loop and the spec registry.

The only layer that knows about concurrency, deadlines and cancellation. It depends on the core and
on the core's adapters (replay backend, lexical judge) through the spec registry, never on LangChain.
"""

from deepprune_lc.runtime.loop import background_loop, run_sync
from deepprune_lc.runtime.runner import DeepPrune, EarlyStoppingSelfConsistency, SelfConsistency

__all__ = [
    "DeepPrune",
    "EarlyStoppingSelfConsistency",
    "SelfConsistency",
    "background_loop",
    "run_sync",
]
