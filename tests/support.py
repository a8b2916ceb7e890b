"""Real processes for tests: `kakumei serve` on a socket the test bound first, other
subprocesses with their output in a log file, and waiting for any of them.

The test binds and listens before the server starts and hands the socket over (`kakumei
serve --fd N`), so no other process can take the port between choosing it and using it, and
a restarted server keeps its address.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import httpx

T = TypeVar("T")


def wait_for(check: Callable[[], T], what: str, seconds: float = 120, interval: float = 0.05) -> T:
    """The first truthy value of `check()`; fails the test after `seconds`."""
    deadline = time.monotonic() + seconds
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(interval)


def wait_done(client: httpx.Client, job_id: str, timeout: float = 120) -> dict:
    """The job as the API shows it once it has finished, however it finished."""
    job: dict = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/api/v1/jobs/{job_id}").json()
        if job["state"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish: {job}")


def listening_socket(host: str = "127.0.0.1") -> socket.socket:
    """A TCP socket bound to a port the kernel chose, already listening: connections made
    before a server takes it over wait in its backlog instead of being refused."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((host, 0))
    sock.listen(128)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{host}:{port}"


def spawn(args: Sequence[str], env: dict[str, str], log: Path, pass_fds: Sequence[int] = ()) -> subprocess.Popen:
    """Start a process with stdout and stderr appended to `log`."""
    with log.open("ab") as out:
        return subprocess.Popen(list(args), env=env, stdout=out, stderr=subprocess.STDOUT, pass_fds=tuple(pass_fds))


def log_text(log: Path) -> str:
    return log.read_text(errors="replace") if log.exists() else ""


def start_serve(sock: socket.socket, options: Sequence[str], env: dict[str, str], log: Path, seconds: float = 120) -> subprocess.Popen:
    """`kakumei serve OPTIONS` on `sock`, once /healthz answers; the test keeps `sock` (a
    restart serves on the same socket) and closes it when done."""
    args = [sys.executable, "-m", "kakumei.cli", "serve", "--fd", str(sock.fileno()), *options]
    proc = spawn(args, env, log, pass_fds=[sock.fileno()])
    wait_until_serving(proc, url_of(sock), log, seconds)
    return proc


def wait_until_serving(proc: subprocess.Popen, url: str, log: Path, seconds: float = 120) -> None:
    """Wait until the server `proc` (however it was started) answers /healthz at `url`; if it
    dies or never answers, kill it and fail with its log."""

    def healthy() -> bool:
        assert proc.poll() is None, log_text(log)
        try:
            return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_for(healthy, "kakumei serve to answer /healthz", seconds, interval=0.1)
    except AssertionError as exc:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        raise AssertionError(f"kakumei serve did not start: {exc}\n{log_text(log)}") from None


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 30) -> None:
    """Ask a process to stop with `sig`; kill it if it has not within `timeout`."""
    if proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextmanager
def serve_without_worker(home: Path, tmp_path: Path, **env: str) -> Iterator[tuple[str, str]]:
    """A real `kakumei serve` on SQLite without a local worker (jobs stay queued) and without
    rate limits unless `env` sets them; yields its URL and its database URL."""
    database = f"sqlite:///{tmp_path / 'serve.db'}"
    environ = {
        **os.environ, "KAKUMEI_HOME": str(home), "KAKUMEI_DEVICE": "cpu",
        "KAKUMEI_KEY_RATE_PER_MINUTE": "0", "KAKUMEI_IP_RATE_PER_MINUTE": "0", **env,
    }
    sock, log = listening_socket(), tmp_path / "serve.log"
    proc = start_serve(sock, ["--database", database, "--model", "kakumei:tiny", "--no-local-worker"], environ, log)
    try:
        yield url_of(sock), database
    finally:
        stop(proc)
        sock.close()


class ServeProcesses:
    """`kakumei serve` processes started one after another, each on its own socket and log
    under `root`, with `env` on top of the test's environment; `close` stops them all."""

    def __init__(self, root: Path, env: dict[str, str]) -> None:
        self.root, self.env = root, env
        self.procs: list[subprocess.Popen] = []
        self.sockets: list[socket.socket] = []

    def start(self, options: Sequence[str], **env: str) -> str:
        """Start one with `options` and `env` added; its URL once it answers."""
        sock = listening_socket()
        log = self.root / f"serve-{len(self.sockets)}.log"
        self.sockets.append(sock)
        self.procs.append(start_serve(sock, options, {**os.environ, **self.env, **env}, log))
        return url_of(sock)

    def close(self) -> None:
        for proc in self.procs:
            stop(proc)
        for sock in self.sockets:
            sock.close()


def sse_events(lines: Iterable[str]) -> Iterator[tuple[int | None, str]]:
    """(id, kind) of each event of a server-sent event stream's lines (id None when it has none)."""
    event_id: int | None = None
    kind: str | None = None
    for line in lines:
        if line.startswith("id: "):
            event_id = int(line[4:])
        elif line.startswith("event: "):
            kind = line[7:]
        elif line == "" and kind is not None:
            yield event_id, kind
            event_id = kind = None
