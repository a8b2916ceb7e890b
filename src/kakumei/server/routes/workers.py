"""Worker keys and records: a user creates keys for their machines and sees their record;
an admin sees every worker's (jobs, speed, checks, status) and can change a status."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, Field

from kakumei.schemas import OneLine
from kakumei.server.deps import Svc, Who, WorkersAdmin, registered
from kakumei.server.models import WorkerList, WorkerOut
from kakumei.server.views import worker_list, worker_out
from kakumei.server.openapi import problems
from kakumei.fairness.groups import network_of
from kakumei.store.workers import TooManyWorkers, WorkerExists, WorkerStatus

router = APIRouter(prefix="/api/v1", tags=["workers"])


class NewWorker(BaseModel):
    name: OneLine = Field(min_length=1, max_length=64, description="a name for the machine, unique on this server")


class NewWorkerKey(BaseModel):
    name: str
    key: str = Field(description="the worker key: give it to `kakumei worker --key`; it is not shown again")


class StatusIn(BaseModel):
    status: WorkerStatus


@router.post("/me/workers", status_code=201, response_model=NewWorkerKey, responses=problems(400, 401, 403, 409, 413, 429))
def add_worker(body: NewWorker, svc: Svc, who: Who) -> NewWorkerKey:
    """A worker key for one of your machines; the credits for its work go to you."""
    user = registered(who).user
    # Keys are counted per person and per network a day: one person cannot mint fleets of
    # new workers to farm the unchecked share of their jobs.
    addr = who.client_addr
    network = (network_of(addr, svc.admission.groups) if svc.admission.groups.enabled else None) if addr else None
    try:
        record, key = svc.workers.add(user.id, body.name, network=network or addr, limited=not user.is_admin)
    except TooManyWorkers as exc:
        raise HTTPException(429, str(exc)) from None
    except (WorkerExists, ValueError) as exc:
        raise HTTPException(409, str(exc)) from None
    return NewWorkerKey(name=record.name, key=key)


@router.get("/me/workers", response_model=WorkerList, responses=problems(401, 403))
def my_workers(svc: Svc, who: Who) -> WorkerList:
    return worker_list(svc, registered(who).user.id)


@router.get("/admin/workers", response_model=WorkerList, responses=problems(401, 403))
def all_workers(svc: Svc, who: WorkersAdmin) -> WorkerList:
    """Every worker's record: jobs, speed, checks and status."""
    return worker_list(svc)


@router.put("/admin/workers/{name}/status", response_model=WorkerOut, responses=problems(400, 401, 403, 404, 413))
def set_status(name: str, body: StatusIn, svc: Svc, who: WorkersAdmin) -> WorkerOut:
    """Lift a quarantine, or trust a machine you know."""
    record = svc.workers.set_status(name, body.status) and svc.workers.by_name(name)
    if not record:
        raise HTTPException(404, f"no worker named {name!r}")
    return worker_out(svc, record)
