"""/api/v1/admin: users, credit grants, weights, bans, pardons, audit log. Admins only;
every change is written to the audit log with the admin's name."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query
from pydantic import BaseModel, ConfigDict, Field

from kakumei.fairness.credits import weight_source
from kakumei.server.deps import Caller, caller, services
from kakumei.server.services import Services
from kakumei.store.moderation import USER, parse_network
from kakumei.store.users import User

router = APIRouter(prefix="/api/v1/admin", tags=["admin"])


def admin(who: Annotated[Caller, Depends(caller)]) -> Caller:
    if who.user.is_anonymous or not who.user.is_admin:
        raise HTTPException(403, "admin only: use an admin's API key (kakumei users admin NAME)")
    return who


Svc = Annotated[Services, Depends(services)]
Admin = Annotated[Caller, Depends(admin)]


class UserOut(BaseModel):
    id: int
    name: str
    anonymous: bool
    admin: bool
    balance: float
    weight: float
    weight_source: str
    virtual_counter: float
    queued_jobs: int
    banned: str | None  # the ban's reason while banned


class Grant(BaseModel):
    model_config = ConfigDict(extra="forbid")
    amount: float = Field(allow_inf_nan=False)
    note: str = Field("", max_length=500)


class WeightIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    weight: float | None = Field(None, gt=0, allow_inf_nan=False)  # None: back to merit


class BanIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["user", "ip"]
    target: str = Field(min_length=1, max_length=200)  # a user name, or an address / CIDR range
    reason: str = Field(min_length=1, max_length=500)
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


def _user(svc: Services, name: str) -> User:
    user = svc.users.by_name(name)
    if user is None:
        raise HTTPException(404, f"no user named {name!r}")
    return user


def _user_out(svc: Services, user: User) -> UserOut:
    ban = None if user.is_anonymous else svc.moderation.user_ban(user.id)
    return UserOut(
        id=user.id, name=user.name, anonymous=user.is_anonymous, admin=user.is_admin, balance=user.balance,
        weight=user.weight, weight_source=weight_source(is_anonymous=user.is_anonymous, override=user.weight_override),
        virtual_counter=user.virtual_counter, queued_jobs=user.queued_jobs, banned=ban.reason if ban else None,
    )


@router.get("/users", response_model=list[UserOut])
def list_users(svc: Svc, who: Admin) -> list[UserOut]:
    return [_user_out(svc, u) for u in svc.users.list()]


@router.post("/users/{name}/grant", response_model=UserOut)
def grant(name: str, body: Grant, svc: Svc, who: Admin) -> UserOut:
    """Give credit (a negative amount takes it back)."""
    user = _user(svc, name)
    if user.is_anonymous:
        raise HTTPException(400, "anonymous visitors share one account; grant credit to a registered user")
    svc.moderation.grant(svc.ledger, user.id, user.name, body.amount, body.note, who.user.name)
    return _user_out(svc, _user(svc, name))


@router.put("/users/{name}/weight", response_model=UserOut)
def set_weight(name: str, body: WeightIn, svc: Svc, who: Admin) -> UserOut:
    """Set a weight, or send {"weight": null} to let merit decide again."""
    user = _user(svc, name)
    svc.moderation.set_weight(svc.ledger, user.id, user.name, body.weight, who.user.name)
    return _user_out(svc, _user(svc, name))


@router.get("/bans", response_model=list[BanOut])
def list_bans(svc: Svc, who: Admin) -> list[BanOut]:
    return [BanOut(**vars(b)) for b in svc.moderation.active_bans()]


def _target(svc: Services, kind: str, target: str) -> str:
    if kind == USER:
        return str(_user(svc, target).id)
    try:
        return str(parse_network(target))
    except ValueError as exc:
        raise HTTPException(400, str(exc)) from None


@router.post("/bans", response_model=BanOut, status_code=201)
def ban(body: BanIn, svc: Svc, who: Admin) -> BanOut:
    """Ban a user by name, or an address or range (CIDR)."""
    target = _target(svc, body.kind, body.target)
    if body.kind == USER and target == str(who.user.id):
        raise HTTPException(400, "you cannot ban yourself")
    seconds = None if body.hours is None else body.hours * 3600
    return BanOut(**vars(svc.moderation.ban(body.kind, target, body.reason, who.user.name, seconds=seconds)))


@router.delete("/bans")
def unban(
    svc: Svc, who: Admin, kind: Annotated[Literal["user", "ip"], Query()], target: Annotated[str, Query(min_length=1)]
) -> dict[str, int]:
    """Lift the bans of a user (by name) or an address range."""
    lifted = svc.moderation.lift(kind, _target(svc, kind, target), who.user.name)
    if not lifted:
        raise HTTPException(404, f"no active ban of {kind} {target!r}")
    return {"lifted": lifted}


@router.delete("/offences/{addr}")
def pardon(addr: str, svc: Svc, who: Admin) -> dict[str, bool]:
    """Forget an address's offences and end its timeout."""
    if not svc.moderation.pardon(addr, who.user.name):
        raise HTTPException(404, f"no offences recorded for {addr!r}")
    return {"pardoned": True}


@router.get("/audit", response_model=list[AuditOut])
def audit(svc: Svc, who: Admin, limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[AuditOut]:
    """Admin actions, newest first."""
    return [AuditOut(**vars(e)) for e in svc.moderation.audit_log(limit)]
