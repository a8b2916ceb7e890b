from __future__ import annotations

import pytest

from kakumei.fairness.shares import Backlog, charge, eta_seconds, jain_index, lifted_counter, place_in_queue


def test_charge_divides_cost_by_weight() -> None:
    assert charge(4.0, 2.0) == 2.0


@pytest.mark.parametrize(
    ("own", "backlogged_min", "system_max", "expected"),
    [
        (0.0, 10.0, 50.0, 10.0),  # idle user comes back level with the waiting ones
        (20.0, 10.0, 50.0, 20.0),  # never lowered
        (0.0, None, 50.0, 50.0),  # nobody waits: start where the machine has got to
        (5.0, None, None, 5.0),
    ],
)
def test_lifted_counter(own, backlogged_min, system_max, expected) -> None:
    assert lifted_counter(own, backlogged_min, system_max) == expected


def test_place_counts_other_users_jobs_by_counter_not_arrival() -> None:
    heavy = Backlog(user_id=1, counter=100.0, weight=1.0, queued=500, queued_cost=500.0)
    light = Backlog(user_id=3, counter=90.0, weight=1.0, queued=2, queued_cost=2.0)
    # User 2 at counter 100 with nothing of their own ahead: heavy (lower id, same counter)
    # goes first once, light is behind by 10 and goes twice (all it has).
    place = place_in_queue(2, 100.0, 1.0, 0, 0.0, [heavy, light])
    assert place.jobs_ahead == 3 and place.cost_ahead == pytest.approx(3.0)


def test_place_of_a_later_own_job_includes_interleaved_others() -> None:
    other = Backlog(user_id=1, counter=0.0, weight=1.0, queued=100, queued_cost=100.0)
    # Four of my own jobs ahead (4 units): the other user is served for 4 units plus the tie.
    place = place_in_queue(2, 0.0, 1.0, 4, 4.0, [other])
    assert place.jobs_ahead == 4 + 5


def test_weight_halves_the_charge() -> None:
    other = Backlog(user_id=1, counter=0.0, weight=2.0, queued=100, queued_cost=100.0)
    assert place_in_queue(2, 0.0, 1.0, 4, 4.0, [other]).jobs_ahead == 4 + 9


def test_eta_scales_with_work_and_workers() -> None:
    assert eta_seconds(9.0, 1.0, units_per_second=0.5, workers=1) == pytest.approx(20.0)
    assert eta_seconds(9.0, 1.0, units_per_second=0.5, workers=2) == pytest.approx(10.0)


def test_jain_index() -> None:
    assert jain_index([1.0, 1.0, 1.0]) == pytest.approx(1.0)
    assert jain_index([1.0, 0.0, 0.0, 0.0]) == pytest.approx(0.25)
