"""The answer verifier process (``python -m deepprune_lc.core.answers._verify_worker``).

Why a process: sympy has inputs it never finishes and cannot be stopped from another thread, and
math-verify's timeouts use ``signal.alarm``, which works only on a main thread. Here the
comparisons run on this process's main thread with those timeouts on, under an address-space
limit, and the parent (``equivalence._Verifier``) kills the process when one takes too long.

Protocol: the process prints ``ready`` once math-verify is imported, then reads one JSON pair
``[first, second]`` per line on stdin and answers ``1`` (equivalent) or ``0`` per line. It exits
when stdin closes (the parent is gone).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys

__all__ = ["main"]


def _limit_memory() -> None:
    limit = int(os.environ.get("DEEPPRUNE_VERIFY_MEMORY_BYTES", "0") or 0)
    if limit <= 0:
        return
    with contextlib.suppress(ImportError, ValueError, OSError):
        import resource

        _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        if hard != resource.RLIM_INFINITY:
            limit = min(limit, hard)
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def main() -> None:
    """Serve comparisons until stdin closes."""
    # The protocol keeps the real stdout; anything the libraries print goes to stderr instead.
    reply = os.fdopen(os.dup(sys.stdout.fileno()), "wb", buffering=0)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    _limit_memory()
    from deepprune_lc.core.answers.equivalence import _verify_direct, warm_verifier

    warm_verifier()
    reply.write(b"ready\n")
    for line in sys.stdin.buffer:
        try:
            first, second = json.loads(line)
            same = _verify_direct(str(first), str(second), timeouts=True)
        except BaseException:  # MemoryError, a timeout outside math-verify's own handling, junk
            same = False
        reply.write(b"1\n" if same else b"0\n")


if __name__ == "__main__":
    main()
