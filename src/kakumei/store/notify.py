"""Job changes announced by PostgreSQL (LISTEN/NOTIFY), so that every server's event streams
wake when a job they show changes, whichever server or worker changed it.

Migration 0012 adds a trigger on `job_events`: each new event notifies channel `kakumei_jobs`
with its job id, at commit. `JobChanges` listens on one connection of its own in a thread and
calls the callbacks subscribed to that job. After it (re)connects it calls every callback,
since notifications sent while it was away are lost: a woken stream re-reads its job's events
from the table, which misses nothing.

SQLite has no such channel: there one thread per server reads the new rows of `job_events`
every POLL_SECONDS (one indexed query for the whole server, whatever the number of streams;
it sees the writes of any process on the file) and calls the same callbacks.

`generation` counts announcements that may move queue positions (on SQLite every kind but
progress; on PostgreSQL, whose payload is the job id alone, every announcement): the event
streams' position board (server/routes/events.py) recomputes nothing while it stands still.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from kakumei.store.db import Database, Transaction

log = logging.getLogger(__name__)

CHANNEL = "kakumei_jobs"
POLL_SECONDS = 0.2  # SQLite: how often the one reader looks for new events
POLL_BATCH = 5000
# The kinds event streams send (a claim's "leased" is not one): only these notify, since
# every notifying commit takes PostgreSQL's notification queue lock.
STREAMED_KINDS = ("queued", "started", "progress", "succeeded", "failed", "cancelled")

_TRIGGER = f"""
CREATE OR REPLACE FUNCTION kakumei_job_event_notify() RETURNS trigger AS $body$
BEGIN
    PERFORM pg_notify('{CHANNEL}', NEW.job_id);
    RETURN NEW;
END
$body$ LANGUAGE plpgsql
"""


def add_notify_trigger(db: Database, tx: Transaction) -> None:
    """Migration 0012's PostgreSQL step: job events notify CHANNEL (a function body has
    semicolons, which the migration files cannot hold)."""
    if db.dialect != "postgresql":
        return
    tx._conn.execute(_TRIGGER)
    tx._conn.execute(
        "CREATE TRIGGER job_events_notify AFTER INSERT ON job_events FOR EACH ROW "
        f"WHEN (NEW.kind IN ({', '.join(repr(k) for k in STREAMED_KINDS)})) "
        "EXECUTE FUNCTION kakumei_job_event_notify()"
    )


class JobChanges:
    """Callbacks per job id, called from the listening thread when that job has a new event."""

    def __init__(self, db: Database, *, retry_seconds: float = 1.0, poll_seconds: float = POLL_SECONDS) -> None:
        self.db = db
        self.available = True
        self.poll_seconds = poll_seconds
        self.generation = 0
        self.retry_seconds = retry_seconds
        self._subscribers: dict[str, set[Callable[[], None]]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.listening = threading.Event()  # set while the LISTEN connection is up

    def start(self) -> None:
        if self.available and self._thread is None:
            target = self._listen if self.db.dialect == "postgresql" else self._poll
            self._thread = threading.Thread(target=target, name="job-changes", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def subscribe(self, job_id: str, callback: Callable[[], None]) -> Callable[[], None]:
        """Call `callback` (from another thread) when `job_id` may have a new event; returns
        the function that unsubscribes it."""
        with self._lock:
            self._subscribers.setdefault(job_id, set()).add(callback)

        def unsubscribe() -> None:
            with self._lock:
                callbacks = self._subscribers.get(job_id)
                if callbacks is not None:
                    callbacks.discard(callback)
                    if not callbacks:
                        del self._subscribers[job_id]

        return unsubscribe

    def _call(self, job_id: str | None, moves: bool = True) -> None:
        with self._lock:
            if moves:
                self.generation += 1
            if job_id is None:
                callbacks = [c for cs in self._subscribers.values() for c in cs]
            else:
                callbacks = list(self._subscribers.get(job_id, ()))
        for callback in callbacks:
            try:
                callback()
            except Exception:  # a stream whose loop closed: it unsubscribes on its way out
                log.debug("a job-change callback failed", exc_info=True)

    def _listen(self) -> None:
        import psycopg

        while not self._stop.is_set():
            try:
                with psycopg.connect(self.db.url, autocommit=True) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self.listening.set()
                    self._call(None)  # whatever was announced while not listening
                    while not self._stop.is_set():
                        for note in conn.notifies(timeout=1.0):
                            self._call(note.payload)
            except Exception as exc:
                if self._stop.is_set():
                    break
                log.warning("listening for job changes failed (%s); streams poll until it is back", exc)
            self.listening.clear()
            self._call(None)
            self._stop.wait(self.retry_seconds)

    def _poll(self) -> None:
        """SQLite: read the rows added since the last look, announce their jobs."""
        last: int | None = None
        while not self._stop.is_set():
            try:
                with self.db.transaction(write=False) as tx:
                    if last is None:
                        last = int(tx.scalar("SELECT COALESCE(MAX(id), 0) AS last FROM job_events"))
                        rows = []
                    else:
                        rows = tx.all("SELECT id, job_id, kind FROM job_events WHERE id > ? ORDER BY id LIMIT ?",
                                      (last, POLL_BATCH))
                if not self.listening.is_set():
                    self.listening.set()
                    self._call(None)
                if rows:
                    last = int(rows[-1]["id"])
                    if any(row["kind"] != "progress" for row in rows):  # a claim's "leased" too
                        with self._lock:
                            self.generation += 1
                    for job_id in dict.fromkeys(r["job_id"] for r in rows if r["kind"] in STREAMED_KINDS):
                        self._call(job_id, moves=False)
                    if len(rows) == POLL_BATCH:
                        continue
            except Exception as exc:
                if self._stop.is_set():
                    break
                log.warning("reading new job events failed (%s); streams poll until it works again", exc)
                if self.listening.is_set():
                    self.listening.clear()
                    self._call(None)
            self._stop.wait(self.poll_seconds)
        self.listening.clear()
