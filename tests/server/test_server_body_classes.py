"""Which routes may take big bodies, over real HTTP: only those that carry images (submits,
PNG info, a worker's finished images) accept up to max_body_bytes; every other route answers
413 past a mebibyte before reading the body, so that it cannot be used to keep the event loop
parsing JSON. The big bodies themselves are read and parsed within a byte budget."""

from __future__ import annotations

import json
import socket
import threading
import time
from typing import Any
from urllib.parse import urlsplit

import pytest

from imagehelpers import noise_b64
from kakumei.server import bodies
from kakumei.server.limits import SMALL_BODY_BYTES

SMALL = {"prompt": "a red fox in snow", "width": 64, "height": 64, "steps": 2, "seed": 42}
TWO_MIB = 2 * 1024 * 1024


def _status_after_head(url: str, path: str, length: int) -> tuple[int, str]:
    """Declare `length` bytes and send none: only an answer that does not wait for the body
    comes back before the socket times out."""
    parts = urlsplit(url)
    head = f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    with socket.create_connection((parts.hostname, parts.port), timeout=15) as sock:
        sock.sendall(head.encode())
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        while True:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            data += chunk
    status = int(data.split(b" ", 2)[1])
    return status, data.partition(b"\r\n\r\n")[2].decode()


SMALL_ROUTES = [
    "/api/v1/me/terms",
    "/api/v1/admin/bans",
    "/api/v1/admin/users/bob/grant",
    "/api/v1/worker/claim",
    "/api/v1/worker/jobs/abc/heartbeat",
    "/api/v1/worker/jobs/abc/fail",
    "/sdapi/v1/options",
    "/api/v1/accounts",
    "/v1/images/generations",
]


@pytest.mark.parametrize("path", SMALL_ROUTES)
def test_routes_without_images_refuse_two_mebibytes_before_reading(make_server, path: str) -> None:
    server = make_server(local_worker=False)
    status, body = _status_after_head(server.url, path, TWO_MIB)
    assert status == 413, (path, body)
    assert f"{SMALL_BODY_BYTES:,} bytes" in body


def test_routes_without_images_refuse_a_long_chunked_body(make_server) -> None:
    server = make_server(local_worker=False)
    _, key = server.services.users.add("root", admin=True)
    piece = b" " * 300_000
    chunks = [b'{"kind": "user", "target": "bob", "reason": "', *([piece] * 5), b'"}']
    with server.client(key) as admin:
        reply = admin.post("/api/v1/admin/bans", content=iter(chunks), headers={"content-type": "application/json"})
    assert reply.status_code == 413, reply.text


@pytest.mark.parametrize("path", ["/api/v1/jobs", "/sdapi/v1/img2img", "/sdapi/v1/png-info", "/api/v1/worker/jobs/abc/complete"])
def test_image_routes_wait_for_a_body_over_a_mebibyte(make_server, path: str) -> None:
    # Not refused from the head: the socket times out waiting for an answer, or the answer
    # is a refusal that is not about the size (the worker route asks for its key first).
    server = make_server(local_worker=False)
    parts = urlsplit(server.url)
    head = f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: {TWO_MIB}\r\n\r\n"
    with socket.create_connection((parts.hostname, parts.port), timeout=3) as sock:
        sock.sendall(head.encode())
        try:
            data = sock.recv(65536)
        except TimeoutError:
            data = b""
    assert b" 413 " not in data.split(b"\r\n", 1)[0], data[:200]


def test_image_routes_serve_bodies_over_a_mebibyte(make_server) -> None:
    server = make_server(local_worker=False)
    image = noise_b64(1024, 3)  # noise does not compress: about 4 MB of base64
    assert len(image) > TWO_MIB
    body = {**SMALL, "init_images": [image], "denoising_strength": 0.5}
    with server.client() as client:
        assert client.post("/api/v1/jobs", json=body).status_code == 201
        info = client.post("/sdapi/v1/png-info", json={"image": image})
        assert info.status_code == 200, info.text


def _on_event_loop() -> bool:
    import asyncio

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def test_png_info_and_worker_reports_are_parsed_off_the_event_loop(make_server, monkeypatch) -> None:
    server = make_server(local_worker=False)
    user, _ = server.services.users.add("volunteer")
    _, key = server.services.workers.add(user.id, "gpu-1")
    seen: list[tuple[str, bool]] = []
    real = bodies.validated

    def recording(raw: Any, model: Any) -> Any:
        seen.append((model.__name__, _on_event_loop()))
        return real(raw, model)

    monkeypatch.setattr(bodies, "validated", recording)
    with server.client() as client:
        assert client.post("/sdapi/v1/png-info", json={"image": noise_b64(64, 1)}).status_code == 200
    with server.client(key) as worker:
        reply = worker.post("/api/v1/worker/jobs/abc/complete", json={"lease_id": "x", "images": []})
        assert reply.status_code == 409, reply.text  # read and parsed, then refused: not its lease
    assert seen == [("PngInfoRequest", False), ("ImagesReport", False)]


def test_a_worker_report_is_not_read_before_the_key_is_checked(make_server, monkeypatch) -> None:
    server = make_server(local_worker=False)
    seen: list[str] = []
    real = bodies.validated
    monkeypatch.setattr(bodies, "validated", lambda raw, model: seen.append(model.__name__) or real(raw, model))
    with server.client() as client:
        reply = client.post("/api/v1/worker/jobs/abc/complete", json={"lease_id": "x", "images": []})
    assert reply.status_code == 401, reply.text
    assert seen == []


def _send_slowly(url: str, path: str, body: bytes, first: int, go_on: threading.Event, result: dict[str, Any]) -> None:
    parts = urlsplit(url)
    head = f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    with socket.create_connection((parts.hostname, parts.port), timeout=60) as sock:
        sock.sendall(head.encode() + body[:first])
        go_on.wait(60)
        sock.sendall(body[first:])
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    result["status"] = int(data.split(b" ", 2)[1])


def test_big_bodies_are_read_within_the_byte_budget(make_server) -> None:
    # Two bodies of 60% of max_body_bytes each: the second is not read while the first one
    # holds its share of the budget (its sender still sending), and is served after it.
    image = noise_b64(640, 5)  # about 1.6 MB of base64: over the small-body limit
    body = json.dumps({**SMALL, "init_images": [image], "denoising_strength": 0.5}).encode()
    server = make_server(local_worker=False, max_body_bytes=int(len(body) / 0.6))
    budget = server.app.state.body_budget
    first_go, second_go = threading.Event(), threading.Event()
    first: dict[str, Any] = {}
    second: dict[str, Any] = {}
    a = threading.Thread(target=_send_slowly, args=(server.url, "/api/v1/jobs", body, 1000, first_go, first))
    a.start()
    deadline = time.monotonic() + 30
    while budget.used == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert budget.used == len(body)
    second_go.set()
    b = threading.Thread(target=_send_slowly, args=(server.url, "/api/v1/jobs", body, len(body), second_go, second))
    b.start()
    while budget.waiting == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert budget.waiting == 1 and budget.used == len(body)
    # Small bodies do not wait for the budget.
    with server.client() as client:
        assert client.post("/api/v1/jobs", json=SMALL).status_code == 201
    assert "status" not in second
    first_go.set()
    a.join(60)
    b.join(60)
    assert first["status"] == second["status"] == 201
    assert budget.used == 0 and budget.waiting == 0
