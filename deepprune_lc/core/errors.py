"""Errors a run raises. Each carries the partial result, so a failure mid-run loses nothing."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from deepprune_lc.core.result import DeepPruneResult


class DeepPruneError(RuntimeError):
    """A run could not complete.

    ``partial_result`` holds every trace's status and token counts, the clusters formed so far and
    the text of every trace that finished, as measured up to the failure. Every request that was
    still running in the backend has been aborted before this is raised.
    """

    def __init__(self, message: str, partial_result: DeepPruneResult | None = None) -> None:
        super().__init__(message)
        self.partial_result = partial_result


class GenerationError(DeepPruneError):
    """The generation backend failed (a stream raised, or an abort did not go through)."""


class JudgeError(DeepPruneError):
    """The judge failed and the run was configured with ``on_judge_error="raise"``."""
