"""/healthz: the server answers and its database is reachable."""

from __future__ import annotations

import logging

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from kakumei.server.deps import Svc
from kakumei.server.models import Health

log = logging.getLogger(__name__)

router = APIRouter(tags=["health"])


@router.get(
    "/healthz",
    response_model=Health,
    responses={503: {"model": Health, "description": "degraded: the database does not answer"}},
)
def healthz(svc: Svc) -> Health | JSONResponse:
    try:
        svc.db.ping()
    except Exception:  # report, do not raise: this is what monitoring reads
        # Anyone may ask, so the answer is a word; the driver's text (hosts, users, paths)
        # goes to the operator's log.
        log.exception("healthz: the %s database does not answer", svc.db.dialect)
        return JSONResponse({"status": "degraded", "database": "unreachable"}, status_code=503)
    return Health(status="ok", database=svc.db.dialect)
