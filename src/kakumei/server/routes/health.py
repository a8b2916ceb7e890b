"""/healthz: the server answers and its database is reachable."""

from __future__ import annotations

import logging

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from kakumei.config import Settings
from kakumei.errors import KakumeiError
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
    return Health(status="ok", database=svc.db.dialect, model=_model_state(svc.settings))


def _model_state(settings: Settings) -> str | None:
    """The local worker's default model: "ok: <ref>", or "missing: <ref>; <what to do>" so that
    a server whose jobs would all fail says so before the first one; None without a local worker."""
    if not settings.local_worker:
        return None
    from kakumei.engine.models import missing_model, resolve_model  # the local worker has torch loaded

    try:
        missing = missing_model(resolve_model(settings.model, settings.models_dir), settings.hf_offline)
    except KakumeiError as exc:
        missing = str(exc)
    if missing is None:
        return f"ok: {settings.model}"
    return f"missing: {settings.model}; " + " ".join(missing.split())
