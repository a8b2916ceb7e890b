"""/healthz: the server answers and its database is reachable."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from kakumei.server.deps import Svc
from kakumei.server.models import Health

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
def healthz(svc: Svc) -> Health | JSONResponse:
    try:
        svc.db.ping()
    except Exception as exc:  # report, do not raise: this is what monitoring reads
        return JSONResponse({"status": "error", "database": str(exc)}, status_code=503)
    return Health(status="ok", database=svc.db.dialect)
