"""Request bodies parsed and validated off the event loop, in a small pool of threads.

A generation request may carry hundreds of megabytes of base64 images, and validating it
decodes every one of them. Done by FastAPI's own body handling, the JSON parsing and the
validation run on the event loop, and every other request (even /healthz) waits. Routes that
take such bodies declare them with `json_body(Model)` instead: the body is read (within the
limits of server/limits.py), then parsed and validated in a pool of PARSE_THREADS threads, so
that a burst of big submits queues for those threads and neither stalls the loop nor decodes
more images at once than the pool has threads. Errors keep FastAPI's 422 shape, and
`documented(Model)` keeps the body in /openapi.json. A big body is read within the byte budget of
server/limits.py, and its share is given back (`release_body`) once it is parsed and its images
decoded.
"""

from __future__ import annotations

import ctypes
import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from anyio import CapacityLimiter, to_thread
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from kakumei.server import bigjson
from kakumei.server.limits import release_body

# Threads that parse and validate big bodies at once: a few, so that the rest of the server
# keeps its CPU and a burst of image uploads holds a bounded amount of decoded memory.
PARSE_THREADS = 4

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")


def _limiter(request: Request) -> CapacityLimiter:
    # Made on first use, on the event loop (one app may serve on several loops in tests).
    limiter = getattr(request.app.state, "parse_limiter", None)
    if limiter is None:
        limiter = request.app.state.parse_limiter = CapacityLimiter(PARSE_THREADS)
    return limiter


async def in_parse_pool(request: Request, func: Callable[..., T], *args: Any) -> T:
    """`func(*args)` in the parse pool, for work on a request body that may be big."""
    return await to_thread.run_sync(func, *args, limiter=_limiter(request))


def validated(raw: bytes | bytearray, model: type[M]) -> M | list[dict[str, Any]]:
    """A JSON body as `model`, or the errors FastAPI itself would give for it. A bytearray
    `raw` is emptied once decoded.

    Errors are returned, not raised, and carry no input: a raised error's traceback would keep
    this frame, and so the body and its images, alive for as long as the error lives.
    """
    if not raw:
        return [{"type": "missing", "loc": ("body",), "msg": "Field required", "input": None}]
    try:
        # In short calls where the body is mostly long strings (images), so that a big body
        # does not hold the GIL, and every other request, for the whole parse.
        data = bigjson.loads(raw)
    except json.JSONDecodeError as exc:
        return [{"type": "json_invalid", "loc": ("body", exc.pos), "msg": "JSON decode error", "input": {}, "ctx": {"error": exc.msg}}]
    except (ValueError, RecursionError):  # not UTF-8 (or -16/-32) text, or nested too deep to parse
        return [{"type": "json_invalid", "loc": ("body",), "msg": "JSON decode error", "input": {}}]
    finally:
        if isinstance(raw, bytearray):
            raw.clear()  # parsed: the bytes are a second copy of the images
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        return [
            {"type": err["type"], "loc": ("body", *err["loc"]), "msg": err["msg"], "input": _short(err.get("input")),
             "ctx": {k: v for k, v in (err.get("ctx") or {}).items() if isinstance(v, (int, float, str))}}
            for err in exc.errors(include_url=False)
        ]


def _short(value: Any) -> Any:
    """A value an error may repeat to the caller: a number or a flag (schemas.error_sentence);
    never text, nor a body's images, which the error would keep alive as long as it lives."""
    return value if isinstance(value, (bool, int, float)) else None


async def read_body(request: Request) -> bytearray:
    """The request's body, read here rather than by request.body(), which would keep the bytes
    on the request for as long as it lasts (an A1111 request lasts until its job is done)."""
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
    return raw


# A body up to this size whose model decodes nothing is parsed on the event loop: that takes
# tens of microseconds, less than handing it to a pool thread and back (a queue, a wake-up and
# GIL switches on the server's one core), e.g. every worker's small report.
INLINE_BODY_BYTES = 64 * 1024


def parses_inline(raw: bytes | bytearray, decoding: tuple[str, ...] | None) -> bool:
    """Whether json_body parses `raw` on the event loop: small, and (when `decoding` names
    fields) a JSON object that fills none of them, whatever escapes spell their names."""
    if decoding is None or len(raw) > INLINE_BODY_BYTES:
        return False
    if not decoding:
        return True
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):  # the pool's parse gives the error
        return False
    return isinstance(data, dict) and not any(data.get(name) for name in decoding)


def json_body(
    model: type[M], *, optional: bool = False, release: bool = True, decoding: tuple[str, ...] | None = None
) -> Callable[[Request], Awaitable[M]]:
    """A FastAPI dependency: the request body as `model`, parsed in the parse pool. With
    `optional`, no body at all is `model()` (its defaults). With `release` False the body keeps
    its share of the byte budget until the route calls release_body (it decodes images after
    parsing) or the request ends. `decoding`: the fields whose validation decodes images (a
    small image may decode to many pixels); a body of at most INLINE_BODY_BYTES that is a JSON
    object filling none of them is parsed on the event loop. None (the default): always in
    the pool."""

    async def body(request: Request) -> M:
        raw = await read_body(request)
        if optional and not raw:
            return model()
        if parses_inline(raw, decoding):
            result = validated(raw, model)
        else:
            result = await in_parse_pool(request, validated, raw, model)
        del raw
        if release:
            release_body(request)
        if isinstance(result, list):
            raise RequestValidationError(result)
        return result

    return body


def documented(model: type[BaseModel], *, optional: bool = False) -> dict[str, Any]:
    """`openapi_extra` for a route that reads its body with json_body: the body's schema, as
    FastAPI would document a body parameter of `model`."""
    return {
        "requestBody": {
            "required": not optional,
            "content": {"application/json": {"schema": model.model_json_schema(ref_template="#/components/schemas/{model}")}},
        }
    }


# glibc's mallopt parameter for the size from which allocations are served by mmap.
_M_MMAP_THRESHOLD = -3


def return_big_buffers_to_the_system() -> None:
    """Serve allocations of 1 MiB and more by mmap, so that the memory of a big body goes back
    to the system once the request is done. glibc raises that threshold after the first big
    free and keeps later big buffers on its heaps, where a burst of uploads stays resident
    (benchmarks/hostile_load.py: 430 MB after four image submits, 55 MB with this). Does
    nothing where the C library has no mallopt."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt(_M_MMAP_THRESHOLD, 1 << 20)
