"""/api/v1/options: what a client may choose (samplers, schedules, models) and the limits,
read from the same tables that validate requests (views.options_out), so a form never
offers what the server would refuse."""

from __future__ import annotations

from fastapi import APIRouter

from kakumei.server.deps import Svc
from kakumei.server.models import Options
from kakumei.server.views import options_out

router = APIRouter(prefix="/api/v1", tags=["options"])


@router.get("/options", response_model=Options)
def options(svc: Svc) -> Options:
    """Choices and limits for a generation form; needs no key."""
    return options_out(svc)
