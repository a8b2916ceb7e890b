"""What a request body may be, checked before any route sees it: JSON, and not too large.

A pure ASGI middleware, so that it acts on the raw request: a body whose Content-Length is over
`max_body_bytes` is answered 413 without reading a byte of it, and a body sent without a length
(chunked) is cut off with 413 as soon as it passes the limit. Every kakumei route that takes a
body takes JSON, so a body of any other content type is answered 415: that is what keeps a web
page on another site from submitting jobs through its visitors' browsers, since a browser sends
a text/plain or form body cross-site without asking (no CORS preflight), but not a JSON one.
The exceptions are OpenAI's /v1/images/edits, whose clients send multipart forms (FORM_PATHS);
that route refuses forms a browser sent from another site (`cross_site_form`), and the Horde
upload URLs (UPLOAD_PREFIX), which take an image from the worker that holds the URL's token.
"""

from __future__ import annotations

import json
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kakumei.server.multipart import is_form
from kakumei.server.openai_errors import error_body, is_openai_path


# Paths whose clients send multipart/form-data (the OpenAI SDKs upload edits that way).
FORM_PATHS = frozenset({"/v1/images/edits"})
# The upload URLs a Horde pop hands out (server/horde/): Horde workers PUT the image itself
# there. Each URL carries a secret token of its one generation, so no other site's page can
# use one through its visitors' browsers.
UPLOAD_PREFIX = "/api/v2/r2/"


def cross_site_form(request: Request, cors_origins: list[str]) -> str | None:
    """Why a form from a web page on another site is refused (browsers send a form
    cross-site without a CORS preflight, and name the page's origin); None when it comes from
    this server's own pages, an allowed origin (`cors_origins`), or a program (no Origin)."""
    origin = request.headers.get("origin")
    if origin is None or origin in cors_origins or urlsplit(origin).netloc == request.headers.get("host"):
        return None
    return "a form sent by a web page on another site is refused; call this API from a program, or an allowed origin"


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
            await _answer(scope, send, 413, self._too_large())
            return
        content_type = headers.get("content-type")
        path = scope.get("path") or ""
        form_ok = (path in FORM_PATHS and is_form(content_type)) or path.startswith(UPLOAD_PREFIX)
        if (chunked or (declared or 0) > 0) and not (is_json(content_type) or form_ok):
            await _answer(
                scope, send, 415, "send the request body as JSON with 'Content-Type: application/json'; other content types are refused"
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


async def _answer(scope: Scope, send: Send, status: int, detail: str) -> None:
    shaped = error_body(status, detail) if is_openai_path(scope.get("path", "")) else {"detail": detail}
    body = json.dumps(shaped).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    # The body was not read, so the connection cannot carry another request.
    headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
