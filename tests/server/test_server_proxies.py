"""Who is calling, from outside: a real `kakumei serve` process and clients bound to distinct
loopback addresses. `X-Forwarded-For` is ignored unless the peer is one of `trusted_proxies`,
and a forwarded address must be an IP address: a banned client cannot hide behind the header.
"""

from __future__ import annotations

import httpx

from kakumei.store.db import Database
from kakumei.store.moderation import Moderation
from tests.support import (
    serve_without_worker,
)

SMALL = {"prompt": "a fox", "width": 64, "height": 64, "steps": 2}


def client(url: str, local: str) -> httpx.Client:
    return httpx.Client(base_url=url, timeout=30, transport=httpx.HTTPTransport(local_address=local))


def ban(database: str, target: str) -> None:
    db = Database(database)
    try:
        Moderation(db).ban("ip", target, "scraping", "test")
    finally:
        db.close()


def test_forwarded_for_is_ignored_without_trusted_proxies(kakumei_home, tmp_path) -> None:
    with serve_without_worker(kakumei_home, tmp_path) as (url, database):
        ban(database, "127.0.0.1")
        with client(url, "127.0.0.1") as banned:
            for forwarded in ("not-an-ip", "198.51.100.1", "::1"):
                answer = banned.post("/api/v1/jobs", json=SMALL, headers={"X-Forwarded-For": forwarded})
                assert answer.status_code == 403, (forwarded, answer.text)
                assert "your address is banned" in answer.json()["detail"]
        with client(url, "127.0.0.2") as other:
            assert other.post("/api/v1/jobs", json=SMALL).status_code == 201


def test_a_trusted_proxy_forwards_the_right_most_untrusted_address(kakumei_home, tmp_path) -> None:
    with serve_without_worker(kakumei_home, tmp_path, KAKUMEI_TRUSTED_PROXIES="127.0.0.3/32, 127.0.0.5") as (url, database):
        ban(database, "198.51.100.7")
        ban(database, "127.0.0.4")
        with client(url, "127.0.0.3") as proxy:
            def submit(forwarded: str) -> httpx.Response:
                return proxy.post("/api/v1/jobs", json=SMALL, headers={"X-Forwarded-For": forwarded})

            assert submit("198.51.100.7").status_code == 403
            # A client may write anything left of what the proxies appended: the right-most
            # address the trusted proxies did not add is the client.
            assert submit("203.0.113.9, 198.51.100.7").status_code == 403
            assert submit("198.51.100.7, 127.0.0.5").status_code == 403
            assert submit("198.51.100.7, 203.0.113.9").status_code == 201
            for forwarded in ("not-an-ip", "198.51.100.7, not-an-ip", "198.51.100.300"):
                refused = submit(forwarded)
                assert refused.status_code == 400, (forwarded, refused.text)
                assert "X-Forwarded-For" in refused.json()["detail"]
            # Without the header the proxy itself is the caller.
            assert proxy.post("/api/v1/jobs", json=SMALL).status_code == 201
            # Anonymous visitors behind the proxy are told apart by their forwarded address.
            mine = submit("192.0.2.10").json()["id"]
            listed = proxy.get("/api/v1/jobs", headers={"X-Forwarded-For": "192.0.2.10"}).json()
            theirs = proxy.get("/api/v1/jobs", headers={"X-Forwarded-For": "192.0.2.11"}).json()
            assert mine in str(listed) and mine not in str(theirs)
            assert proxy.get(f"/api/v1/jobs/{mine}", headers={"X-Forwarded-For": "192.0.2.11"}).status_code == 404
        # An untrusted peer's header is ignored: its own (banned) address counts.
        with client(url, "127.0.0.4") as untrusted:
            answer = untrusted.post("/api/v1/jobs", json=SMALL, headers={"X-Forwarded-For": "203.0.113.5"})
            assert answer.status_code == 403 and "your address is banned" in answer.json()["detail"]
