"""Merit: a user's weight (their share of the machine) from their credit balance.

The rule, as README states it: registered users start at weight 1 and anonymous visitors
share one weight of 0.5 between them. Credits are earned at one per compute unit your
workers deliver (and by admin grants) and spent at one per unit you generate. While your
balance b is positive your weight is 1 + 4 * b / (b + 100): a worker that keeps running
raises it towards 5, generating brings it back towards 1, and it never drops below 1 for
taking, so nobody is refused for having no credit. An admin-set weight replaces the rule.

Pure arithmetic so that the store, the server and the benchmark share it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

# One credit per compute unit (see cost.py): earning and spending use the same unit, so a
# contributor who runs as much as they generate stays at zero.
CREDITS_PER_UNIT = 1.0


@dataclass(frozen=True)
class MeritPolicy:
    """The figures of the weight rule; the server builds one from its settings."""

    registered_weight: float = 1.0
    anonymous_weight: float = 0.5
    # Most extra weight a balance can buy, and the balance that buys half of it: a
    # saturating curve, so hoarding credits gains less and less.
    max_bonus: float = 4.0
    half_balance: float = 100.0


def merit_weight(
    policy: MeritPolicy, *, is_anonymous: bool, balance: float, override: float | None = None
) -> float:
    """The weight the scheduler divides a user's costs by."""
    if override is not None:
        return override
    if is_anonymous:
        return policy.anonymous_weight
    positive = max(0.0, balance)
    return policy.registered_weight * (1.0 + policy.max_bonus * positive / (positive + policy.half_balance))


def weight_source(*, is_anonymous: bool, override: float | None) -> str:
    """Why a user has their weight: "admin", "anonymous" or "merit"."""
    if override is not None:
        return "admin"
    return "anonymous" if is_anonymous else "merit"


def is_free_tier(*, is_anonymous: bool, balance: float, override: float | None, is_admin: bool = False) -> bool:
    """Users who give nothing back get the free-tier caps: anonymous visitors, and registered
    users without a positive balance. An admin weight, or being an admin, takes a user out of
    it, the shared anonymous user included: the operator chose that user's standing.

    The one definition: admission applies it to the caller and store/quotas.py to the users
    counted per address."""
    if is_admin or override is not None:
        return False
    return is_anonymous or balance <= 0


def current_share(own_weight: float, backlogged_weights: Iterable[float]) -> float:
    """Fraction of the machine a user gets while backlogged beside `backlogged_weights`
    (the other users with queued work)."""
    total = own_weight + sum(backlogged_weights)
    return 1.0 if total <= 0 else own_weight / total
