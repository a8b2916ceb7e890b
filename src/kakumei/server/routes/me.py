"""/api/v1/me: your balance, weight, counter and share, your limits, and the server's terms."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict

from kakumei.server import accounts
from kakumei.server.deps import Svc, Who
from kakumei.server.models import Me
from kakumei.server.openapi import problems

router = APIRouter(prefix="/api/v1", tags=["me"])


class TermsAccept(BaseModel):
    model_config = ConfigDict(extra="forbid")
    accepted: bool
    version: str


@router.get("/me", response_model=Me, responses=problems(401, 403))
def get_me(svc: Svc, who: Who) -> Me:
    """Your figures: balance, weight (and why), counter, current share, limits, terms."""
    return accounts.me_out(svc, who)


@router.post("/me/terms", response_model=Me, responses=problems(400, 401, 403, 409, 413))
def accept_terms(body: TermsAccept, svc: Svc, who: Who) -> Me:
    """Accept the server's terms (recorded once; anonymous visitors accept per address)."""
    return accounts.accept_terms(svc, who, body.accepted, body.version)
