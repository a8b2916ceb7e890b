"""Timeouts fall on the offender, over real HTTP from distinct loopback addresses: a registered
caller's offences count against their account, a keyless caller's against their address, and
a burst that ignores one `Retry-After` is one offence, not one per request. Each runs with the
limits and offences in the database and in Redis (setting `redis_url`)."""

from __future__ import annotations

import time

import httpx
import pytest

SMALL = {"prompt": "a fox", "width": 64, "height": 64, "steps": 2}
LIMITS = {"local_worker": False, "key_rate_per_minute": 60, "key_burst": 1, "ip_rate_per_minute": 60,
          "ip_burst": 1, "offence_threshold": 3, "timeout_seconds": 600, "max_queued_jobs": 100,
          "anonymous_max_queued": 1000, "free_queued_per_ip": 1000}


@pytest.fixture(params=["database", "redis"])
def limits(request: pytest.FixtureRequest) -> dict:
    """The LIMITS, kept where the parameter says."""
    if request.param == "database":
        return LIMITS
    place = request.getfixturevalue("redis_place")
    return {**LIMITS, "redis_url": place.url, "redis_prefix": place.prefix}


def client(server, local: str, key: str | None = None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(base_url=server.url, headers=headers, timeout=30,
                        transport=httpx.HTTPTransport(local_address=local))


def burst(c: httpx.Client, n: int = 8) -> list[httpx.Response]:
    """`n` submits at once, as an impatient client sends them: none waits for Retry-After."""
    return [c.post("/api/v1/jobs", json=SMALL) for _ in range(n)]


def wait_as_told(answers: list[httpx.Response]) -> None:
    told = max(int(a.headers.get("retry-after", "0")) for a in answers)
    time.sleep(told + 0.05)


def test_one_burst_is_one_offence_and_times_out_no_one(make_server, limits: dict) -> None:
    server = make_server(**limits)
    _, alice_key = server.services.users.add("alice")
    with client(server, "127.0.0.6", alice_key) as alice:
        answers = burst(alice)
        assert answers[0].status_code == 201
        assert {a.status_code for a in answers[1:]} == {429}
        wait_as_told(answers)
        # Ignoring one Retry-After, however often, is one offence: below the threshold.
        assert alice.post("/api/v1/jobs", json=SMALL).status_code == 201


def test_a_registered_offender_is_timed_out_alone(make_server, limits: dict) -> None:
    server = make_server(**limits)
    _, alice_key = server.services.users.add("alice")
    _, bob_key = server.services.users.add("bob")
    with client(server, "127.0.0.7", alice_key) as alice, client(server, "127.0.0.7", bob_key) as bob:
        for _ in range(3):  # three bursts, each ignoring the wait it was told: three offences
            answers = burst(alice, 3)
            wait_as_told(answers)
        timed_out = alice.post("/api/v1/jobs", json=SMALL)
        assert timed_out.status_code == 403, timed_out.text
        assert "your account" in timed_out.json()["detail"] and "may submit again" in timed_out.json()["detail"]
        # Another user at the same address is not the offender.
        assert bob.post("/api/v1/jobs", json=SMALL).status_code == 201
        # An admin's pardon names the user.
        _, root_key = server.services.users.add("root", admin=True)
        with client(server, "127.0.0.10", root_key) as root:
            assert root.delete("/api/v1/admin/offences/alice").json() == {"pardoned": True}
        time.sleep(1.05)  # the address's bucket, just used by bob, refills
        assert alice.post("/api/v1/jobs", json=SMALL).status_code == 201
    with client(server, "127.0.0.7") as keyless:
        time.sleep(1.05)  # the address's bucket, shared with bob, refills
        assert keyless.post("/api/v1/jobs", json=SMALL).status_code == 201


def test_a_keyless_offender_times_out_its_address_only(make_server, limits: dict) -> None:
    server = make_server(**limits)
    _, carol_key = server.services.users.add("carol")
    with client(server, "127.0.0.8") as keyless:
        for _ in range(3):
            wait_as_told(burst(keyless, 3))
        timed_out = keyless.post("/api/v1/jobs", json=SMALL)
        assert timed_out.status_code == 403, timed_out.text
        assert "your address" in timed_out.json()["detail"] and "may submit again" in timed_out.json()["detail"]
    with client(server, "127.0.1.9") as elsewhere:  # another network: its own rate bucket
        assert elsewhere.post("/api/v1/jobs", json=SMALL).status_code == 201
    with client(server, "127.0.0.8", carol_key) as carol:
        time.sleep(1.05)  # the network's bucket, shared with the offender, refills
        assert carol.post("/api/v1/jobs", json=SMALL).status_code == 201
