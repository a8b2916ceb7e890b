"""The caller's address: the one place that decides it, for admission, bans, timeouts, the
anonymous visitors' scope and every API.

uvicorn runs with `proxy_headers=False`, so the socket peer is what it is. `X-Forwarded-For`
counts only when that peer is one of `trusted_proxies`: then the client is the right-most
address in the header that no trusted proxy added (anything left of it was written by the
client and proves nothing). A forwarded value that is not an IP address is refused with 400:
falling back to the proxy's own address would lump every client behind it together, and a
trusted proxy that forwards garbage is misconfigured, which the operator should hear about.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from functools import lru_cache

from fastapi import HTTPException, Request

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


@lru_cache(maxsize=16)
def _networks(cidrs: tuple[str, ...]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)


def _parse(value: str) -> Address | None:
    try:
        address = ipaddress.ip_address(value.strip())
    except ValueError:
        return None
    # An IPv4 client seen through an IPv6 socket is the same client.
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _trusted(address: Address, networks: Sequence[Network]) -> bool:
    return any(address in network for network in networks)


def forwarded_client(peer: str, forwarded_for: Sequence[str], trusted_proxies: Sequence[str]) -> str:
    """The client's address: `peer` unless it is a trusted proxy, then the right-most
    untrusted address of the `X-Forwarded-For` values (in header order). Raises
    `ValueError` with a sentence when a value it has to read is not an IP address."""
    networks = _networks(tuple(trusted_proxies))
    peer_address = _parse(peer)
    if not networks or peer_address is None or not _trusted(peer_address, networks) or not forwarded_for:
        return str(peer_address) if peer_address is not None else peer
    hops = [hop for value in forwarded_for for hop in value.split(",")]
    client = peer_address
    for hop in reversed(hops):
        address = _parse(hop)
        if address is None:
            raise ValueError(f"X-Forwarded-For holds {hop.strip()!r}, which is not an IP address; "
                             "a proxy must forward the client's address, such as 203.0.113.7 or 2001:db8::7")
        client = address
        if not _trusted(address, networks):
            break
    return str(client)


def client_address(request: Request, trusted_proxies: Sequence[str]) -> str | None:
    """Who is calling, as one normalised address (None when the server cannot tell, as
    in-process test clients); 400 when a trusted proxy forwards something else."""
    if request.client is None:
        return None
    try:
        return forwarded_client(request.client.host, request.headers.getlist("x-forwarded-for"), trusted_proxies)
    except ValueError as exc:
        raise HTTPException(400, str(exc)) from None
