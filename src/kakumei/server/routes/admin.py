"""/api/v1/admin: users, credit grants, weights, bans, pardons, audit log. Admins only;
every change is written to the audit log with the admin's name (server/accounts.py)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field

from kakumei.schemas import OneLine, Text
from kakumei.server import accounts
from kakumei.server.deps import Admin, Svc
from kakumei.server.models import UserOut
from kakumei.server.openapi import problems

router = APIRouter(prefix="/api/v1/admin", tags=["admin"])


class Grant(BaseModel):
    model_config = ConfigDict(extra="forbid")
    amount: float = Field(allow_inf_nan=False)
    note: Text = Field("", max_length=500)


class WeightIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    weight: float | None = Field(None, gt=0, allow_inf_nan=False)  # None: back to merit


class BanIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["user", "ip"]
    target: OneLine = Field(min_length=1, max_length=200)  # a user name, or an address / CIDR range
    reason: Text = Field(min_length=1, max_length=500)
    hours: float | None = Field(None, gt=0, allow_inf_nan=False)  # None: until lifted


class BanOut(BaseModel):
    id: int
    kind: str
    target: str
    reason: str
    created_by: str
    created_at: float
    expires_at: float | None


class AuditOut(BaseModel):
    id: int
    actor: str
    action: str
    target: str
    detail: dict[str, Any]
    created_at: float


@router.get("/users", response_model=list[UserOut], responses=problems(401, 403))
def list_users(svc: Svc, who: Admin) -> list[UserOut]:
    return accounts.all_users(svc)


@router.post("/users/{name}/grant", response_model=UserOut, responses=problems(400, 401, 403, 404, 413))
def grant(name: str, body: Grant, svc: Svc, who: Admin) -> UserOut:
    """Give credit (a negative amount takes it back)."""
    return accounts.grant(svc, who.user, name, body.amount, body.note)


@router.put("/users/{name}/weight", response_model=UserOut, responses=problems(400, 401, 403, 404, 413))
def set_weight(name: str, body: WeightIn, svc: Svc, who: Admin) -> UserOut:
    """Set a weight, or send {"weight": null} to let merit decide again."""
    return accounts.set_weight(svc, who.user, name, body.weight)


@router.get("/bans", response_model=list[BanOut], responses=problems(401, 403))
def list_bans(svc: Svc, who: Admin) -> list[BanOut]:
    return [BanOut(**vars(b)) for b in svc.moderation.active_bans()]


@router.post("/bans", response_model=BanOut, status_code=201, responses=problems(400, 401, 403, 404, 413))
def ban(body: BanIn, svc: Svc, who: Admin) -> BanOut:
    """Ban a user by name, or an address or range (CIDR)."""
    return BanOut(**vars(accounts.ban(svc, who.user, body.kind, body.target, body.reason, body.hours)))


@router.delete("/bans", responses=problems(400, 401, 403, 404))
def unban(
    svc: Svc, who: Admin, kind: Annotated[Literal["user", "ip"], Query()], target: Annotated[str, Query(min_length=1)]
) -> dict[str, int]:
    """Lift the bans of a user (by name) or an address range."""
    return {"lifted": accounts.lift_bans(svc, who.user, kind, target)}


@router.delete("/offences/{addr}", responses=problems(401, 403, 404))
def pardon(addr: str, svc: Svc, who: Admin) -> dict[str, bool]:
    """Forget an address's offences and end its timeout."""
    accounts.pardon(svc, who.user, addr)
    return {"pardoned": True}


@router.get("/audit", response_model=list[AuditOut], responses=problems(401, 403))
def audit(svc: Svc, who: Admin, limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[AuditOut]:
    """Admin actions, newest first."""
    return [AuditOut(**vars(e)) for e in svc.moderation.audit_log(limit)]
