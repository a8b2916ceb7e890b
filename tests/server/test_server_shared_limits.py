"""Rate limits, offences and timeouts in Redis (setting `redis_url`), from outside: real
`kakumei serve` processes over real HTTP, sharing nothing but Redis (each its own SQLite
database), or one PostgreSQL database too. A burst allowed once is allowed once across the
servers, and an offender timed out on one is timed out on the other.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from kakumei.store.db import Database
from kakumei.store.migrate import migrate
from kakumei.store.users import UserStore
from tests.support import ServeProcesses

JOB = {"prompt": "a lighthouse", "width": 64, "height": 64, "steps": 2}
BURST = 4
ENV = {
    "KAKUMEI_DEVICE": "cpu",
    "HF_HUB_OFFLINE": "1",
    "KAKUMEI_MAX_QUEUED_JOBS": "1000",
    "KAKUMEI_ANONYMOUS_MAX_QUEUED": "1000",
    "KAKUMEI_FREE_QUEUED_PER_IP": "1000",
    "KAKUMEI_FREE_USERS_PER_IP": "1000",
    "KAKUMEI_FREE_BUSY_QUEUE": "1000",
    # Refilled too slowly for a test's quick submits to refill: one token in two minutes.
    "KAKUMEI_KEY_RATE_PER_MINUTE": "0.5",
    "KAKUMEI_KEY_BURST": str(BURST),
    "KAKUMEI_IP_RATE_PER_MINUTE": "0.5",
    "KAKUMEI_IP_BURST": str(BURST),
    "KAKUMEI_OFFENCE_THRESHOLD": "2",
    "KAKUMEI_TIMEOUT_SECONDS": "600",
}


@pytest.fixture
def servers(redis_place, kakumei_home: Path, tmp_path: Path) -> Iterator[ServeProcesses]:
    """Servers without local workers, sharing the test's Redis."""
    env = {**ENV, "KAKUMEI_HOME": str(kakumei_home), "KAKUMEI_REDIS_URL": redis_place.url,
           "KAKUMEI_REDIS_PREFIX": redis_place.prefix}
    running = ServeProcesses(tmp_path, env)
    try:
        yield running
    finally:
        running.close()


def serve(servers: ServeProcesses, database: str) -> str:
    return servers.start(["--database", database, "--model", "kakumei:tiny", "--no-local-worker"])


def submit(url: str, headers: dict[str, str] | None = None, local: str = "127.0.0.1") -> httpx.Response:
    with httpx.Client(transport=httpx.HTTPTransport(local_address=local), timeout=30) as client:
        return client.post(f"{url}/api/v1/jobs", json=JOB, headers=headers or {})


def test_an_addresss_burst_and_its_timeout_hold_across_servers_sharing_only_redis(
    servers: ServeProcesses, redis_place, tmp_path: Path
) -> None:
    # Two SQLite databases: without Redis each server would allow the burst.
    urls = [serve(servers, f"sqlite:///{tmp_path / f'kakumei-{n}.db'}") for n in range(2)]
    here = "127.0.0.21"
    codes = [submit(urls[n % 2], local=here).status_code for n in range(BURST + 4)]
    assert codes.count(201) == BURST and codes[BURST:] == [429] * 4, codes
    # The submits past the burst ignored the wait the first refusal named: one offence. The
    # next refusal names a new wait; ignoring it on the other server is the second, the
    # threshold: the address is timed out on both servers.
    client = redis.Redis.from_url(redis_place.url, decode_responses=True)
    for told in client.scan_iter(match=f"{redis_place.prefix}told:*"):
        client.hset(told, "until", "0")  # as if the caller had waited as told (2 minutes)
    assert submit(urls[0], local=here).status_code == 429  # told again: a new wait
    assert submit(urls[1], local=here).status_code == 429  # ignored: offence 2, a timeout
    for url in urls:
        refused = submit(url, local=here)
        assert refused.status_code == 403 and "your address" in refused.json()["detail"], refused.text
    assert client.hget(f"{redis_place.prefix}offence:ip:{here}", "offences") == "2"
    # Another address (another network) is nobody's offender, on either server.
    assert submit(urls[1], local="127.0.1.22").status_code == 201
    client.close()


@pytest.mark.postgres
def test_one_keys_burst_holds_across_servers_on_one_database_with_redis(
    servers: ServeProcesses, redis_place, postgres_url: str
) -> None:
    db = Database(postgres_url)
    migrate(db)
    _, key = UserStore(db).add("bob")
    bob = {"Authorization": f"Bearer {key}"}
    urls = [serve(servers, postgres_url) for _ in range(2)]
    codes = [submit(urls[n % 2], bob, local="127.0.0.23").status_code for n in range(BURST + 4)]
    assert codes.count(201) == BURST and codes[BURST:] == [429] * 4, codes
    # Counted in Redis, not in the database's buckets.
    with db.transaction(write=False) as tx:
        assert tx.scalar("SELECT count(*) AS n FROM rate_buckets") == 0
    client = redis.Redis.from_url(redis_place.url)
    assert client.exists(f"{redis_place.prefix}bucket:key:user:{UserStore(db).by_key(key).id}")
    client.close()
    db.close()
