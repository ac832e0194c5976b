"""The embedded demo pool: three grade-school problems (eight traces each) and one number-theory
problem (sixteen traces), all hand-written for this project.

Why it ships with the package: ``deepprune demo`` and the README's examples must work on a fresh
install with no GPU and no reference data beside it, so the replay backend needs a pool that
travels inside the wheel. The problems and traces were written for this project (not copied from
any dataset); per problem most traces reach the right answer in varied wording and a few make a
plausible mistake, so the demo shows clustering, pruning and a vote that overrides a minority.

As in real samples from one model, several traces of a problem open with (nearly) the same sentences
and then diverge; that is what lets the model-free ``LexicalJudge`` (default config) merge them.

* The grade-school problems (``demo-bakery``, ``demo-pencils``, ``demo-train``) have short, terse
  traces (about 110-180 tokens, about 10 reasoning words), like an instruction-tuned model's: they
  merge at a short prefix (40 tokens merges 3-4 correct traces per problem and, for the train
  problem, the two traces that share the "average the speeds" mistake, and never a correct with a
  wrong trace). With prefixes of 120 tokens no pair exceeds the judge's midpoint. The library's
  default prefix, 25 reasoning words, is never reached: every trace ends first and is clustered on
  its whole text, nothing merges, and nothing is saved, so the demo and the examples that use
  them compare 40-token prefixes.
* ``demo-divisors`` ("How many positive divisors does 360 have?", the README's question) has 16
  traces in a reasoning model's thinking style (330-520 tokens, 25-38 reasoning words) along five
  routes: three reach 24 (factorise by repeated division, 7 traces; factorise 36 * 10, 3; list
  the divisor pairs, 3) and two make a plausible mistake (a factorisation that loses a 2, 2
  traces answering 18; a listing that skips 8, 1 trace answering 22). Traces of one route share their opening through the 25th
  reasoning word, so the library defaults (16 traces, 25 reasoning words, lexical judge, majority
  policy) cluster them by route, stop the losing routes after their prefix and answer 24 with
  about a fifth of the tokens saved.
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
