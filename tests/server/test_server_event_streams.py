"""Open event streams per user, over real HTTP: one more than `max_event_streams_per_user` is a
429 with a sentence; closing one frees its place; others (and anonymous visitors at another
address) keep theirs."""

from __future__ import annotations

from contextlib import ExitStack

import httpx

from tests.support import wait_for

SMALL = {"prompt": "a lighthouse", "width": 64, "height": 64, "steps": 2}


def client(server, local: str, key: str | None = None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(base_url=server.url, headers=headers, timeout=30,
                        transport=httpx.HTTPTransport(local_address=local))


def open_stream(stack: ExitStack, c: httpx.Client, url: str) -> httpx.Response:
    return stack.enter_context(c.stream("GET", url))


def test_streams_per_user_are_limited_and_given_back(make_server) -> None:
    server = make_server(local_worker=False, max_event_streams_per_user=3)
    _, alice_key = server.services.users.add("alice")
    _, bob_key = server.services.users.add("bob")
    with client(server, "127.0.0.12", alice_key) as alice, client(server, "127.0.0.12", bob_key) as bob:
        events = alice.post("/api/v1/jobs", json=SMALL).json()["events_url"]
        bobs = bob.post("/api/v1/jobs", json=SMALL).json()["events_url"]
        with ExitStack() as stack:
            opened = [open_stream(stack, alice, events) for _ in range(3)]
            assert [r.status_code for r in opened] == [200, 200, 200]
            with alice.stream("GET", events) as refused:
                assert refused.status_code == 429  # (a 200 would stream forever: no read before)
                refused.read()
                detail = refused.json()["detail"]
                assert "3 event streams" in detail and "close one" in detail
            # Another user at the same address has places of their own.
            assert open_stream(stack, bob, bobs).status_code == 200
            opened[0].close()

            def reopened() -> bool:
                with alice.stream("GET", events) as again:
                    return again.status_code == 200

            wait_for(reopened, "a closed stream to give its place back", seconds=10, interval=0.1)


def test_anonymous_streams_are_counted_per_address(make_server) -> None:
    server = make_server(local_worker=False, max_event_streams_per_user=2)
    with client(server, "127.0.0.13") as here, client(server, "127.0.0.14") as there:
        mine = here.post("/api/v1/jobs", json=SMALL).json()["events_url"]
        theirs = there.post("/api/v1/jobs", json=SMALL).json()["events_url"]
        with ExitStack() as stack:
            assert [open_stream(stack, here, mine).status_code for _ in range(2)] == [200, 200]
            with here.stream("GET", mine) as refused:
                assert refused.status_code == 429
            assert [open_stream(stack, there, theirs).status_code for _ in range(2)] == [200, 200]
