"""Fixtures: a live server (databases on both backends come from tests/fixtures/db.py).

`live_server` runs the real app under uvicorn in a thread on a socket bound here, with the
session's tiny-model Engine as its local worker, and answers with an httpx client.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from kakumei.config import Settings
from kakumei.server.app import create_app
from tests.support import listening_socket, url_of, wait_for


class LiveServer:
    def __init__(self, app: Any, settings: Settings) -> None:
        self.settings = settings
        self.app = app
        self.sock = sock = listening_socket()
        self.url = url_of(sock)
        # As `kakumei serve`: the app, not uvicorn, reads X-Forwarded-For.
        config = uvicorn.Config(app, log_level="warning", lifespan="on", proxy_headers=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()

        def started() -> bool:
            assert self.thread.is_alive(), "the server thread ended before it started serving"
            return self.server.started

        wait_for(started, "the server to start", seconds=30, interval=0.01)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=60)
        self.sock.close()

    @property
    def services(self) -> Any:
        return self.app.state.services

    def client(self, key: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60)


# Tests of other features submit big or many jobs from one address; the admission tests
# (tests/server/test_server_admission.py) pass the limits they test.
ADMISSION_OFF: dict[str, Any] = {
    "free_max_pixels": 4096 * 4096, "free_max_steps": 1000, "free_max_images": 1000,
    "key_rate_per_minute": 0, "ip_rate_per_minute": 0, "free_users_per_ip": 1000,
}


@pytest.fixture
def make_server(database_url: str, tiny_settings: Settings, engine: Any, tmp_path: Path) -> Iterator[Callable[..., LiveServer]]:
    """Start servers with settings overrides; all are stopped at the end of the test."""
    started: list[LiveServer] = []

    def start(**overrides: Any) -> LiveServer:
        local_worker = overrides.pop("local_worker", True)
        settings = tiny_settings.model_copy(
            update={"home": tmp_path / "home", "database": database_url, "local_worker": local_worker,
                    **ADMISSION_OFF, **overrides}
        )
        server = LiveServer(create_app(settings, engine), settings).__enter__()
        started.append(server)
        return server

    yield start
    for server in reversed(started):
        server.__exit__(None, None, None)


@pytest.fixture
def live_server(make_server: Callable[..., LiveServer]) -> LiveServer:
    return make_server()
