"""Hostile input at the HTTP edge, over real HTTP: body size limits (413 before the body is
read), JSON-only bodies (415), CORS off unless configured, request validation off the event
loop, and a cap on the input pixels one request may make the server decode."""

from __future__ import annotations

import asyncio
import gc
import json
import socket
import threading
import weakref
from typing import Any
from urllib.parse import urlsplit

import pytest
from PIL import Image

from imagehelpers import noise_b64
from kakumei import schemas
from kakumei.images import decode_image_b64, encode_image_b64
from kakumei.server.routes import openai as openai_route

SMALL = {"prompt": "a red fox in snow", "width": 64, "height": 64, "steps": 2, "seed": 42}


def _raw(url: str, head: str, body: bytes = b"", timeout: float = 15) -> tuple[int, dict[str, str], bytes]:
    """Send a hand-made request on a plain socket; answer (status, headers, body). The test
    fails with a timeout if the server waits for a body that never comes."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=timeout) as sock:
        sock.sendall(head.replace("\n", "\r\n").encode() + body)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        header_text, _, rest = data.partition(b"\r\n\r\n")
        lines = header_text.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        length = int(headers.get("content-length", "0"))
        while len(rest) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            rest += chunk
    return int(lines[0].split()[1]), headers, rest


def test_a_declared_length_over_the_limit_is_refused_before_the_body_is_read(make_server) -> None:
    server = make_server(max_body_bytes=1_000_000, local_worker=False)
    head = (
        "POST /api/v1/jobs HTTP/1.1\nHost: test\nContent-Type: application/json\n"
        "Content-Length: 10000000000\n\n"
    )
    # Ten gigabytes declared, a few bytes sent: only an answer that does not wait for the
    # body arrives before the socket times out.
    status, headers, body = _raw(server.url, head, b'{"prompt": "x"')
    assert status == 413
    assert headers["content-type"].startswith("application/json")
    detail = json.loads(body)["detail"]
    assert "1,000,000 bytes" in detail and "max_body_bytes" in detail


def test_a_chunked_body_over_the_limit_is_refused(make_server) -> None:
    server = make_server(max_body_bytes=10_000, local_worker=False)
    head = "POST /api/v1/jobs HTTP/1.1\nHost: test\nContent-Type: application/json\nTransfer-Encoding: chunked\n\n"
    piece = b" " * 6000
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for _ in range(3)) + b"0\r\n\r\n"
    status, _, body = _raw(server.url, head, chunks)
    assert status == 413
    assert "10,000 bytes" in json.loads(body)["detail"]
    with server.client() as client:
        assert client.get("/api/v1/jobs").json()["jobs"] == []


def test_bodies_within_the_limit_are_served(make_server) -> None:
    server = make_server(max_body_bytes=10_000, local_worker=False)
    with server.client() as client:
        assert client.post("/api/v1/jobs", json=SMALL).status_code == 201
        # The same limit holds for every route, also those FastAPI reads itself.
        big = {"accepted": True, "version": "x" * 20_000}
        assert client.post("/api/v1/me/terms", json=big).status_code == 413


@pytest.mark.parametrize("path", ["/v1/images/generations", "/api/v1/jobs", "/sdapi/v1/txt2img", "/api/v1/me/terms"])
@pytest.mark.parametrize("content_type", ["text/plain", "text/plain;charset=UTF-8", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None])
def test_bodies_that_are_not_json_are_refused(make_server, path: str, content_type: str | None) -> None:
    # What a form or a fetch() from any web page may send without asking (no CORS preflight):
    # refusing it keeps other sites from submitting jobs through their visitors' browsers.
    server = make_server(local_worker=False)
    headers = {"content-type": content_type} if content_type else {}
    with server.client() as client:
        client.headers.pop("content-type", None)
        response = client.post(path, content=json.dumps({"prompt": "a fox", **SMALL}).encode(), headers=headers)
        assert response.status_code == 415, response.text
        # OpenAI's error shape on /v1, the native one elsewhere
        body = response.json()
        assert "application/json" in (body["error"]["message"] if path.startswith("/v1/") else body["detail"])
        assert client.get("/api/v1/jobs").json()["jobs"] == []


@pytest.mark.parametrize("content_type", ["application/json", "application/json; charset=utf-8", "application/vnd.kakumei+json"])
def test_json_content_types_are_served(make_server, content_type: str) -> None:
    server = make_server(local_worker=False)
    with server.client() as client:
        response = client.post("/api/v1/jobs", content=json.dumps(SMALL).encode(), headers={"content-type": content_type})
        assert response.status_code == 201, response.text


def test_requests_without_a_body_need_no_content_type(make_server) -> None:
    server = make_server(local_worker=False)
    with server.client() as client:
        assert client.post("/sdapi/v1/interrupt").status_code == 200


def _preflight(client: Any, origin: str) -> Any:
    return client.options(
        "/api/v1/jobs",
        headers={"Origin": origin, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"},
    )


def test_cors_is_off_by_default(make_server) -> None:
    server = make_server(local_worker=False)
    with server.client() as client:
        assert "access-control-allow-origin" not in _preflight(client, "https://elsewhere.example").headers
        plain = client.get("/healthz", headers={"Origin": "https://elsewhere.example"})
        assert "access-control-allow-origin" not in plain.headers


def test_cors_allows_the_configured_origins_only(make_server) -> None:
    server = make_server(local_worker=False, cors_origins=["https://app.example"])
    with server.client() as client:
        allowed = _preflight(client, "https://app.example")
        assert allowed.status_code == 200
        assert allowed.headers["access-control-allow-origin"] == "https://app.example"
        assert "POST" in allowed.headers["access-control-allow-methods"]
        assert "access-control-allow-origin" not in _preflight(client, "https://elsewhere.example").headers
        submitted = client.post("/api/v1/jobs", json=SMALL, headers={"Origin": "https://app.example"})
        assert submitted.headers["access-control-allow-origin"] == "https://app.example"
        assert "Location" in submitted.headers["access-control-expose-headers"]


def _on_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


@pytest.fixture
def decode_threads(monkeypatch) -> list[bool]:
    """Whether each input image was decoded on an event loop thread (request validation)."""
    seen: list[bool] = []
    real = schemas.decode_image_b64

    def recording(*args: Any, **kwargs: Any) -> Any:
        seen.append(_on_event_loop())
        return real(*args, **kwargs)

    monkeypatch.setattr(schemas, "decode_image_b64", recording)
    return seen


def test_native_and_a1111_submits_validate_images_off_the_event_loop(live_server, decode_threads) -> None:
    body = {**SMALL, "init_images": [noise_b64(64, 1), noise_b64(64, 2)], "denoising_strength": 0.5}
    with live_server.client() as client:
        assert client.post("/api/v1/jobs", json=body).status_code == 201
        assert decode_threads and not any(decode_threads)
        decode_threads.clear()
        response = client.post("/sdapi/v1/img2img", json=body)
        assert response.status_code == 200, response.text
        assert decode_threads and not any(decode_threads)


def test_openai_requests_are_read_off_the_event_loop(live_server, monkeypatch) -> None:
    seen: list[bool] = []
    real = openai_route.to_generation_request

    def recording(*args: Any, **kwargs: Any) -> Any:
        seen.append(_on_event_loop())
        return real(*args, **kwargs)

    monkeypatch.setattr(openai_route, "to_generation_request", recording)
    with live_server.client() as client:
        response = client.post("/v1/images/generations", json={"prompt": "a lighthouse", "size": "64x64", "response_format": "b64_json"})
        assert response.status_code == 200, response.text
    assert seen == [False]


def test_healthz_answers_while_a_submit_is_being_validated(make_server, monkeypatch) -> None:
    server = make_server(local_worker=False)
    entered, release = threading.Event(), threading.Event()
    real = schemas.decode_image_b64

    def slow(*args: Any, **kwargs: Any) -> Any:
        entered.set()
        release.wait(30)  # a validation that takes long; on the event loop it would stall everything
        return real(*args, **kwargs)

    monkeypatch.setattr(schemas, "decode_image_b64", slow)
    result: dict[str, Any] = {}

    def submit() -> None:
        with server.client() as client:
            result["status"] = client.post("/api/v1/jobs", json={**SMALL, "init_images": [noise_b64(64, 1)]}).status_code

    thread = threading.Thread(target=submit)
    thread.start()
    try:
        assert entered.wait(30)
        with server.client() as client:
            assert client.get("/healthz", timeout=10).status_code == 200
        assert not release.is_set() and thread.is_alive()
    finally:
        release.set()
        thread.join(60)
    assert result["status"] == 201


def test_only_small_bodies_that_decode_no_image_are_parsed_on_the_event_loop() -> None:
    from kakumei.server.bodies import INLINE_BODY_BYTES, parses_inline

    plain = json.dumps({"prompt": "a fox", "width": 64, "init_images": []}).encode()
    assert parses_inline(plain, schemas.IMAGE_FIELDS)
    assert parses_inline(plain, ())
    assert not parses_inline(plain, None)  # routes that did not ask stay in the pool
    with_image = json.dumps({"prompt": "a fox", "init_images": [noise_b64(8, 1)]}).encode()
    assert not parses_inline(with_image, schemas.IMAGE_FIELDS)
    # A name spelled with escapes is the same field once parsed.
    assert not parses_inline(b'{"\\u006dask": "x"}', schemas.IMAGE_FIELDS)
    assert not parses_inline(b" " * (INLINE_BODY_BYTES + 1), ())
    assert not parses_inline(b'{"prompt": ', schemas.IMAGE_FIELDS)


@pytest.fixture(scope="module")
def huge_flat_png() -> str:
    """A 4096x4096 PNG of one colour: tiny to send, the most pixels one input may have."""
    return encode_image_b64(Image.new("RGB", (4096, 4096), (200, 120, 40)))


def test_the_input_pixels_of_one_request_are_capped_before_decoding(make_server, decode_threads, huge_flat_png) -> None:
    server = make_server(local_worker=False)
    count = schemas.MAX_REQUEST_INPUT_PIXELS // schemas.MAX_INPUT_PIXELS + 1
    with server.client() as client:
        response = client.post("/api/v1/jobs", json={**SMALL, "init_images": [huge_flat_png] * count})
        assert response.status_code == 422
        error = response.json()["errors"][0]
        assert error["field"] == "init_images"
        assert f"{schemas.MAX_REQUEST_INPUT_PIXELS:,}" in error["message"]
        # Refused from the sizes the headers declare: not one image was decoded.
        assert decode_threads == []
        mask = {**SMALL, "init_images": [huge_flat_png] * (count - 1), "mask": huge_flat_png}
        masked = client.post("/api/v1/jobs", json=mask)
        assert masked.status_code == 422
        assert masked.json()["errors"][0]["field"] == "mask"
        assert f"{schemas.MAX_REQUEST_INPUT_PIXELS:,}" in masked.json()["errors"][0]["message"]


def test_requests_up_to_the_pixel_cap_are_accepted(make_server, huge_flat_png) -> None:
    server = make_server(local_worker=False)
    count = schemas.MAX_REQUEST_INPUT_PIXELS // schemas.MAX_INPUT_PIXELS
    with server.client() as client:
        response = client.post("/api/v1/jobs", json={**SMALL, "init_images": [huge_flat_png] * count})
        assert response.status_code == 201, response.text


def test_decoded_images_are_not_kept_after_use(huge_flat_png) -> None:
    image = decode_image_b64(huge_flat_png, "init_images[0]", schemas.MAX_INPUT_PIXELS, schemas.MAX_INPUT_BYTES)
    ref = weakref.ref(image)
    del image
    gc.collect()
    assert ref() is None


def test_openapi_still_documents_the_bodies(live_server) -> None:
    with live_server.client() as client:
        spec = client.get("/openapi.json").json()
    for path in ("/api/v1/jobs", "/sdapi/v1/txt2img", "/sdapi/v1/img2img", "/v1/images/generations"):
        schema = spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        properties = schema.get("properties") or spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]["properties"]
        assert "prompt" in properties, path


def test_the_default_body_limit_fits_one_input_at_its_largest_and_no_more_than_64_mib() -> None:
    from kakumei.config import DEFAULT_MAX_BODY_BYTES

    one_largest_input = schemas.MAX_INPUT_BYTES * 4 // 3 + 1024 * 1024
    assert one_largest_input < DEFAULT_MAX_BODY_BYTES <= 64 * 1024 * 1024
