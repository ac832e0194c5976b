"""Errors a run raises. Each carries the partial result, so a failure mid-run loses nothing."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from deepprune_lc.core.result import DeepPruneResult

__all__ = [
    "AnswerRulesError",
    "BackendDeadError",
    "BackendError",
    "DeepPruneError",
    "DeepPruneTimeoutError",
    "GenerationError",
    "JudgeError",
]


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


class BackendError(GenerationError):
    """A backend failed at its own level: the engine rejected a request, or a stream broke.

    Raised by backends (from ``stream`` or ``abort``), with the engine's own exception as
    ``__cause__``, so callers can tell an engine failure from a bug or a bad argument (those stay
    ``ValueError`` / ``TypeError``) without knowing which engine runs. The run that sees it fails
    with a ``GenerationError`` whose cause is this error; later requests may succeed.
    """


class BackendDeadError(BackendError):
    """The engine itself is dead: every later request fails too, until it is restarted.

    A server should report itself unhealthy and restart the backend rather than retry.
    """


class AnswerRulesError(DeepPruneError):
    """A task's answer rules failed: a user ``extract`` or ``equivalent`` raised.

    The run stops (an answer read by a broken rule is no answer), every request is aborted and the
    partial result is attached; the rule's own exception is the ``__cause__``.
    """


class JudgeError(DeepPruneError):
    """The judge failed and the run was configured with ``on_judge_error="raise"``."""


class DeepPruneTimeoutError(DeepPruneError, TimeoutError):
    """The run's deadline passed before any trace finished, so there is nothing to answer with.

    A ``TimeoutError`` too, so code that handles timeouts generically (LangChain's ``with_retry``
    and ``with_fallbacks``, ``asyncio`` callers) treats it like any client timeout. ``partial_result``
    carries every trace's tokens. A deadline that leaves finished traces is not an error: they vote,
    and the result is flagged ``fallback="deadline"``.
    """
