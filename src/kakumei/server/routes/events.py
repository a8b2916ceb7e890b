"""/api/v1/jobs/{id}/events: a job's life as Server-Sent Events.

Events come from the job_events table, so they survive restarts, reach every server that
shares a PostgreSQL database, and a client can resume with Last-Event-ID on any of them. On
PostgreSQL a stream sleeps until the database announces a new event of its job
(store/notify.py), waking at least every WAKE_SECONDS for positions, keep-alives and a client
gone; on SQLite, or while the announcements are down, it polls every POLL_SECONDS.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

from anyio import to_thread
from fastapi import APIRouter, Header, HTTPException, Request
from fastapi.responses import Response, StreamingResponse

from kakumei.fairness.limits import Slots
from kakumei.store.buckets import SharedSlots
from kakumei.store.jobs import TERMINAL_STATES
from kakumei.server.deps import Caller, Svc, Who, owned_job
from kakumei.server.services import Services
from kakumei.server.views import public_event, queued_event
from kakumei.server.openapi import problems

router = APIRouter(prefix="/api/v1", tags=["events"])

POLL_SECONDS = 0.2
WAKE_SECONDS = 1.0
# A queued job's position is recomputed this often; a new position is sent as `queued`.
POSITION_SECONDS = 2.0
KEEPALIVE_SECONDS = 15.0
PUBLIC_KINDS = {"queued", "started", "progress", "succeeded", "failed", "cancelled"}
FINAL_KINDS = {"succeeded", "failed", "cancelled"}
# Event ids are BIGINT row ids; a Last-Event-ID beyond them is none this server sent.
MAX_EVENT_ID = 2**63 - 1


def resume_after(last_event_id: str | None) -> int:
    """The event id to resume after. A Last-Event-ID that is not one this server could have
    sent (not a plain number, out of range) is ignored, as the SSE standard has clients send
    back whatever id they last saw: the stream starts from the beginning, which is always
    correct, only longer."""
    text = (last_event_id or "").strip()
    if not text.isascii() or not text.isdigit() or len(text) > len(str(MAX_EVENT_ID)):
        return 0
    value = int(text)
    return value if value <= MAX_EVENT_ID else 0


def _format(kind: str, data: dict[str, Any], event_id: int | None = None) -> str:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {kind}\ndata: {json.dumps(data)}\n\n"


async def _stream(svc: Services, request: Request, job_id: str, after: int) -> AsyncIterator[str]:
    loop = asyncio.get_running_loop()
    changes = svc.job_changes
    wake = asyncio.Event()
    unsubscribe = changes.subscribe(job_id, lambda: loop.call_soon_threadsafe(wake.set)) if changes.available else None
    try:
        async for chunk in _events(svc, request, job_id, after, wake if unsubscribe else None):
            yield chunk
    finally:
        if unsubscribe is not None:
            unsubscribe()


async def _events(
    svc: Services, request: Request, job_id: str, after: int, wake: asyncio.Event | None
) -> AsyncIterator[str]:
    loop = asyncio.get_running_loop()
    last_sent = last_position_check = loop.time()
    state_kind = None
    last_position = None
    while True:
        if wake is not None:
            wake.clear()  # before reading: an announcement from now on wakes the next wait
        events = await to_thread.run_sync(svc.jobs.events, job_id, after)
        for event in events:
            after = event.id
            if event.kind not in PUBLIC_KINDS:
                continue
            data = await to_thread.run_sync(public_event, svc, event)
            state_kind = event.kind
            last_position = data.get("queue_position", last_position)
            yield _format(event.kind, data, event.id)
            last_sent = loop.time()
            if event.kind in FINAL_KINDS:
                return
        now = loop.time()
        if state_kind == "queued" and now - last_position_check >= POSITION_SECONDS:
            last_position_check = now
            data = await to_thread.run_sync(queued_event, svc, job_id, {})
            if data.get("queue_position") not in (None, last_position):
                last_position = data["queue_position"]
                yield _format("queued", data)
                last_sent = now
        if now - last_sent >= KEEPALIVE_SECONDS:
            yield ": keep-alive\n\n"
            last_sent = now
        if await request.is_disconnected():
            return
        if wake is not None and svc.job_changes.listening.is_set():
            try:
                await asyncio.wait_for(wake.wait(), WAKE_SECONDS)
            except TimeoutError:
                pass
        else:
            await asyncio.sleep(POLL_SECONDS)


@router.get(
    "/jobs/{job_id}/events",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}},
               204: {"description": "the job has finished and Last-Event-ID was its last event"},
               **problems(401, 403, 404, 429)},
)
def job_events(
    job_id: str,
    request: Request,
    svc: Svc,
    who: Who,
    last_event_id: Annotated[str | None, Header(description="resume after this event id")] = None,
) -> Response:
    """queued (queue_position, eta_seconds), started, progress (step, total, preview every few
    steps), then succeeded (images with URLs and metadata), failed (reason) or cancelled.

    With Last-Event-ID, the events after it (on any server), then the stream ends as usual;
    204 No Content when the job has finished and nothing is left after it (an EventSource
    stops reconnecting on a 204)."""
    job = owned_job(svc, who, job_id)
    after = resume_after(last_event_id)
    # The state is read before the events: a final state commits with its final event, so a
    # finished job's events read after it hold that event unless it is before `after`.
    if job.state in TERMINAL_STATES and not any(e.kind in PUBLIC_KINDS for e in svc.jobs.events(job_id, after)):
        return Response(status_code=204, headers={"Cache-Control": "no-cache"})
    slots: Slots | SharedSlots = request.app.state.event_streams
    holder = _stream_holder(who)
    if not slots.acquire(holder):
        raise HTTPException(
            429,
            f"you have {slots.limit} event streams open, the most this server allows at once; "
            "close one (or read the job with GET /api/v1/jobs/{id}) and retry",
            {"Retry-After": "5"},
        )
    return _HeldStream(
        lambda: slots.release(holder),
        _stream(svc, request, job_id, after),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def _stream_holder(who: Caller) -> str:
    # Anonymous visitors share one user; each address has the places one user has.
    if who.user.is_anonymous:
        return f"addr:{who.scope_addr or ''}"
    return f"user:{who.user.id}"


class _HeldStream(StreamingResponse):
    """A stream that gives its place back however it ends: finished, the client gone, or
    cancelled before the first byte (a generator's own `finally` would not run then).
    Counted per process on SQLite, in the database on PostgreSQL (across servers)."""

    def __init__(self, release: Callable[[], None], content: AsyncIterator[str], **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self._release = release

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._release()
