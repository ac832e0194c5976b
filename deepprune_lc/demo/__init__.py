"""The embedded demo pool: three hand-written grade-school problems with eight traces each.

Why it ships with the package: ``deepprune demo`` must work on a fresh install with no GPU and no
reference data beside it, so the replay backend needs a pool that travels inside the wheel. The
problems and traces were written for this project (not copied from any dataset); per problem 5-7
traces reach the right answer in varied wording and 1-3 make a plausible mistake, so the demo shows
clustering, pruning and a vote that overrides a minority.

As in real samples from one model, several traces of a problem open with (nearly) the same sentences
and then diverge; that is what lets the model-free ``LexicalJudge`` (default config) merge them at a
short prefix (40 tokens merges 3-4 correct traces per problem and, for the train problem, the two
traces that share the "average the speeds" mistake, and never a correct with a wrong trace). With
prefixes of 120 tokens no demo pair exceeds the judge's midpoint: the traces have diverged by then.
"""

from __future__ import annotations

import sys
from importlib import resources

if sys.version_info >= (3, 11):
    from importlib.resources.abc import Traversable
else:  # pragma: no cover - Python 3.10
    from importlib.abc import Traversable

from deepprune_lc.backends.pool import TracePool, load_trace_pool

__all__ = ["DEMO_POOL_PATH", "load_demo_pool"]

#: The demo pool inside the installed package (a ``Traversable``; a plain path in normal installs).
DEMO_POOL_PATH: Traversable = resources.files(__name__).joinpath("demo_pool.jsonl")


def load_demo_pool() -> TracePool:
    """Load the embedded demo pool (works from a zip install too, via ``as_file``)."""
    with resources.as_file(DEMO_POOL_PATH) as path:
        return load_trace_pool(path)
