"""Request-scoped helpers: the shared services, who is calling, and owned-job lookups."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import HTTPException, Request

from kakumei.server.services import Services
from kakumei.store.jobs import Job
from kakumei.store.users import User
from kakumei.store.workers import WORKER_KEY_PREFIX


@dataclass(frozen=True)
class Caller:
    user: User
    client_addr: str | None

    @property
    def scope_addr(self) -> str | None:
        """The address that scopes this caller's own jobs, images and settings: anonymous
        visitors share one user and are told apart by address; registered users are not."""
        return self.client_addr if self.user.is_anonymous else None

    def owns(self, user_id: int, client_addr: str | None) -> bool:
        # Anonymous visitors share one user; each sees only what its own address submitted.
        if user_id != self.user.id:
            return False
        return not self.user.is_anonymous or client_addr == self.client_addr


def services(request: Request) -> Services:
    return request.app.state.services


def caller(request: Request) -> Caller:
    svc = services(request)
    header = request.headers.get("authorization")
    addr = request.client.host if request.client else None
    if header:
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise HTTPException(401, "use 'Authorization: Bearer YOUR_KEY'", {"WWW-Authenticate": "Bearer"})
        user = svc.users.by_key(key.strip())
        if user is None:
            if key.strip().startswith(WORKER_KEY_PREFIX) and svc.workers.by_key(key.strip()) is not None:
                raise HTTPException(403, "this is a worker key; it can only run jobs, not submit or read them")
            raise HTTPException(401, "unknown API key", {"WWW-Authenticate": "Bearer"})
        return Caller(user, addr)
    if not svc.settings.allow_anonymous:
        raise HTTPException(
            401, "this server needs an API key: 'Authorization: Bearer YOUR_KEY'", {"WWW-Authenticate": "Bearer"}
        )
    return Caller(svc.users.anonymous(), addr)


def owned_job(svc: Services, who: Caller, job_id: str) -> Job:
    """The caller's job, or 404 (also for someone else's: existence is not disclosed)."""
    job = svc.jobs.get(job_id)
    if job is None or not who.owns(job.user_id, job.client_addr):
        raise HTTPException(404, f"no job {job_id!r} of yours")
    return job
