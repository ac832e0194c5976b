"""The shared backend contract (``deepprune_lc.testing.BackendConformanceTests``) on
``TransformersBackend``: the session's tiny random Qwen2 with end of sequence ignored (fixed
lengths), and for the "stop" test the tiny trained reasoner through its spec string (the backend the
standard suites share).

The engine's own state is the judge of leaks: a request is live while it waits for a row or holds
one, and the rows physically in the batch tensors count too (``engine_row_ids``). Greedy decoding of
the random model repeats one token, so the sampled (seeded) resume test is the one that bites here.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from deepprune_transformers import TransformersBackend

from deepprune_lc.core.ports import GenerationBackend
from deepprune_lc.runtime import resolve_backend
from deepprune_lc.testing import BackendConformanceTests


class TestTransformersBackendConformance(BackendConformanceTests):
    @pytest.fixture
    def backend(self, tiny: TransformersBackend) -> TransformersBackend:
        return tiny

    @pytest.fixture
    def stopping_backend(self, tiny_reasoner_dir: Path) -> GenerationBackend:
        return resolve_backend(f"transformers:{tiny_reasoner_dir}")

    @property
    def stop_max_tokens(self) -> int:
        return 200

    def live_requests(self, backend: GenerationBackend) -> set[str]:
        assert isinstance(backend, TransformersBackend)
        return backend.live_requests() | set(backend.engine_row_ids())

    async def assert_nothing_live(self, backend: GenerationBackend) -> None:
        assert isinstance(backend, TransformersBackend)
        await backend.wait_idle()  # the decode loop has wound down
        await super().assert_nothing_live(backend)
