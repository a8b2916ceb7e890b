"""Hostile submits over real HTTP, on both databases: a refiner names only a known model,
queue caps hold under concurrent submits, and an anonymous visitor's Idempotency-Key is
theirs alone."""

from __future__ import annotations

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
            answers.append(detail.replace(repr(ref), "REF"))
        # The same sentence whether the path exists or not: nothing about the server's files.
        assert len(set(answers)) == 1, answers
        known = client.post("/api/v1/jobs", json={**SMALL, "refiner_checkpoint": "kakumei:tiny"})
        assert known.status_code == 201, known.text
        assert client.get("/api/v1/jobs").json()["jobs"][0]["id"] == known.json()["id"]
        # The A1111 API refuses it likewise, before anything is queued.
        a1111 = client.post("/sdapi/v1/txt2img", json={**SMALL, "refiner_checkpoint": "/etc"})
        assert a1111.status_code == 400 and "unknown checkpoint" in a1111.json()["detail"]
        assert len(client.get("/api/v1/jobs").json()["jobs"]) == 1
