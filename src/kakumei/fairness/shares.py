"""Virtual-counter fair sharing (Sheng et al., "Fairness in Serving Large Language Models",
2024, applied to images) and what it means for one job's place in the queue.

Fair share is a hierarchy group -> person -> job (fairness/groups.py says who shares a
group). Groups and people have counters. Serving a job adds cost / weight to the counters of
its person and of its group, and the next job comes from the backlogged group with the
lowest counter, then its backlogged person with the lowest counter. The store applies these
rules in SQL; this module holds the arithmetic so that it is tested in one place and the
ETA the API shows follows the same rules as the claim.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

K = TypeVar("K")


def charge(cost: float, weight: float) -> float:
    """How much serving a job of `cost` units advances its owner's counter."""
    return cost / weight


def lifted_counter(own: float, backlogged_min: float | None, system_max: float | None) -> float:
    """Counter of a user who comes back with nothing queued.

    Idle time cannot be banked: the user starts at the lowest counter among those still
    waiting, or, when nobody waits, at the highest counter anyone has reached.
    """
    floor = backlogged_min if backlogged_min is not None else system_max
    return own if floor is None else max(own, floor)


@dataclass(frozen=True)
class Backlog:
    """One user's queued work as the scheduler sees it."""

    user_id: int
    counter: float
    weight: float
    queued: int
    queued_cost: float


@dataclass(frozen=True)
class Place:
    """Where a queued job stands: jobs (and their units) that will start before it."""

    jobs_ahead: int
    cost_ahead: float


def place_in_queue(
    user_id: int,
    counter: float,
    weight: float,
    own_ahead: int,
    own_ahead_cost: float,
    others: Sequence[Backlog],
    own_queued: int | None = None,
) -> Place:
    """Place of a job whose owner has `own_ahead` queued jobs (of `own_ahead_cost`) before it.

    Assumes no new arrivals and, for other users, jobs of their mean queued cost: the job is
    picked when its owner's counter reaches `t`; every other user is served while its own
    counter is below `t`. A tie goes, as in the claim query, to the one with fewer jobs still
    waiting, then to the lower id; `own_queued` is how many the job's owner has queued in all
    (None: ties by id alone).
    """
    t = counter + charge(own_ahead_cost, weight)
    jobs, cost = own_ahead, own_ahead_cost
    for other in others:
        if other.user_id == user_id or other.queued <= 0:
            continue
        mean = other.queued_cost / other.queued
        room = t - other.counter
        if mean <= 0:
            n = other.queued if room >= 0 else 0
        elif room < 0:
            n = 0
        else:
            # served jobs k = 0, 1, ... start at counter + k * step while that is below t
            step = charge(mean, other.weight)
            exact = room / step
            # Sums of costs carry float residue: a tie within it is a tie.
            n = math.ceil(exact - 1e-9)
            if abs(n - exact) <= 1e-9 and _goes_first(other, n, user_id, own_queued, own_ahead):
                n += 1
        n = min(n, other.queued)
        jobs += n
        cost += n * mean
    return Place(jobs_ahead=jobs, cost_ahead=cost)


def _goes_first(other: Backlog, served: int, user_id: int, own_queued: int | None, own_ahead: int) -> bool:
    """Whether `other`, tied with the job's owner when `served` of its jobs have gone, is
    served first: fewer jobs still waiting, then the lower id (the claim's ORDER BY)."""
    if own_queued is None:
        return other.user_id < user_id
    return (other.queued - served, other.user_id) < (own_queued - own_ahead, user_id)


@dataclass(frozen=True)
class Standing:
    """A group's or a person's counter and weight."""

    id: int
    counter: float
    weight: float
    queued: int | None = None  # jobs waiting in all (ties go to fewer); None: ties by id


def place_in_hierarchy(
    group: Standing,
    person: Standing,
    own_ahead: int,
    own_ahead_cost: float,
    *,
    groups: Sequence[Backlog],
    members: Sequence[Backlog],
) -> Place:
    """Place of a job in the hierarchy: `members` are the backlogged people of its group,
    `groups` every backlogged group (Backlog.user_id holds the group's id there).

    First inside the group: the people served before the job (place_in_queue among
    `members`). Then the group needs those jobs and this one's predecessors served, which
    takes its counter to where the other groups are served meanwhile (place_in_queue among
    `groups`). The same assumptions as place_in_queue: no new arrivals, mean costs."""
    inside = place_in_queue(person.id, person.counter, person.weight, own_ahead, own_ahead_cost, members, person.queued)
    # The group's own jobs before this one: the person's and those of the people served first.
    return place_in_queue(group.id, group.counter, group.weight, inside.jobs_ahead, inside.cost_ahead, groups,
                          group.queued)


def eta_seconds(cost_ahead: float, own_cost: float, units_per_second: float, workers: int) -> float:
    """Seconds until a job with `cost_ahead` units before it is finished."""
    rate = units_per_second * max(1, workers)
    return (cost_ahead + own_cost) / rate


def jain_index(shares: Sequence[float]) -> float:
    """Jain's fairness index: 1.0 when all shares are equal, 1/n when one takes all."""
    if not shares:
        return 1.0
    total = sum(shares)
    squares = sum(s * s for s in shares)
    return 1.0 if squares == 0 else total * total / (len(shares) * squares)


def fractions(amounts: Mapping[K, float]) -> dict[K, float]:
    """Each key's fraction of the total (all 0 when the total is 0): who got what share."""
    total = sum(amounts.values())
    return {k: (v / total if total else 0.0) for k, v in amounts.items()}
