"""`request_threads` bounds a server's threads serving requests, and with them its database
connections: servers sharing one PostgreSQL stay under its max_connections."""

from __future__ import annotations

import threading

# The server's own threads beside the request pool (startup, the event listener, a spare).
OWN_THREADS = 4


def test_many_concurrent_requests_hold_few_connections(make_server) -> None:
    server = make_server(local_worker=False, request_threads=2)
    start = threading.Barrier(24)
    failures: list[int] = []

    def hammer() -> None:
        with server.client() as client:
            start.wait()
            for _ in range(15):
                reply = client.get("/healthz")
                if reply.status_code != 200:
                    failures.append(reply.status_code)

    threads = [threading.Thread(target=hammer) for _ in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    assert server.services.db.open_connections() <= 2 + OWN_THREADS
