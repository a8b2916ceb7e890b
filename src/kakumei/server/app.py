"""create_app(settings): the FastAPI application of `kakumei serve`. No module-level state:
everything an app needs is opened in its lifespan and kept on app.state."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from anyio import to_thread
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

import kakumei
from kakumei.config import Settings
from kakumei.fairness.limits import Slots
from kakumei.schemas import error_field, error_sentence
from kakumei.server import openai_errors, openapi
from kakumei.server.a1111 import routes as a1111
from kakumei.server.horde import routes as horde
from kakumei.server.bodies import return_big_buffers_to_the_system
from kakumei.server.deps import plain_request
from kakumei.server.errors import Refused
from kakumei.server.limits import BodyLimits, ByteBudget
from kakumei.server.method_not_allowed import method_not_allowed
from kakumei.server.model_hashes import ModelHashes
from kakumei.server.routes import (
    accounts,
    admin,
    docs,
    events,
    gallery,
    health,
    images,
    jobs,
    me,
    metrics,
    openai,
    options,
    translate,
    web,
    worker_api,
    workers,
)
from kakumei.server.services import Services
from kakumei.store.buckets import SharedSlots


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 with one sentence per field (schemas.error_sentence: what is allowed, the value
    given when it is short; no pydantic internals)."""
    errors = [{"field": error_field(err) or "body", "message": error_sentence(err)} for err in exc.errors()]
    message = "; ".join(e["message"] for e in errors)
    return openai_errors.validation_error(request.url.path, errors, message) or JSONResponse(
        {"detail": message, "errors": errors}, status_code=422
    )


async def _refused(request: Request, exc: Refused) -> Response:
    """A service module's refusal, answered exactly as the HTTPException it stands for."""
    return await openai_errors.http_error(request, HTTPException(exc.status, str(exc), exc.headers))


def create_app(settings: Settings, engine: Any | None = None, *, local_worker: bool | None = None) -> FastAPI:
    """The server for `settings`. `engine` is used by the local worker (one is created on
    first use when None); `local_worker` defaults to settings.local_worker."""
    run_worker = settings.local_worker if local_worker is None else local_worker

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        return_big_buffers_to_the_system()
        # Sync routes and dependencies run in this loop's default thread pool: its size bounds
        # this server's database connections (one per live thread).
        to_thread.current_default_thread_limiter().total_tokens = settings.request_threads
        svc = Services.open(settings, engine)
        app.state.services = svc
        if svc.db.dialect == "postgresql":
            # Servers sharing the database share each user's open-stream allowance.
            app.state.event_streams = SharedSlots(svc.db, settings.max_event_streams_per_user)
        svc.start(local_worker=run_worker)
        try:
            yield
        finally:
            if isinstance(app.state.event_streams, SharedSlots):
                app.state.event_streams.stop()
            svc.close()

    app = FastAPI(
        title="kakumei",
        version=kakumei.__version__,
        description="Stable Diffusion for everyone: a fair, shared job queue.",
        lifespan=lifespan,
        # FastAPI's pages load scripts from a public CDN; routes/docs.py serves a local one.
        docs_url=None,
        redoc_url=None,
        dependencies=[Depends(plain_request)],
    )
    openapi.install(app)
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(Refused, _refused)  # type: ignore[arg-type]
    # Every HTTP error (unknown paths included) in OpenAI's shape on /v1, FastAPI's elsewhere.
    app.add_exception_handler(StarletteHTTPException, openai_errors.http_error)  # type: ignore[arg-type]
    app.add_exception_handler(405, method_not_allowed)  # type: ignore[arg-type]
    app.state.event_streams = Slots(settings.max_event_streams_per_user)  # routes/events.py
    app.state.model_hashes = ModelHashes(settings)  # /sdapi/v1/sd-models
    routers = (jobs, events, images, health, gallery, options, translate, me, accounts, admin, a1111, horde, openai, metrics, web, worker_api, workers, docs)
    for module in routers:
        app.include_router(module.router)
    app.state.body_budget = ByteBudget(settings.max_body_bytes)  # bodies read and parsed at once
    app.add_middleware(BodyLimits, max_body_bytes=settings.max_body_bytes, budget=app.state.body_budget)
    if settings.cors_origins:
        # Outside the body limits, so that their refusals carry CORS headers too and a web
        # app on an allowed origin can read them. Keys travel in the Authorization header,
        # not in cookies, so no credentials mode is needed.
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PUT", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Idempotency-Key"],
            expose_headers=["Location", "Retry-After", "Idempotent-Replayed"],
        )
    return app
