"""The client address rule on its own: the peer unless it is a trusted proxy, then the
right-most untrusted forwarded address, which must be an IP address."""

from __future__ import annotations

import pytest

from kakumei.config import Settings, load_settings
from kakumei.errors import ConfigError
from kakumei.server.addresses import forwarded_client

PROXIES = ["10.0.0.0/8", "2001:db8::/32"]


@pytest.mark.parametrize(("peer", "forwarded", "client"), [
    ("203.0.113.1", ["198.51.100.1"], "203.0.113.1"),  # untrusted peer: the header is ignored
    ("10.0.0.2", [], "10.0.0.2"),  # a proxy without a header is the caller
    ("10.0.0.2", ["198.51.100.1"], "198.51.100.1"),
    ("10.0.0.2", ["1.2.3.4, 198.51.100.1"], "198.51.100.1"),  # the client wrote the left part
    ("10.0.0.2", ["198.51.100.1, 10.0.0.3"], "198.51.100.1"),  # two proxies in a row
    ("10.0.0.2", ["198.51.100.1", "10.0.0.3"], "198.51.100.1"),  # repeated headers, in order
    ("10.0.0.2", ["10.0.0.4, 10.0.0.3"], "10.0.0.4"),  # all trusted: the first
    ("10.0.0.2", [" 2001:DB9::1 "], "2001:db9::1"),  # normalised
    ("10.0.0.2", ["::ffff:198.51.100.1"], "198.51.100.1"),
    ("::ffff:10.0.0.2", ["198.51.100.1"], "198.51.100.1"),
])
def test_the_client_is_the_right_most_untrusted_address(peer: str, forwarded: list[str], client: str) -> None:
    assert forwarded_client(peer, forwarded, PROXIES) == client


def test_without_trusted_proxies_the_header_means_nothing() -> None:
    assert forwarded_client("127.0.0.1", ["not-an-ip"], []) == "127.0.0.1"


@pytest.mark.parametrize("forwarded", ["not-an-ip", "198.51.100.1, not-an-ip", "", "198.51.100.1:443", "1.2.3.4.5"])
def test_a_forwarded_value_that_is_not_an_ip_address_is_refused(forwarded: str) -> None:
    with pytest.raises(ValueError, match="X-Forwarded-For .* not an IP address"):
        forwarded_client("10.0.0.2", [forwarded], PROXIES)


def test_trusted_proxies_are_checked_and_read_from_the_environment() -> None:
    assert Settings(trusted_proxies=["10.1.2.3/8"]).trusted_proxies == ["10.0.0.0/8"]
    env = {"KAKUMEI_HOME": "/nonexistent", "KAKUMEI_TRUSTED_PROXIES": "10.0.0.1, 2001:db8::/32 192.0.2.0/24"}
    assert load_settings(environ=env).trusted_proxies == ["10.0.0.1/32", "2001:db8::/32", "192.0.2.0/24"]
    with pytest.raises(ConfigError, match="trusted_proxies entry 'proxy.local' is not an IP address"):
        load_settings(environ={"KAKUMEI_HOME": "/nonexistent", "KAKUMEI_TRUSTED_PROXIES": "proxy.local"})
