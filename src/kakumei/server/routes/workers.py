"""Worker keys and records: a user creates keys for their machines and sees their record;
an admin sees every worker's (jobs, speed, checks, status) and can change a status."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException
from pydantic import BaseModel, Field

from kakumei.server.deps import Caller, caller, services
from kakumei.server.services import Services
from kakumei.store.workers import WorkerExists, WorkerRecord, WorkerStatus

router = APIRouter(prefix="/api/v1", tags=["workers"])


class WorkerOut(BaseModel):
    name: str
    owner: str
    status: str = Field(description="new, trusted, suspect or quarantined")
    jobs_done: int
    jobs_failed: int
    units_done: float = Field(description="compute units delivered")
    units_per_second: float | None = Field(None, description="speed over its completed jobs")
    verifications: dict[str, int] = Field(description="re-run checks by outcome: pending, passed, failed, ...")
    capabilities: dict | None = None
    last_seen_at: float | None = None
    created_at: float


class WorkerList(BaseModel):
    workers: list[WorkerOut]


class NewWorker(BaseModel):
    name: str = Field(min_length=1, max_length=64, description="a name for the machine, unique on this server")


class NewWorkerKey(BaseModel):
    name: str
    key: str = Field(description="the worker key: give it to `kakumei worker --key`; it is not shown again")


class StatusIn(BaseModel):
    status: WorkerStatus


def worker_out(svc: Services, record: WorkerRecord) -> WorkerOut:
    return WorkerOut(
        name=record.name,
        owner=record.owner,
        status=record.status.value,
        jobs_done=record.jobs_done,
        jobs_failed=record.jobs_failed,
        units_done=record.units_done,
        units_per_second=record.units_per_second,
        verifications=svc.workers.verification_counts(record.id),
        capabilities=record.capabilities,
        last_seen_at=record.last_seen_at,
        created_at=record.created_at,
    )


def _registered(who: Caller) -> Caller:
    if who.user.is_anonymous:
        raise HTTPException(401, "worker keys belong to a user: send 'Authorization: Bearer YOUR_KEY'")
    return who


def _admin(who: Annotated[Caller, Depends(caller)]) -> Caller:
    if not getattr(who.user, "is_admin", False):
        raise HTTPException(403, "only an admin of this server can see every worker")
    return who


Svc = Annotated[Services, Depends(services)]


@router.post("/me/workers", status_code=201, response_model=NewWorkerKey)
def add_worker(body: NewWorker, svc: Svc, who: Annotated[Caller, Depends(caller)]) -> NewWorkerKey:
    """A worker key for one of your machines; the credits for its work go to you."""
    try:
        record, key = svc.workers.add(_registered(who).user.id, body.name)
    except (WorkerExists, ValueError) as exc:
        raise HTTPException(409, str(exc)) from None
    return NewWorkerKey(name=record.name, key=key)


@router.get("/me/workers", response_model=WorkerList)
def my_workers(svc: Svc, who: Annotated[Caller, Depends(caller)]) -> WorkerList:
    return WorkerList(workers=[worker_out(svc, w) for w in svc.workers.list(_registered(who).user.id)])


@router.get("/admin/workers", response_model=WorkerList)
def all_workers(svc: Svc, who: Annotated[Caller, Depends(_admin)]) -> WorkerList:
    """Every worker's record: jobs, speed, checks and status."""
    return WorkerList(workers=[worker_out(svc, w) for w in svc.workers.list()])


@router.put("/admin/workers/{name}/status", response_model=WorkerOut)
def set_status(name: str, body: StatusIn, svc: Svc, who: Annotated[Caller, Depends(_admin)]) -> WorkerOut:
    """Lift a quarantine, or trust a machine you know."""
    if not svc.workers.set_status(name, body.status):
        raise HTTPException(404, f"no worker named {name!r}")
    record = svc.workers.by_name(name)
    assert record is not None
    return worker_out(svc, record)
