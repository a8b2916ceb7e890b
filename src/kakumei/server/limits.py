"""What a request body may be, checked before any route sees it: JSON, and not too large.

A pure ASGI middleware, so that it acts on the raw request: a body whose Content-Length is over
its route's limit is answered 413 without reading a byte of it, and a body sent without a length
(chunked) is cut off with 413 as soon as it passes the limit. Two limits: routes that take images
(IMAGE_PATHS, worker reports of finished images) accept up to `max_body_bytes`; every other route
at most SMALL_BODY_BYTES, since FastAPI parses those bodies itself, on the event loop, before the
caller's key is checked, and a big one would stall every other request meanwhile.

Big bodies on image routes are also read within a byte budget (ByteBudget, `max_body_bytes` in
all): a request takes its declared length from the budget when the route starts reading, and
gives it back when the route is done with the body (`release_body`: parsed, and its images
decoded) or the request ends. A burst of uploads then waits in the clients' sockets, unread,
instead of each one being read, parsed and decoded at once, which is what server memory grows by. Every kakumei route that takes a
body takes JSON, so a body of any other content type is answered 415: that is what keeps a web
page on another site from submitting jobs through its visitors' browsers, since a browser sends
a text/plain or form body cross-site without asking (no CORS preflight), but not a JSON one.
The exceptions are OpenAI's /v1/images/edits, whose clients send multipart forms (FORM_PATHS);
that route refuses forms a browser sent from another site (`cross_site_form`), and the Horde
upload URLs (UPLOAD_PREFIX), which take an image from the worker that holds the URL's token.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections import deque
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

# The routes whose bodies carry images, and so may be as large as max_body_bytes. Each reads its
# body with server/bodies.py's json_body (or read_body), in the parse pool, after the caller.
IMAGE_PATHS = frozenset({
    "/api/v1/jobs", "/sdapi/v1/txt2img", "/sdapi/v1/img2img", "/sdapi/v1/png-info", "/v1/images/edits",
    "/api/v2/generate/async", "/api/v2/generate/submit",  # the Horde's source images, inline results
})
_IMAGE_REPORT = re.compile(r"/api/v1/worker/jobs/[^/]+/(complete|cancelled)")

# The largest body any other route takes: its JSON is a few names and numbers (the longest, a
# heartbeat with its preview, is under 250 kB).
SMALL_BODY_BYTES = 1024 * 1024

# The key of a request's BodyTicket in its ASGI scope.
_TICKET = "kakumei.body_ticket"


def takes_images(path: str) -> bool:
    """Whether `path` is a route whose body may carry images (and be up to max_body_bytes)."""
    return path in IMAGE_PATHS or _IMAGE_REPORT.fullmatch(path) is not None or path.startswith(UPLOAD_PREFIX)


class ByteBudget:
    """How many bytes of request bodies may be in hand at once: a weighted semaphore, first come
    first served (a big body is not overtaken for ever by smaller ones). Holds no event loop:
    each waiter's future belongs to the loop it waits on."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.used = 0
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()

    @property
    def waiting(self) -> int:
        """Requests waiting for their share."""
        return sum(1 for _, future in self._waiters if not future.done())

    async def take(self, amount: int) -> int:
        """Wait until `amount` bytes (at most the whole budget) are free and take them; the
        amount taken, to give back."""
        amount = min(amount, self.total)
        if not self._waiters and self.used + amount <= self.total:
            self.used += amount
            return amount
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (amount, future)
        self._waiters.append(entry)
        try:
            await future
        except BaseException:
            if future.done() and not future.cancelled():
                self.give(amount)  # granted, but the request went away meanwhile
            elif entry in self._waiters:
                self._waiters.remove(entry)
                self._wake()
            raise
        return amount

    def give(self, amount: int) -> None:
        self.used -= amount
        self._wake()

    def _wake(self) -> None:
        while self._waiters:
            amount, future = self._waiters[0]
            if future.done():
                self._waiters.popleft()
                continue
            if self.used + amount > self.total:
                return
            self._waiters.popleft()
            self.used += amount
            future.set_result(None)


class BodyTicket:
    """One request's claim on the budget: taken when its body is first read, given back once."""

    def __init__(self, budget: ByteBudget, amount: int) -> None:
        self.budget, self.amount = budget, amount
        self.held = 0
        self.finished = False

    async def take(self) -> None:
        if not self.finished and not self.held:
            self.held = await self.budget.take(self.amount)

    def release(self) -> None:
        self.finished = True
        if self.held:
            self.budget.give(self.held)
            self.held = 0


def release_body(request: Request) -> None:
    """The route is done with its request's body (parsed, images decoded and checked): its
    share of the byte budget goes to the next upload. Safe to call more than once."""
    ticket = request.scope.get(_TICKET)
    if ticket is not None:
        ticket.release()


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
    """413 for a body over its route's limit, 415 for a body that is not JSON; big bodies of
    image routes read within `budget`."""

    def __init__(self, app: ASGIApp, max_body_bytes: int, budget: ByteBudget | None = None) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.small_body_bytes = min(SMALL_BODY_BYTES, max_body_bytes)
        self.budget = budget or ByteBudget(max_body_bytes)

    def _too_large(self, limit: int) -> str:
        if limit < self.max_body_bytes:
            return f"the request body is larger than this route accepts ({limit:,} bytes; only image uploads may be larger)"
        return (
            f"the request body is larger than this server accepts ({limit:,} bytes, "
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
        path = scope.get("path", "")
        limit = self.max_body_bytes if takes_images(path) else self.small_body_bytes
        if declared is not None and declared > limit:
            await _answer(scope, send, 413, self._too_large(limit))
            return
        content_type = headers.get("content-type")
        form_ok = (path in FORM_PATHS and is_form(content_type)) or path.startswith(UPLOAD_PREFIX)
        if (chunked or (declared or 0) > 0) and not (is_json(content_type) or form_ok):
            await _answer(
                scope, send, 415, "send the request body as JSON with 'Content-Type: application/json'; other content types are refused"
            )
            return
        if limit > self.small_body_bytes and (chunked or (declared or 0) > self.small_body_bytes):
            # A big body of an image route: read within the budget, a chunked one as if it
            # were as long as allowed.
            ticket = scope[_TICKET] = BodyTicket(self.budget, limit if chunked or declared is None else declared)
            receive = _budgeted(receive, ticket)
            try:
                await self._limited(scope, receive, send, limit, counted=chunked or declared is None)
            finally:
                ticket.release()
            return
        await self._limited(scope, receive, send, limit, counted=chunked or declared is None)

    async def _limited(self, scope: Scope, receive: Receive, send: Send, limit: int, *, counted: bool) -> None:
        if not counted:
            # The server already holds the client to the declared length.
            await self.app(scope, receive, send)
            return
        received = 0

        async def counting() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # An HTTPException, so that FastAPI's body reading passes it on as it is
                    # and answers this sentence (any other error there becomes a 400).
                    raise HTTPException(413, self._too_large(limit))
            return message

        await self.app(scope, counting, send)


def _budgeted(receive: Receive, ticket: BodyTicket) -> Receive:
    async def budgeted() -> Message:
        await ticket.take()  # at the first read only; nothing once the route gave it back
        return await receive()

    return budgeted


async def _answer(scope: Scope, send: Send, status: int, detail: str) -> None:
    shaped = error_body(status, detail) if is_openai_path(scope.get("path", "")) else {"detail": detail}
    body = json.dumps(shaped).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    # The body was not read, so the connection cannot carry another request.
    headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
