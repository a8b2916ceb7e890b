"""Who calls the Horde API: the `apikey` header, with the Horde's anonymous key `0000000000`.

Any of a user's keys works here; horde_sdk sends only keys of 22 characters, which is what a
`horde` key (POST /api/v1/me/keys with `"horde": true`) is. A keyless caller (no header, or
the anonymous key) is kakumei's keyless person for its address, as on every other API, and
only where the server lets keyless callers in. A Horde worker pops with its owner's key and
its name, as on the Horde; a kakumei worker key (`kkw_...`) works too.
"""

from __future__ import annotations

from fastapi import Request

from kakumei.server.addresses import client_address
from kakumei.server.deps import Caller
from kakumei.horde_mapping import HordeError
from kakumei.server.services import Services
from kakumei.store.users import hash_key
from kakumei.store.workers import WORKER_KEY_PREFIX, WorkerExists, WorkerRecord, WorkerStatus

anonymous_key = "0000000000"


def _key(request: Request) -> str | None:
    key = (request.headers.get("apikey") or "").strip()
    return None if key in ("", anonymous_key) else key


def horde_caller(svc: Services, request: Request) -> Caller:
    """The caller behind `apikey`; HordeError in the Horde's words when refused."""
    addr = client_address(request, svc.settings.trusted_proxies)
    key = _key(request)
    if key is not None:
        user = svc.users.by_key(key)
        if user is None:
            if key.startswith(WORKER_KEY_PREFIX) and svc.workers.by_key(key) is not None:
                raise HordeError(403, "Forbidden", "this is a worker key; it can only run jobs, not request them")
            raise HordeError(401, "InvalidAPIKey", "no user has this API key")
        key_hash = hash_key(key)
        svc.key_use.note(key_hash)
        return Caller(user, addr, key_hash)
    if not svc.settings.allow_anonymous:
        raise HordeError(403, "AnonForbidden", "this server needs an API key: send it in the apikey header")
    shared = svc.users.anonymous()
    return Caller(svc.users.keyless(addr) or shared, addr, shared_id=shared.id)


def horde_worker(svc: Services, request: Request, name: str | None) -> WorkerRecord:
    """The worker popping or submitting: a worker key, or its owner's key and its name (a
    name new to the server becomes a worker of that owner, as the Horde makes workers on
    their first pop). Quarantined workers are refused."""
    key = _key(request)
    if key is None:
        raise HordeError(403, "AnonForbiddenWorker", "workers need their owner's API key in the apikey header")
    worker = svc.workers.by_key(key) if key.startswith(WORKER_KEY_PREFIX) else None
    if worker is None:
        user = svc.users.by_key(key)
        if user is None:
            raise HordeError(401, "InvalidAPIKey", "no user or worker has this API key")
        if not name:
            raise HordeError(400, "BadRequest", "a worker popping with its owner's key must send its name")
        worker = svc.workers.by_name(name)
        if worker is None:
            try:
                worker, _ = svc.workers.add(user.id, name)
            except WorkerExists:
                worker = svc.workers.by_name(name)
            except ValueError as exc:
                raise HordeError(400, "BadRequest", str(exc)) from None
        if worker is None or worker.user_id != user.id:
            raise HordeError(403, "WrongCredentials", f"the worker {name!r} belongs to someone else")
    if worker.status == WorkerStatus.QUARANTINED:
        raise HordeError(
            403, "WorkerMaintenance",
            f"worker {worker.name!r} is quarantined: its results did not match re-runs; ask the operator to review it",
        )
    return worker
