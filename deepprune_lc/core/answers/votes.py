"""The weighted vote over finished traces: ballots grouped by equivalent answers, ranked."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from deepprune_lc.core.result import VoteGroup

__all__ = ["Ballot", "group_votes", "vote_settled"]


@dataclass(frozen=True)
class Ballot:
    """One finished trace's vote: its answer, its weight, and when it finished.

    ``weight`` is 1 for plain majority voting; the diverse policy passes the size of the cluster a
    trace represents, so one survivor can speak for the redundant traces pruned on its behalf.
    ``finish_order`` breaks ties and picks each group's representative.
    """

    trace_id: int
    answer: str
    weight: float = 1.0
    finish_order: int = 0

    def __post_init__(self) -> None:
        if not math.isfinite(self.weight) or self.weight < 0:
            raise ValueError(f"ballot weight must be finite and >= 0, got {self.weight!r}")


@dataclass
class _Group:
    """Mutable accumulator behind one :class:`VoteGroup` while ballots are being counted."""

    answer: str
    first_finish: int
    weight: float = 0.0
    trace_ids: list[int] = field(default_factory=list)

    def add(self, ballot: Ballot) -> None:
        self.weight += ballot.weight
        self.trace_ids.append(ballot.trace_id)

    def freeze(self) -> VoteGroup:
        return VoteGroup(
            answer=self.answer,
            weight=self.weight,
            trace_ids=list(self.trace_ids),
            first_finish=self.first_finish,
        )


def group_votes(
    ballots: Sequence[Ballot], equivalent: Callable[[str, str], bool]
) -> list[VoteGroup]:
    """Group equivalent answers and rank the groups: heaviest first, earliest-finished on ties.

    Ballots are counted in finish order (trace id breaks exact ties, so input order never matters)
    and each joins the first existing group whose representative — its earliest-finished answer —
    is equivalent. Comparing against one fixed representative, rather than any member, keeps the
    grouping deterministic even though equivalences such as math-verify's are not transitive.
    """
    groups: list[_Group] = []
    for ballot in sorted(ballots, key=lambda b: (b.finish_order, b.trace_id)):
        home = next((g for g in groups if equivalent(g.answer, ballot.answer)), None)
        if home is None:
            home = _Group(answer=ballot.answer, first_finish=ballot.finish_order)
            groups.append(home)
        home.add(ballot)
    ranked = sorted(groups, key=lambda g: (-g.weight, g.first_finish))
    return [g.freeze() for g in ranked]


def vote_settled(votes: Sequence[VoteGroup], still_running: float, min_margin: float = 1) -> bool:
    """Whether the ranked vote can no longer change: the leader's lead over the runner-up exceeds
    the weight still running (those voters could not overturn or tie it) and is >= ``min_margin``.

    A new answer among the running voters is covered too: it could gather at most
    ``still_running``, less than the lead, which is at most the leader's weight.
    """
    if not votes:
        return False
    lead = votes[0].weight - (votes[1].weight if len(votes) > 1 else 0.0)
    return lead > still_running and lead >= min_margin
