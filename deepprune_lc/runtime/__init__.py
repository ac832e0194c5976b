"""The runtime: the asyncio driver, the public runners, the background loop and the spec registry.

The only layer that knows about concurrency, deadlines and cancellation. It depends on the core and
on the core's adapters (replay backend, lexical judge) through the spec registry, never on LangChain.
The registry (``registry.py``) finds backend and judge kinds through the ``deepprune.backends`` /
``deepprune.judges`` entry points, or ``register_backend`` / ``register_judge`` from code.
"""

from deepprune_lc.runtime.loop import background_loop, run_sync
from deepprune_lc.runtime.registry import (
    BACKEND_GROUP,
    JUDGE_GROUP,
    BackendFactory,
    JudgeFactory,
    backend_kinds,
    check_backend_spec,
    check_judge_spec,
    factory_check,
    judge_kinds,
    refresh_plugins,
    register_backend,
    register_judge,
    resolve_backend,
    resolve_judge,
    spec_display_name,
    unregister_backend,
    unregister_judge,
)
from deepprune_lc.runtime.runner import (
    AdaptiveConsistency,
    DeepPrune,
    EarlyStoppingSelfConsistency,
    SelfConsistency,
)

__all__ = [
    "BACKEND_GROUP",
    "JUDGE_GROUP",
    "AdaptiveConsistency",
    "BackendFactory",
    "DeepPrune",
    "EarlyStoppingSelfConsistency",
    "JudgeFactory",
    "SelfConsistency",
    "backend_kinds",
    "background_loop",
    "check_backend_spec",
    "check_judge_spec",
    "factory_check",
    "judge_kinds",
    "refresh_plugins",
    "register_backend",
    "register_judge",
    "resolve_backend",
    "resolve_judge",
    "run_sync",
    "spec_display_name",
    "unregister_backend",
    "unregister_judge",
]
