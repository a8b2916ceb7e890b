"""/api/v1/me: your balance, weight, counter and share, your limits, and the server's terms."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException
from pydantic import BaseModel, ConfigDict

from kakumei.fairness.credits import current_share, weight_source
from kakumei.server.admission import terms_version
from kakumei.server.deps import Caller, caller, services
from kakumei.server.services import Services
from kakumei.store.quotas import backlogged_weights, totals

router = APIRouter(prefix="/api/v1", tags=["me"])


class FreeCapsOut(BaseModel):
    max_pixels: int
    max_steps: int
    max_images: int


class Limits(BaseModel):
    max_queued_jobs: int
    queued_jobs: int  # yours (anonymous: from your address)
    queue_length: int  # all queued jobs on the server
    free_caps: FreeCapsOut | None  # None: you are not on the free tier


class Standing(BaseModel):
    allowed: bool
    reason: str | None = None
    retry_after: float | None = None


class Terms(BaseModel):
    required: bool
    accepted: bool
    version: str | None = None
    text: str | None = None
    url: str | None = None
    accept_url: str = "/api/v1/me/terms"


class Me(BaseModel):
    name: str
    anonymous: bool
    admin: bool
    balance: float | None  # None for anonymous visitors, who share one account
    earned: float | None
    spent: float | None
    weight: float
    weight_source: str  # "merit", "admin" or "anonymous"
    virtual_counter: float
    share: float  # fraction of the machine you get while you have jobs queued
    free_tier: bool
    limits: Limits
    standing: Standing
    terms: Terms


class TermsAccept(BaseModel):
    model_config = ConfigDict(extra="forbid")
    accepted: bool
    version: str


def me_out(svc: Services, who: Caller) -> Me:
    user = svc.users.get(who.user.id) or who.user
    admission = svc.admission
    counts = admission.queue_state(user, who.client_addr)
    weights = backlogged_weights(svc.db)
    weights.pop(user.id, None)
    free = admission.free(user)
    caps = admission.caps_now(counts.total) if free else None
    refusal = admission.standing(user, who.client_addr)
    version = terms_version(svc.settings)
    addr = who.scope_addr
    earned, spent = totals(svc.db, user.id)
    return Me(
        name=user.name,
        anonymous=user.is_anonymous,
        admin=user.is_admin,
        balance=None if user.is_anonymous else user.balance,
        earned=None if user.is_anonymous else earned,
        spent=None if user.is_anonymous else spent,
        weight=user.weight,
        weight_source=weight_source(is_anonymous=user.is_anonymous, override=user.weight_override),
        virtual_counter=user.virtual_counter,
        share=current_share(user.weight, weights.values()),
        free_tier=free,
        limits=Limits(
            max_queued_jobs=svc.settings.max_queued_jobs,
            queued_jobs=counts.own,
            queue_length=counts.total,
            free_caps=None if caps is None else FreeCapsOut(
                max_pixels=caps.max_pixels, max_steps=caps.max_steps, max_images=caps.max_images),
        ),
        standing=Standing(allowed=refusal is None, reason=refusal.message if refusal else None,
                          retry_after=refusal.retry_after if refusal else None),
        terms=Terms(
            required=version is not None,
            accepted=version is None or svc.moderation.accepted_terms(user.id, addr, version),
            version=version,
            text=svc.settings.terms,
            url=svc.settings.terms_url,
        ),
    )


@router.get("/me", response_model=Me)
def get_me(svc: Annotated[Services, Depends(services)], who: Annotated[Caller, Depends(caller)]) -> Me:
    """Your figures: balance, weight (and why), counter, current share, limits, terms."""
    return me_out(svc, who)


@router.post("/me/terms", response_model=Me)
def accept_terms(
    body: TermsAccept, svc: Annotated[Services, Depends(services)], who: Annotated[Caller, Depends(caller)]
) -> Me:
    """Accept the server's terms (recorded once; anonymous visitors accept per address)."""
    version = terms_version(svc.settings)
    if version is None:
        raise HTTPException(400, "this server asks no terms; there is nothing to accept")
    if not body.accepted:
        raise HTTPException(400, "send {\"accepted\": true} to accept the terms; without them you cannot submit jobs")
    if body.version != version:
        raise HTTPException(409, f"the terms changed (now version {version}); read them again at GET /api/v1/me")
    svc.moderation.accept_terms(who.user.id, who.scope_addr, version)
    return me_out(svc, who)
