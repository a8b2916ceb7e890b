"""405 with an `Allow` header that names every method the path answers.

Starlette answers 405 from the first route whose path matches, so a path served by several
routes (GET and POST on /api/v1/admin/bans, say) would name only that route's method. This
handler asks every route instead.
"""

from __future__ import annotations

from fastapi import HTTPException, Request
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.routing import Match

from kakumei.server.openai_errors import http_error

METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def allowed_methods(request: Request) -> list[str]:
    """The methods some route of the app answers at this request's path."""
    routes = request.app.router.routes
    return [
        method
        for method in METHODS
        if any(route.matches({**request.scope, "method": method})[0] == Match.FULL for route in routes)
    ]


async def method_not_allowed(request: Request, exc: StarletteHTTPException) -> Response:
    headers = dict(exc.headers or {})
    allowed = allowed_methods(request)
    if allowed:
        headers["Allow"] = ", ".join(allowed)
    return await http_error(request, HTTPException(405, exc.detail, headers))
