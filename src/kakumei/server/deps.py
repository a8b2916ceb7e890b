"""Request-scoped helpers: the shared services, who is calling, what they may act on (their
own jobs and images, worker keys when registered, admin routes when an admin)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.exceptions import RequestValidationError

from kakumei.schemas import refuse_control
from kakumei.server.addresses import client_address
from kakumei.server.services import Services
from kakumei.store.images import StoredImage
from kakumei.store.jobs import Job
from kakumei.store.users import User, hash_key
from kakumei.store.workers import WORKER_KEY_PREFIX


@dataclass(frozen=True)
class Caller:
    """Who is calling. A keyless caller is one person per address: `user` is their own row
    once they have written anything (a job, their terms, their options), and until then the
    shared `anonymous` user of older releases (`shared_id`), whose jobs from their address
    stay theirs."""

    user: User
    client_addr: str | None
    # The SHA-256 of the key the caller sent (None: keyless), to tell their keys apart.
    key_hash: str | None = None
    shared_id: int | None = None

    @property
    def scope_addr(self) -> str | None:
        """The address that scopes this caller's own jobs, images and settings: keyless
        callers are told apart by address; callers with a key are not."""
        return self.client_addr if self.user.is_anonymous else None

    @property
    def scope_id(self) -> int:
        """The user that what a caller settles for their address (terms, options) is kept
        under: for keyless callers the shared anonymous user, as in older releases, so that
        it holds before and after their first job."""
        if self.user.is_anonymous and self.shared_id is not None:
            return self.shared_id
        return self.user.id

    def owns(self, user_id: int, client_addr: str | None) -> bool:
        # A keyless caller sees only what its own address submitted: as its own person, or
        # under the shared anonymous user of older releases.
        if not self.user.is_anonymous:
            return user_id == self.user.id
        if client_addr != self.client_addr:
            return False
        return user_id == self.user.id or (self.shared_id is not None and user_id == self.shared_id)


# plain_request, services_dep and worker_access.active_worker are async although they never
# wait: FastAPI runs a sync dependency in a worker thread, and each such hand-off (a queue, a
# wake-up, a GIL switch) costs the server's one core more than the check itself.
async def plain_request(request: Request) -> None:
    """Every route's guard: ids and names in the path, and query parameters, hold no control
    character. No job, image, user or worker is named with one, and PostgreSQL cannot even
    compare text with a NUL, so a path with one is not found (404) and a query is refused (422)
    before anything looks it up."""
    for name, value in request.path_params.items():
        if isinstance(value, str):
            try:
                refuse_control(value)
            except ValueError:
                raise HTTPException(404, f"nothing is named {value!r} here: {name} has no control characters") from None
    errors = []
    for name, value in request.query_params.multi_items():
        try:
            refuse_control(value)
        except ValueError as exc:
            errors.append({"loc": ("query", name), "msg": str(exc), "type": "value_error", "input": value})
    if errors:
        raise RequestValidationError(errors)


def services(request: Request) -> Services:
    return request.app.state.services


async def services_dep(request: Request) -> Services:
    """`services` as a dependency (Svc), run on the event loop: it only reads an attribute."""
    return request.app.state.services


def caller(request: Request) -> Caller:
    return _caller(request, keyless=services(request).settings.allow_anonymous)


def visitor(request: Request) -> Caller:
    """Like `caller`, but a keyless visitor is let in even where keys are required: sign-up
    and sign-in are how a visitor gets a key."""
    return _caller(request, keyless=True)


def address(request: Request) -> str | None:
    """The caller's address alone, whatever key it sends (sign-in, guest sessions)."""
    return client_address(request, services(request).settings.trusted_proxies)


def _caller(request: Request, *, keyless: bool) -> Caller:
    svc = services(request)
    header = request.headers.get("authorization")
    addr = client_address(request, svc.settings.trusted_proxies)
    if header:
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise HTTPException(401, "use 'Authorization: Bearer YOUR_KEY'", {"WWW-Authenticate": "Bearer"})
        user = svc.users.by_key(key.strip())
        if user is None:
            if key.strip().startswith(WORKER_KEY_PREFIX) and svc.workers.by_key(key.strip()) is not None:
                raise HTTPException(403, "this is a worker key; it can only run jobs, not submit or read them")
            raise HTTPException(401, "unknown API key", {"WWW-Authenticate": "Bearer"})
        key_hash = hash_key(key.strip())
        svc.key_use.note(key_hash)
        return Caller(user, addr, key_hash)
    if not keyless:
        raise HTTPException(
            401, "this server needs an API key: 'Authorization: Bearer YOUR_KEY'", {"WWW-Authenticate": "Bearer"}
        )
    shared = svc.users.anonymous()
    # Reading writes nothing: an address that never wrote is the shared user, seeing nothing
    # but its own address's jobs of older releases.
    return Caller(svc.users.keyless(addr) or shared, addr, shared_id=shared.id)


def as_person(svc: Services, who: Caller) -> Caller:
    """The caller about to submit: a keyless caller gets their own person row for their
    address now, if they have none yet."""
    if not who.user.is_anonymous or who.user.id != who.shared_id or not who.client_addr:
        return who
    person = svc.users.keyless_person(who.client_addr, svc.settings.anonymous_weight)
    return Caller(person, who.client_addr, shared_id=who.shared_id)


def owned_job(svc: Services, who: Caller, job_id: str) -> Job:
    """The caller's job, or 404 (also for someone else's: existence is not disclosed)."""
    job = svc.jobs.get(job_id)
    if job is None or not who.owns(job.user_id, job.client_addr):
        raise HTTPException(404, f"no job {job_id!r} of yours")
    return job


def owned_image(svc: Services, who: Caller, image_id: str, *, on_disk: bool = False) -> StoredImage:
    """The caller's image (its job is theirs), or 404 like owned_job; with `on_disk`, also
    404 when its file is gone."""
    image = svc.images.get(image_id)
    job = svc.jobs.get(image.job_id) if image is not None else None
    if image is None or job is None or not who.owns(job.user_id, job.client_addr) or (
        on_disk and not image.path.is_file()
    ):
        raise HTTPException(404, f"no image {image_id!r} of yours")
    return image


def registered(who: Caller) -> Caller:
    """A caller with an account of their own (worker keys belong to one). Called in the route,
    not a dependency, so that a malformed body is still answered 422 first."""
    if who.user.is_anonymous:
        raise HTTPException(401, "worker keys belong to a user: send 'Authorization: Bearer YOUR_KEY'")
    return who


def admin(who: Annotated[Caller, Depends(caller)]) -> Caller:
    """An admin of this server (routes under /api/v1/admin)."""
    if who.user.is_anonymous or not who.user.is_admin:
        raise HTTPException(403, "admin only: use an admin's API key (kakumei users admin NAME)")
    return who


def workers_admin(who: Annotated[Caller, Depends(caller)]) -> Caller:
    """An admin, for every worker's record (answered in the workers routes' own words)."""
    if not getattr(who.user, "is_admin", False):
        raise HTTPException(403, "only an admin of this server can see every worker")
    return who


# The dependencies as route parameter types.
Svc = Annotated[Services, Depends(services_dep)]
Who = Annotated[Caller, Depends(caller)]
Visitor = Annotated[Caller, Depends(visitor)]
Address = Annotated[str | None, Depends(address)]
Admin = Annotated[Caller, Depends(admin)]
WorkersAdmin = Annotated[Caller, Depends(workers_admin)]
