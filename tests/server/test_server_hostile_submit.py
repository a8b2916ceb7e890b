"""Hostile submits over real HTTP, on both databases: a refiner names only a known model,
queue caps hold under concurrent submits, and an anonymous visitor's Idempotency-Key is
theirs alone."""

from __future__ import annotations

import re
import threading
from collections.abc import Callable

import httpx

from tests.server.conftest import LiveServer

SMALL = {"prompt": "a red fox", "width": 64, "height": 64, "steps": 2}


def _client(server: LiveServer, key: str | None = None, addr: str | None = None) -> httpx.Client:
    """A client of `server`, from loopback address `addr` (the server listens on 127.0.0.1;
    the whole 127/8 reaches it, and the server sees the address the client bound)."""
    transport = httpx.HTTPTransport(local_address=addr) if addr else None
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(base_url=server.url, headers=headers, timeout=60, transport=transport)


def _all_at_once(count: int, submit: Callable[[int], httpx.Response]) -> list[httpx.Response]:
    """`count` submits from as many threads, released together."""
    start = threading.Barrier(count)
    results: list[httpx.Response | None] = [None] * count

    def run(i: int) -> None:
        start.wait()
        results[i] = submit(i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert all(r is not None for r in results), "a submit did not answer"
    return [r for r in results if r is not None]


def _assert_capped(responses: list[httpx.Response], cap: int, words: str) -> None:
    statuses = sorted(r.status_code for r in responses)
    assert statuses.count(201) == cap, statuses
    refused = [r for r in responses if r.status_code != 201]
    assert {r.status_code for r in refused} == {429}, [r.text for r in refused]
    for response in refused:
        assert int(response.headers["Retry-After"]) >= 1
        assert words in response.json()["detail"]


# -- refiner_checkpoint is a known model, as model is -----------------------------------------


def test_a_refiner_must_be_a_known_model_and_paths_reveal_nothing(make_server, tmp_path) -> None:
    server = make_server(local_worker=False)
    existing = tmp_path / "a-folder-that-exists"
    existing.mkdir()
    with server.client() as client:
        answers = []
        for ref in (str(existing), str(tmp_path / "missing"), "/etc", "someone/some-model", "../../etc/passwd"):
            response = client.post("/api/v1/jobs", json={**SMALL, "refiner_checkpoint": ref})
            assert response.status_code == 400, (ref, response.text)
            detail = response.json()["detail"]
            assert "refiner_checkpoint" in detail and "kakumei:tiny" in detail, detail
            answers.append(re.sub(r"refiner_checkpoint .*?; known", "refiner_checkpoint REF; known", detail))
        # The same sentence whether the path exists or not: nothing about the server's files.
        assert len(set(answers)) == 1, answers
        huge = client.post("/api/v1/jobs", json={**SMALL, "refiner_checkpoint": "x" * 100_000})
        assert huge.status_code == 400 and len(huge.json()["detail"]) < 300
        known = client.post("/api/v1/jobs", json={**SMALL, "refiner_checkpoint": "kakumei:tiny"})
        assert known.status_code == 201, known.text
        assert client.get("/api/v1/jobs").json()["jobs"][0]["id"] == known.json()["id"]
        # The A1111 API refuses it likewise, before anything is queued.
        a1111 = client.post("/sdapi/v1/txt2img", json={**SMALL, "refiner_checkpoint": "/etc"})
        assert a1111.status_code == 400 and "unknown checkpoint" in a1111.json()["detail"]
        assert len(client.get("/api/v1/jobs").json()["jobs"]) == 1


# -- queue caps: the check and the insert are one step -----------------------------------------


def test_concurrent_submits_from_one_key_stop_exactly_at_the_cap(make_server) -> None:
    server = make_server(local_worker=False, max_queued_jobs=20)
    _, key = server.services.users.add("flooder")
    clients = [_client(server, key) for _ in range(50)]
    try:
        responses = _all_at_once(50, lambda i: clients[i].post("/api/v1/jobs", json={**SMALL, "seed": i}))
    finally:
        for c in clients:
            c.close()
    _assert_capped(responses, 20, "20 jobs queued")
    with _client(server, key) as client:
        assert len(client.get("/api/v1/jobs", params={"limit": 200}).json()["jobs"]) == 20


def test_concurrent_anonymous_submits_stop_exactly_at_the_group_cap(make_server) -> None:
    server = make_server(local_worker=False, max_queued_jobs=1000, anonymous_max_queued=20,
                         free_queued_per_ip=1000)
    addrs = [f"127.0.{2 + i % 10}.1" for i in range(50)]  # ten people on ten networks
    clients = [_client(server, addr=a) for a in addrs]
    try:
        responses = _all_at_once(50, lambda i: clients[i].post("/api/v1/jobs", json={**SMALL, "seed": i}))
    finally:
        for c in clients:
            c.close()
    _assert_capped(responses, 20, "anonymous visitors together have 20 jobs queued")


def test_concurrent_free_accounts_at_one_address_stop_exactly_at_its_cap(make_server) -> None:
    server = make_server(local_worker=False, free_queued_per_ip=20)
    keys = [server.services.users.add(f"sybil{i}")[1] for i in range(50)]
    clients = [_client(server, k) for k in keys]
    try:
        responses = _all_at_once(50, lambda i: clients[i].post("/api/v1/jobs", json={**SMALL, "seed": i}))
    finally:
        for c in clients:
            c.close()
    _assert_capped(responses, 20, "free-tier people on your network 127.0.0.0/24 have 20 jobs queued")


# -- Idempotency-Key belongs to the caller -----------------------------------------------------


def test_anonymous_visitors_do_not_share_idempotency_keys(make_server) -> None:
    server = make_server(local_worker=False)
    key = {"Idempotency-Key": "same-key-for-both"}
    secret = {**SMALL, "prompt": "first visitor's secret"}
    with _client(server, addr="127.0.0.2") as first, _client(server, addr="127.0.0.3") as second:
        mine = first.post("/api/v1/jobs", json=secret, headers=key)
        assert mine.status_code == 201, mine.text
        # Another request under the same key: not a conflict with someone else's job.
        other = second.post("/api/v1/jobs", json={**SMALL, "prompt": "second visitor"}, headers=key)
        assert other.status_code == 201, other.text
        assert "Idempotent-Replayed" not in other.headers and other.json()["id"] != mine.json()["id"]
        # The very same request under the same key: still a job of the second visitor's own.
        copy = second.post("/api/v1/jobs", json=secret, headers={"Idempotency-Key": "guessed"})
        assert copy.status_code == 201
        replayed = first.post("/api/v1/jobs", json=secret, headers={"Idempotency-Key": "guessed"})
        assert "Idempotent-Replayed" not in replayed.headers and replayed.json()["id"] != copy.json()["id"]
        # Each replays their own job and sees only their own.
        again = first.post("/api/v1/jobs", json=secret, headers=key)
        assert again.headers["Idempotent-Replayed"] == "true" and again.json()["id"] == mine.json()["id"]
        again = second.post("/api/v1/jobs", json={**SMALL, "prompt": "second visitor"}, headers=key)
        assert again.headers["Idempotent-Replayed"] == "true" and again.json()["id"] == other.json()["id"]
        assert second.get(f"/api/v1/jobs/{mine.json()['id']}").status_code == 404
        assert {j["id"] for j in second.get("/api/v1/jobs").json()["jobs"]} == {other.json()["id"], copy.json()["id"]}


def test_registered_users_keep_their_key_across_addresses(make_server) -> None:
    server = make_server(local_worker=False)
    _, api_key = server.services.users.add("alice")
    key = {"Idempotency-Key": "retry-me"}
    with _client(server, api_key, "127.0.0.2") as home, _client(server, api_key, "127.0.0.3") as phone:
        first = home.post("/api/v1/jobs", json=SMALL, headers=key)
        retry = phone.post("/api/v1/jobs", json=SMALL, headers=key)
        assert first.status_code == 201 and retry.headers["Idempotent-Replayed"] == "true"
        assert retry.json()["id"] == first.json()["id"]
