"""What a request body may be, checked before any route sees it: JSON, and not too large.

A pure ASGI middleware, so that it acts on the raw request: a body whose Content-Length is over
`max_body_bytes` is answered 413 without reading a byte of it, and a body sent without a length
(chunked) is cut off with 413 as soon as it passes the limit. Every kakumei route that takes a
body takes JSON, so a body of any other content type is answered 415: that is what keeps a web
page on another site from submitting jobs through its visitors' browsers, since a browser sends
a text/plain or form body cross-site without asking (no CORS preflight), but not a JSON one.
"""

from __future__ import annotations

import json

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send


def is_json(content_type: str | None) -> bool:
    """application/json, or a JSON-based type (application/*+json), with any parameters."""
    if not content_type:
        return False
    kind = content_type.split(";", 1)[0].strip().lower()
    return kind == "application/json" or (kind.startswith("application/") and kind.endswith("+json"))


class BodyLimits:
    """413 for a body over `max_body_bytes`, 415 for a body that is not JSON."""

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    def _too_large(self) -> str:
        return (
            f"the request body is larger than this server accepts ({self.max_body_bytes:,} bytes, "
            "the max_body_bytes setting); send smaller or fewer images"
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        length = headers.get("content-length")
        chunked = "transfer-encoding" in headers
        try:
            declared = int(length) if length is not None else None
        except ValueError:
            declared = None
        if declared is not None and declared > self.max_body_bytes:
            await _answer(send, 413, self._too_large())
            return
        if (chunked or (declared or 0) > 0) and not is_json(headers.get("content-type")):
            await _answer(
                send, 415, "send the request body as JSON with 'Content-Type: application/json'; other content types are refused"
            )
            return
        if declared is not None and not chunked:
            # The server already holds the client to the declared length.
            await self.app(scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    # An HTTPException, so that FastAPI's body reading passes it on as it is
                    # and answers this sentence (any other error there becomes a 400).
                    raise HTTPException(413, self._too_large())
            return message

        await self.app(scope, counted, send)


async def _answer(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    # The body was not read, so the connection cannot carry another request.
    headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
