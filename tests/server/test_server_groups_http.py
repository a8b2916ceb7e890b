"""Fair share among people, from outside: a real `kakumei serve` process and clients bound to
distinct loopback addresses. Keyless callers are people of their own address and see only
their own jobs; a network group's caps hold however many keys and addresses it uses; and
`/api/v1/me` says whom a caller shares with."""

from __future__ import annotations

import threading

import httpx

from kakumei.store.db import Database
from kakumei.store.users import UserStore
from tests.support import (
    serve_without_worker,
)

SMALL = {"prompt": "a fox", "width": 64, "height": 64, "steps": 2}


def client(url: str, local: str, key: str | None = None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(base_url=url, timeout=60, headers=headers, transport=httpx.HTTPTransport(local_address=local))


def keyless_rows(database: str) -> int:
    db = Database(database)
    try:
        with db.transaction(write=False) as tx:
            return int(tx.scalar("SELECT COUNT(*) AS n FROM users WHERE keyless_addr IS NOT NULL") or 0)
    finally:
        db.close()


def test_keyless_callers_at_two_addresses_do_not_see_each_other(kakumei_home, tmp_path) -> None:
    with serve_without_worker(kakumei_home, tmp_path) as (url, database):
        with client(url, "127.0.1.2") as first, client(url, "127.0.1.3") as second, client(url, "127.0.2.9") as idle:
            # reading from an address that never submitted sees nothing and makes no row
            assert idle.get("/api/v1/jobs").json()["jobs"] == []
            assert idle.get("/api/v1/me").status_code == 200
            assert keyless_rows(database) == 0
            mine = first.post("/api/v1/jobs", json={**SMALL, "prompt": "first's secret"}).json()
            theirs = second.post("/api/v1/jobs", json=SMALL).json()
            assert keyless_rows(database) == 2  # one person per address
            assert [j["id"] for j in first.get("/api/v1/jobs").json()["jobs"]] == [mine["id"]]
            assert [j["id"] for j in second.get("/api/v1/jobs").json()["jobs"]] == [theirs["id"]]
            assert second.get(f"/api/v1/jobs/{mine['id']}").status_code == 404
            assert second.delete(f"/api/v1/jobs/{mine['id']}").status_code == 404
            assert idle.get(f"/api/v1/jobs/{mine['id']}").status_code == 404
            assert idle.get("/api/v1/jobs").json()["jobs"] == []
            # the two are people of one network group
            group = first.get("/api/v1/me").json()["group"]
            assert group == {
                "kind": "network", "network": "127.0.1.0/24", "others": 1,
                "sentence": "You share this server's free time with 1 other person on your network 127.0.1.0/24.",
            }
            assert idle.get("/api/v1/me").json()["group"]["others"] == 0
            assert keyless_rows(database) == 2


def test_a_network_groups_caps_hold_however_many_keys_it_has(kakumei_home, tmp_path) -> None:
    env = {"KAKUMEI_FREE_QUEUED_PER_IP": "5", "KAKUMEI_FREE_USERS_PER_IP": "100"}
    with serve_without_worker(kakumei_home, tmp_path, **env) as (url, database):
        db = Database(database)
        try:
            users = UserStore(db)
            keys = [users.add(f"sybil{i}")[1] for i in range(12)]
            outsider = users.add("outsider")[1]
        finally:
            db.close()
        clients = [client(url, f"127.0.5.{2 + i}", key) for i, key in enumerate(keys)]
        answers: list[httpx.Response | None] = [None] * len(clients)
        start = threading.Barrier(len(clients))

        def submit(i: int) -> None:
            start.wait()
            answers[i] = clients[i].post("/api/v1/jobs", json={**SMALL, "seed": i})

        threads = [threading.Thread(target=submit, args=(i,)) for i in range(len(clients))]
        try:
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=120)
            statuses = sorted(a.status_code for a in answers if a is not None)
            assert len(statuses) == 12 and statuses.count(201) == 5, statuses
            refused = [a for a in answers if a is not None and a.status_code != 201]
            assert all("free-tier people on your network 127.0.5.0/24" in a.json()["detail"] for a in refused)
            assert all(int(a.headers["Retry-After"]) >= 1 for a in refused)
            # another network's free tier is its own
            with client(url, "127.0.6.2", outsider) as other:
                assert other.post("/api/v1/jobs", json=SMALL).status_code == 201
                assert other.get("/api/v1/me").json()["group"]["network"] == "127.0.6.0/24"
            me = clients[0].get("/api/v1/me").json()
            assert me["group"]["kind"] == "network" and me["group"]["others"] >= 4
        finally:
            for c in clients:
                c.close()
