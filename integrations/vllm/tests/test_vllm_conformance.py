"""The shared contracts (``deepprune_lc.testing``) on vLLM: the backend suite on the session engine
(CPU build, tiny trained Qwen2) and the judge suite on ``VLLMJudge`` sharing that engine.

The streams run on pytest's loop, so they are *bridged* to the engine loop (the direct path has its
own tests in test_vllm_backend.py). vLLM may decode a few tokens after an abort (a step in flight in
the engine-core process): the slack is declared, and bounded. Leaks are read from vLLM's request
table and from the engine-core process itself.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from deepprune_vllm import VLLMBackend, VLLMJudge
from vllm_helpers import ENGINE_KWARGS, QUESTION

from deepprune_lc.core.ports import GenerationBackend
from deepprune_lc.testing import BackendConformanceTests, JudgeConformanceTests


class TestVLLMBackendConformance(BackendConformanceTests):
    @pytest.fixture
    def backend(self, eos_free: VLLMBackend) -> VLLMBackend:
        return eos_free  # end of sequence ignored: every budget is reached

    @pytest.fixture
    def stopping_backend(self, vllm_backend: VLLMBackend) -> VLLMBackend:
        return vllm_backend  # the same engine, honouring end of sequence

    @property
    def text_prompt(self) -> str:
        return QUESTION

    @property
    def abort_slack_tokens(self) -> int:
        return 8  # engine slack; the benchmark measures its mean

    @property
    def resume_total_tokens(self) -> int:
        return 60

    @property
    def park_points(self) -> tuple[int, ...]:
        return (1, 12)

    @property
    def resume_exact_when_sampled(self) -> bool:
        # A resumed request is reseeded with the resume point mixed in (deepprune_vllm.trace_seed),
        # so it does not replay the random draws of the trace's first tokens.
        return False

    @property
    def min_distinct_reference_ids(self) -> int:
        return 6  # the trained model's greedy trace is a real sequence, not one token repeated

    @property
    def stop_max_tokens(self) -> int:
        return 200

    @property
    def settle_timeout_s(self) -> float:
        return 5.0

    async def assert_nothing_live(self, backend: GenerationBackend) -> None:
        """Nothing in vLLM's request table, nothing scheduled in the engine-core process."""
        assert isinstance(backend, VLLMBackend)
        deadline = time.monotonic() + self.settle_timeout_s
        while True:
            live = backend.live_requests()
            busy = await backend.core_has_work()
            if not live and not busy:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"engine still busy: live={live}, core_has_work={busy}")
            await asyncio.sleep(0.05)


class TestVLLMJudgeConformance(JudgeConformanceTests):
    @pytest.fixture
    def judge(self, tiny_model_dir: Path, vllm_backend: VLLMBackend) -> VLLMJudge:
        judge = VLLMJudge(str(tiny_model_dir), **ENGINE_KWARGS)
        assert judge.backend.engine is vllm_backend.engine  # no second engine
        return judge

    @property
    def runs_a_model(self) -> bool:
        return True


def test_a_local_model_directory_is_reported_by_its_name(tiny_model_dir: Path) -> None:
    """What LangSmith and usage callbacks see as the model: never the path on this machine."""
    backend = VLLMBackend(str(tiny_model_dir), **ENGINE_KWARGS)  # shares the session engine
    assert backend.model_name == tiny_model_dir.name
