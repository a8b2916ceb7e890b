"""Hostile load against a real `kakumei serve`: does the server stay responsive and its memory
flat?

Starts `kakumei serve` (no local worker, a throwaway data dir) on a socket bound here, then,
while a process of its own polls /healthz every 50 ms and a thread samples the server's RSS
from /proc:

1. 4 parallel img2img submits of 8 init images of 4096x4096 (146 MB each: over the default
   max_body_bytes, refused 413 before they are read; with a raised limit, read and refused
   from the image headers, over the per-request pixel cap, nothing decoded);
2. 4 parallel img2img submits of as many 4096x4096 images as both the pixel cap and the
   server's max_body_bytes allow (decoded and checked in full, then queued);
3. 3 parallel bodies declaring 500 MB (refused 413 before they are read).

Prints, per phase, the answers, the worst /healthz latency and the server's RSS growth (peak
during the phase, and after it settles), against the targets: /healthz within 1 s, growth
(at the peak) under 300 MB; then one line per phase with both. Run:
`.venv/bin/python benchmarks/hostile_load.py [--max-body-bytes N]` (N: the server's
KAKUMEI_MAX_BODY_BYTES, as an operator who raised it would run it; default: the default).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from kakumei import schemas
from kakumei.config import DEFAULT_MAX_BODY_BYTES
from kakumei.images import encode_image_b64

HEALTH_TARGET_S = 1.0
RSS_TARGET_MB = 300.0


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def _poll_health(url: str, worst: Any, failures: Any, stop: Any) -> None:
    """/healthz every 50 ms until `stop`, the worst latency and the failures kept in shared values."""
    with httpx.Client(timeout=60) as client:
        while not stop.is_set():
            started = time.monotonic()
            try:
                ok = client.get(f"{url}/healthz").status_code == 200
            except httpx.HTTPError:
                ok = False
            failures.value += not ok
            worst.value = max(worst.value, time.monotonic() - started)
            time.sleep(0.05)


class Watch:
    """Polls /healthz (in a process of its own, so that the load this script sends does not
    delay the polling through this process's GIL) and the server's RSS until stopped; keeps the
    worst of both."""

    def __init__(self, url: str, pid: int) -> None:
        self.url, self.pid = url, pid
        self.peak = rss_mb(pid)
        self._worst = multiprocessing.Value("d", 0.0)
        self._failures = multiprocessing.Value("i", 0)
        self._stop = multiprocessing.Event()
        self._poller = multiprocessing.Process(target=_poll_health, args=(url, self._worst, self._failures, self._stop), daemon=True)
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def worst(self) -> float:
        return self._worst.value

    @property
    def failures(self) -> int:
        return self._failures.value

    def _run(self) -> None:
        while not self._done.is_set():
            self.peak = max(self.peak, rss_mb(self.pid))
            time.sleep(0.02)

    def __enter__(self) -> Watch:
        self._poller.start()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._done.set()
        self._poller.join()
        self._thread.join()


def big_image_b64(side: int = 4096) -> str:
    """A photo-like 4096x4096 PNG: smooth gradients with fine noise, several MB as a file."""
    y, x = np.mgrid[0:side, 0:side]
    noise = np.random.default_rng(0).integers(0, 8, (side, side), dtype=np.uint8)
    pixels = np.stack([(x // 16) % 256, (y // 16) % 256, ((x + y) // 32) % 256], axis=-1).astype(np.uint8)
    pixels += noise[..., None]
    buf = Image.fromarray(pixels, "RGB")
    return encode_image_b64(buf)


def submit(url: str, body: bytes) -> str:
    started = time.monotonic()
    response = httpx.post(f"{url}/api/v1/jobs", content=body, headers={"content-type": "application/json"}, timeout=600)
    return f"{response.status_code} in {time.monotonic() - started:.1f}s"


def declared_500mb(url: str) -> str:
    """Declare a 500 MB body and send it as fast as the server takes it."""
    host, port = url.removeprefix("http://").split(":")
    started = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        sock.sendall(
            b"POST /api/v1/jobs HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
            b"Content-Length: 500000000\r\n\r\n"
        )
        chunk = b" " * (1 << 20)
        sent = 0
        try:
            while sent < 500_000_000:
                sock.sendall(chunk)
                sent += len(chunk)
        except OSError:
            pass  # the server answered and closed: the rest was never read
        try:
            status = sock.recv(4096).split(b"\r\n", 1)[0].decode()
        except OSError as exc:
            status = f"connection closed by the server ({exc.__class__.__name__})"
    return f"{status or 'closed'} after sending {sent / 1e6:.0f} MB, {time.monotonic() - started:.1f}s"


def phase(name: str, url: str, pid: int, calls: list[Callable[[], str]]) -> str:
    before = rss_mb(pid)
    with Watch(url, pid) as watch, ThreadPoolExecutor(len(calls)) as pool:
        answers = list(pool.map(lambda call: call(), calls))
    time.sleep(2)
    after = rss_mb(pid)
    print(f"\n{name}")
    for answer in answers:
        print(f"  answer: {answer}")
    health = "ok" if watch.worst <= HEALTH_TARGET_S and not watch.failures else "OVER TARGET"
    print(f"  worst /healthz latency: {watch.worst:.2f}s (target {HEALTH_TARGET_S:.0f}s, {watch.failures} failed) {health}")
    growth = watch.peak - before
    verdict = "ok" if growth < RSS_TARGET_MB else "OVER TARGET"
    print(f"  server RSS: {before:.0f} MB before, peak {watch.peak:.0f} MB (+{growth:.0f}; target < {RSS_TARGET_MB:.0f}) {verdict}, "
          f"{after:.0f} MB after (+{after - before:.0f})")
    return f"/healthz worst {watch.worst:.2f}s {health}; RSS peak +{growth:.0f} MB {verdict}, after +{after - before:.0f} MB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES, help="the server's max_body_bytes")
    max_body_bytes = parser.parse_args().max_body_bytes
    home = Path(tempfile.mkdtemp(prefix="kakumei-hostile-"))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    url = "http://127.0.0.1:%d" % sock.getsockname()[1]
    env = {**os.environ, "KAKUMEI_HOME": str(home), "KAKUMEI_MODEL": "kakumei:tiny", "HF_HUB_OFFLINE": "1",
           "KAKUMEI_MAX_BODY_BYTES": str(max_body_bytes)}
    args = [sys.executable, "-m", "kakumei.cli", "serve", "--fd", str(sock.fileno()), "--no-local-worker"]
    log = (home / "serve.log").open("wb")
    proc = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT, pass_fds=[sock.fileno()])
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"kakumei serve did not start:\n{(home / 'serve.log').read_text()}")
            time.sleep(0.1)
        image = big_image_b64()
        print(f"kakumei serve pid {proc.pid}, max_body_bytes {max_body_bytes:,}; "
              f"one 4096x4096 input is {len(image) / 1e6:.1f} MB of base64")
        request = {"prompt": "hostile", "width": 512, "height": 512, "steps": 2, "denoising_strength": 0.5}
        over = json.dumps({**request, "init_images": [image] * 8}).encode()
        fits = schemas.MAX_REQUEST_INPUT_PIXELS // (4096 * 4096)
        while fits > 1 and len(json.dumps({**request, "init_images": [image] * fits})) > max_body_bytes:
            fits -= 1
        largest = json.dumps({**request, "init_images": [image] * fits}).encode()
        summary = {
            "8 images": phase(f"4 parallel submits of 8 4096x4096 images ({len(over) / 1e6:.0f} MB each)", url, proc.pid,
                              [lambda: submit(url, over)] * 4),
            f"{fits} images": phase(f"4 parallel submits of {fits} 4096x4096 images, the most the pixel cap and max_body_bytes "
                                    f"allow ({len(largest) / 1e6:.0f} MB each)", url, proc.pid, [lambda: submit(url, largest)] * 4),
            "500 MB": phase("3 parallel bodies declaring 500 MB", url, proc.pid, [lambda: declared_500mb(url)] * 3),
        }
        print("\nsummary")
        for label, line in summary.items():
            print(f"  {label:>9}: {line}")
    finally:
        proc.terminate()
        proc.wait(30)
        sock.close()


if __name__ == "__main__":
    main()
