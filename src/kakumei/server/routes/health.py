"""/healthz: the server answers and its database is reachable."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from kakumei.server.deps import services
from kakumei.server.models import Health
from kakumei.server.services import Services

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
def healthz(svc: Annotated[Services, Depends(services)]) -> Health | JSONResponse:
    try:
        with svc.db.transaction(write=False) as tx:
            tx.scalar("SELECT 1 AS one")
    except Exception as exc:  # report, do not raise: this is what monitoring reads
        return JSONResponse({"status": "error", "database": str(exc)}, status_code=503)
    return Health(status="ok", database=svc.db.dialect)
