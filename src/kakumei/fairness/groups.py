"""Who shares with whom: the fair-share groups of the hierarchy group -> person -> job.

Keys are cheap and so are accounts; networks are not. People without merit (accounts with
no positive balance, guests, keyless callers) are grouped by the network their request came
from, and a group gets what one person gets, shared fairly inside it. A person with merit
(their workers earned a positive balance, an admin gave them a weight, or they are an
admin) stands as a group of their own.

Pure: the store, admission, sign-up limits and the benchmark all name groups through here,
so that a rule counted per network means the same network everywhere.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

# Group keys: "net:<network in CIDR form>" or "user:<user id>".
NETWORK, OWN = "net", "user"


@dataclass(frozen=True)
class GroupPolicy:
    """How wide a network group is. `enabled` False gives every person a group of their own
    (the rule before network groups; the benchmark compares the two)."""

    v4_prefix: int = 24
    v6_prefix: int = 56
    enabled: bool = True


def network_of(addr: str | None, policy: GroupPolicy = GroupPolicy()) -> str | None:
    """The network (CIDR form) an address belongs to, or None for no or an unparsable
    address. IPv4-mapped IPv6 addresses count as the IPv4 address they carry."""
    if not addr:
        return None
    try:
        ip = ipaddress.ip_address(addr.strip())
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    prefix = policy.v4_prefix if ip.version == 4 else policy.v6_prefix
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


def group_key(user_id: int, addr: str | None, *, stands_alone: bool, policy: GroupPolicy = GroupPolicy()) -> str:
    """The group a person's next queued job joins.

    `stands_alone`: the person has merit (see credits.is_free_tier: not free tier). A person
    without merit and without a usable address also stands alone: there is nothing to group
    them by, and a keyless caller always has an address.
    """
    if stands_alone or not policy.enabled:
        return f"{OWN}:{user_id}"
    network = network_of(addr, policy)
    return f"{OWN}:{user_id}" if network is None else f"{NETWORK}:{network}"


def is_network_group(key: str) -> bool:
    return key.startswith(NETWORK + ":")
