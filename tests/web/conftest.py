"""Fixtures for the web UI tests: real `kakumei serve` processes with the tiny model on
SQLite, and headless Chromium (Debian's package) driven by Playwright.

A missing Chromium is an error, never a skip: CI installs it (scripts/test.sh).
"""

from __future__ import annotations

import os
import socket
import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import listening_socket, start_serve, stop, url_of
from tests.web.pages import wait_ready

CHROMIUM = Path(os.environ.get("KAKUMEI_TEST_CHROMIUM", "/usr/bin/chromium"))
# Quiet, offline Chromium: no sandbox (CI runs as root), no GPU, no calls home.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
# Generous: a loaded CI machine may take a while to run even the tiny model.
WAIT_MS = 60_000


@dataclass
class Server:
    url: str
    database_url: str
    home: Path
    process: subprocess.Popen
    log: Path
    sock: socket.socket

    def client(self, key: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60)

    def add_user(self) -> str:
        """A new user's API key (a fresh user per test, so tests never share a queue)."""
        from kakumei.store.db import Database
        from kakumei.store.users import UserStore

        db = Database(self.database_url)
        try:
            _, key = UserStore(db).add(f"user-{uuid.uuid4().hex[:8]}")
        finally:
            db.close()
        return key


def start_server(home: Path, folder: Path, *, local_worker: bool, allow_anonymous: bool, signup: str = "off") -> Server:
    folder.mkdir(parents=True, exist_ok=True)
    sock, log = listening_socket(), folder / "server.log"
    database_url = f"sqlite:///{folder / 'kakumei.db'}"
    env = {
        **os.environ,
        "KAKUMEI_HOME": str(home),
        "KAKUMEI_DEVICE": "cpu",
        "KAKUMEI_ALLOW_ANONYMOUS": "true" if allow_anonymous else "false",
        "KAKUMEI_SIGNUP": signup,
        # Every page submits from 127.0.0.1 (and takes a guest key there); rate limits are
        # tested in tests/server.
        "KAKUMEI_IP_RATE_PER_MINUTE": "0",
        "KAKUMEI_KEY_RATE_PER_MINUTE": "0",
        "KAKUMEI_GUESTS_PER_NETWORK_PER_HOUR": "10000",
        "KAKUMEI_SIGNUPS_PER_NETWORK_PER_HOUR": "10000",
        "KAKUMEI_FAILED_SIGN_INS_PER_NETWORK_PER_HOUR": "10000",
    }
    options = ["--database", database_url, "--model", "kakumei:tiny"]
    if not local_worker:
        options.append("--no-local-worker")
    try:
        process = start_serve(sock, options, env, log)
    except BaseException:
        sock.close()
        raise
    return Server(url_of(sock), database_url, home, process, log, sock)


def stop_server(server: Server) -> None:
    stop(server.process)
    server.sock.close()


@pytest.fixture(scope="session")
def web_server(kakumei_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """`kakumei serve` with its local worker; anonymous visitors welcome, anyone may sign up."""
    server = start_server(kakumei_home, tmp_path_factory.mktemp("web-server"), local_worker=True,
                          allow_anonymous=True, signup="open")
    yield server
    stop_server(server)


@pytest.fixture(scope="session")
def keyed_server(kakumei_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """`kakumei serve --no-local-worker` that needs an API key (so no guests, and no sign-up):
    jobs wait until a test runs them."""
    server = start_server(kakumei_home, tmp_path_factory.mktemp("keyed-server"), local_worker=False, allow_anonymous=False)
    yield server
    stop_server(server)


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    if not CHROMIUM.is_file():
        pytest.fail(
            f"Chromium is missing at {CHROMIUM}: install Debian's 'chromium' package "
            "(scripts/test.sh does) or point KAKUMEI_TEST_CHROMIUM at a Chromium binary"
        )
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=WAIT_MS)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def open_page(browser: Any) -> Iterator[Callable[..., Any]]:
    """Open the UI of a server in a fresh browser context (empty localStorage).

    At the end, the test fails if the page threw a JavaScript error or asked for anything
    outside its own server (the UI must work offline).
    """
    contexts: list[Any] = []
    page_errors: list[str] = []
    outside: list[str] = []

    def open_(server: Server, setup: Callable[[Any], None] | None = None, **context_args: Any) -> Any:
        context = browser.new_context(**context_args)
        context.set_default_timeout(WAIT_MS)
        contexts.append(context)
        if setup is not None:
            setup(context)
        page = context.new_page()
        page.on("pageerror", lambda exc: page_errors.append(str(exc)))

        def check_origin(request: Any) -> None:
            if not request.url.startswith((server.url, "data:", "blob:")):
                outside.append(request.url)

        page.on("request", check_origin)
        page.goto(server.url + "/")
        wait_ready(page)
        return page

    yield open_
    for context in contexts:
        context.close()
    assert not page_errors, page_errors
    assert not outside, f"the page reached outside its server: {outside}"


@pytest.fixture
def screenshot() -> Callable[[Any, str], Path]:
    """Keep a screenshot of a page in test-artifacts/ (git-ignored) for people to look at."""

    def take(page: Any, name: str) -> Path:
        ARTIFACTS.mkdir(exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        assert path.stat().st_size > 0
        return path

    return take
