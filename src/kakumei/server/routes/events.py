"""/api/v1/jobs/{id}/events: a job's life as Server-Sent Events.

Events come from the job_events table, so they survive restarts, reach every server that
shares a PostgreSQL database, and a client can resume with Last-Event-ID on any of them. A
stream sleeps until its job has a new event (store/notify.py: LISTEN/NOTIFY on PostgreSQL,
one reader thread per server on SQLite), its queue position moved (PositionBoard) or a
keep-alive is due; while the announcements are down it polls every POLL_SECONDS.
"""

from __future__ import annotations

import asyncio
import json
import logging
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

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api/v1", tags=["events"])

POLL_SECONDS = 0.2
# A queued job's position is recomputed this often at most, and only once the queue may
# have moved; a new position is sent as `queued`. The board recomputes at most
# POSITION_BUDGET positions a second for the whole server (each is a few queries).
POSITION_SECONDS = 2.0
POSITION_BUDGET = 50
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


class _Watch:
    """One open stream, as the job-change callback and the position board see it."""

    __slots__ = ("job_id", "wake", "new_events", "position", "last_position", "generation", "checked")

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self.wake = asyncio.Event()
        self.new_events = True  # the first look reads the table
        self.position: dict[str, Any] | None = None  # a `queued` event's data to send
        self.last_position: Any = None
        self.generation = -1  # JobChanges.generation when its position was last computed
        self.checked = 0.0

    def announce(self) -> None:
        self.new_events = True
        self.wake.set()


class PositionBoard:
    """Queue positions of the queued jobs this server's streams show, for all of them in one
    task: every POSITION_SECONDS, when the queue may have moved since a stream's position was
    computed (JobChanges.generation), it recomputes at most POSITION_BUDGET a second of them,
    the longest unchecked first, in one thread call, and wakes the streams whose position
    changed. Idle streams cost nothing; a thousand of them on a moving queue are refreshed in
    turn instead of each running its own queries every two seconds."""

    def __init__(self, svc: Services) -> None:
        self.svc = svc
        self.budget = max(1, int(POSITION_BUDGET * POSITION_SECONDS))
        self.watching: dict[int, _Watch] = {}
        self._task: asyncio.Task[None] | None = None

    def watch(self, watch: _Watch) -> None:
        self.watching[id(watch)] = watch
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    def unwatch(self, watch: _Watch) -> None:
        self.watching.pop(id(watch), None)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while self.watching:
            await asyncio.sleep(POSITION_SECONDS)
            changes = self.svc.job_changes
            # Not listening: nothing says the queue stood still.
            generation = changes.generation if changes.listening.is_set() else -2
            stale = [w for w in self.watching.values() if w.generation != generation or generation == -2]
            if not stale:
                continue
            stale.sort(key=lambda w: w.checked)
            batch = stale[: self.budget]
            try:
                places = await to_thread.run_sync(self._places, [w.job_id for w in batch])
            except Exception:
                log.warning("queue positions for event streams failed", exc_info=True)
                continue
            now = loop.time()
            for watch, data in zip(batch, places):
                watch.generation, watch.checked = generation, now
                # (a stream that has read its job's start since is no longer watched)
                if self.watching.get(id(watch)) is watch and data.get("queue_position") not in (None, watch.last_position):
                    watch.last_position = data["queue_position"]
                    watch.position = data
                    watch.wake.set()

    def _places(self, job_ids: list[str]) -> list[dict[str, Any]]:
        return [queued_event(self.svc, job_id, {}) for job_id in job_ids]


def _board(request: Request) -> PositionBoard:
    board = getattr(request.app.state, "position_board", None)
    if board is None:
        board = request.app.state.position_board = PositionBoard(request.app.state.services)
    return board


async def _stream(svc: Services, request: Request, job_id: str, after: int) -> AsyncIterator[str]:
    loop = asyncio.get_running_loop()
    watch = _Watch(job_id)
    board = _board(request)
    unsubscribe = svc.job_changes.subscribe(job_id, lambda: loop.call_soon_threadsafe(watch.announce))
    try:
        async for chunk in _events(svc, request, watch, board, after):
            yield chunk
    finally:
        unsubscribe()
        board.unwatch(watch)


async def _events(
    svc: Services, request: Request, watch: _Watch, board: PositionBoard, after: int
) -> AsyncIterator[str]:
    """The stream's loop. While job changes are announced (LISTEN on PostgreSQL, the one
    reader on SQLite) it sleeps until its job has a new event, its position moved, or a
    keep-alive is due: an idle stream costs one timer. Otherwise it reads the table every
    POLL_SECONDS."""
    loop = asyncio.get_running_loop()
    changes = svc.job_changes
    last_sent = loop.time()
    job_id = watch.job_id
    while True:
        watch.wake.clear()  # before reading: an announcement from now on wakes the next wait
        listening = changes.listening.is_set()
        if watch.new_events or not listening:
            watch.new_events = False
            generation = changes.generation  # before the read: a position read below is as new
            events = await to_thread.run_sync(svc.jobs.events, job_id, after)
            for event in events:
                after = event.id
                if event.kind not in PUBLIC_KINDS:
                    continue
                data = await to_thread.run_sync(public_event, svc, event)
                if event.kind == "queued":
                    watch.last_position = data.get("queue_position", watch.last_position)
                    watch.generation, watch.checked = generation, loop.time()
                    board.watch(watch)
                else:
                    board.unwatch(watch)
                watch.position = None
                yield _format(event.kind, data, event.id)
                last_sent = loop.time()
                if event.kind in FINAL_KINDS:
                    return
        if watch.position is not None:
            data, watch.position = watch.position, None
            yield _format("queued", data)
            last_sent = loop.time()
        now = loop.time()
        if now - last_sent >= KEEPALIVE_SECONDS:
            yield ": keep-alive\n\n"
            last_sent = now
            if await request.is_disconnected():
                return
        if listening:
            try:
                await asyncio.wait_for(watch.wake.wait(), max(0.05, KEEPALIVE_SECONDS - (now - last_sent)))
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
