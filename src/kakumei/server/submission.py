"""Submitting a generation and waiting for it: the one path every API takes into the queue.

The native jobs API, the AUTOMATIC1111 API, the OpenAI Images API and the AI Horde API all
submit through `submit_generation`, so that each request meets the same translation of Japanese
prompts, model check, fair queue and the caller's limits whatever the client speaks. Refusals are `SubmitRefused` with an HTTP status;
each API renders them in its own error shape.
"""

from __future__ import annotations

import asyncio
import base64
import math
from collections.abc import Awaitable, Callable

from anyio import to_thread

from kakumei.errors import InvalidRequest, KakumeiError
from kakumei.fairness.cost import request_cost
from kakumei.schemas import GenerationRequest, check_request
from kakumei.server.deps import Caller, as_person
from kakumei.server.services import Services
from kakumei.store.images import StoredImage
from kakumei.store.jobs import IdempotencyConflict, Job, NewJob
from kakumei.store.quotas import NotCovered, QueueFull, idempotent_replay
from kakumei.translate import TranslatorUnavailable, translate_request, translator_for

FINAL_EVENTS = frozenset({"succeeded", "failed", "cancelled"})
# How often a waiting request looks at its job's events: short enough that a finished job is
# answered promptly, long enough that many waiting clients cost the database little.
WAIT_POLL_SECONDS = 0.1


class SubmitRefused(KakumeiError):
    """The request cannot be queued; `status` is the HTTP status that says why."""

    def __init__(self, status: int, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        # Seconds after which the same request may be accepted; None where waiting won't help.
        self.retry_after = retry_after

    @property
    def headers(self) -> dict[str, str]:
        """`Retry-After` (whole seconds) where waiting helps; every API adds these."""
        if self.retry_after is None:
            return {}
        return {"Retry-After": str(max(1, math.ceil(self.retry_after)))}


def _shown(name: str, most: int = 80) -> str:
    """A name for a refusal, cut short: a sentence must not echo a huge value back."""
    text = repr(name)
    return text if len(text) <= most else text[: most - 3] + "..."


def translated(svc: Services, request: GenerationRequest) -> GenerationRequest:
    """The request with Japanese in its prompts in English (the originals recorded), as every
    API submits it; `SubmitRefused` when Japanese needs a translator this server lacks."""
    try:
        return translate_request(request, translator_for(svc.settings.translator))
    except TranslatorUnavailable as exc:
        raise SubmitRefused(422, str(exc)) from None
    except InvalidRequest as exc:
        raise SubmitRefused(422, str(exc)) from None


def submit_generation(
    svc: Services, who: Caller, request: GenerationRequest, idempotency_key: str | None = None
) -> tuple[Job, bool]:
    """Queue `request` for the caller; return the job and whether it was created (False:
    an idempotent replay). Committed before returning."""
    if request.input_refs():
        # A reference skips the image checks (it names an image the server stored after
        # checking it), so from outside only the images themselves are taken.
        raise SubmitRefused(422, "send input images (init_images, mask) as base64; sha256: references are not accepted")
    # First, so that the checks, the blocklist, the cost and the idempotency hash all see the
    # English that will be encoded (a retry translates to the same English).
    request = translated(svc, request)
    known = svc.known_models()
    model = request.model or svc.settings.model
    if model not in known:
        raise SubmitRefused(400, f"unknown model {_shown(model)}; known: {', '.join(known)}")
    # A refiner is a model too: resolving anything else would read any path on the server
    # or fetch any hub id, and its errors would tell a caller which paths exist.
    refiner = request.refiner_checkpoint
    if refiner and refiner not in known:
        raise SubmitRefused(400, f"unknown refiner_checkpoint {_shown(refiner)}; known: {', '.join(known)}")
    # Combinations no model can run are refused now, not after the job waited its turn.
    try:
        check_request(request)
    except InvalidRequest as exc:
        raise SubmitRefused(422, str(exc)) from None
    # Admission control (bans, terms, blocklist, rate limits, free-tier and queue caps) for
    # every API; an idempotent replay of an accepted job is answered without it.
    # Keyless callers' idempotency keys are told apart by address (older releases shared one
    # user among them), so that one visitor's key can never answer with another's job.
    who = as_person(svc, who)
    scope = who.scope_addr or ""
    # The factors calibrated from observed run seconds: the reservation holds what the job costs.
    cost = request_cost(request, model, svc.cost_factor())
    if idempotency_key is None or not idempotent_replay(svc.db, who.user.id, scope, idempotency_key):
        refusal = svc.admission.check(who.user, who.client_addr, request, cost)
        if refusal is not None:
            raise SubmitRefused(refusal.status, refusal.message, refusal.retry_after)
    # The row keeps references and the image files go in once, in the same transaction, so
    # that reading or listing the job never decodes its images again.
    stored, files = request.stored_form()
    new = NewJob(
        user_id=who.user.id,
        request=stored,
        model=model,
        cost=cost,
        idempotency_key=idempotency_key,
        idempotency_scope=scope,
        client_addr=who.client_addr,
        inputs=tuple(files.values()),
        group=svc.admission.group_key(who.user, who.client_addr),
    )
    try:
        # The queue caps again, in the transaction that queues the job: the check above
        # answers most refusals cheaply, this one holds when submits race.
        return svc.jobs.submit(new, svc.admission.queue_limits(who.user, who.client_addr, request))
    except IdempotencyConflict as exc:
        raise SubmitRefused(409, str(exc)) from None
    except QueueFull as full:
        refusal = svc.admission.when_full(who.user, who.client_addr, full)
        raise SubmitRefused(refusal.status, refusal.message, refusal.retry_after) from None
    except NotCovered as short:
        # Concurrent submits spent the balance first: the reservation holds in the transaction.
        refusal = svc.admission.when_not_covered(who.user, who.client_addr, request, short)
        raise SubmitRefused(refusal.status, refusal.message) from None


async def wait_finished(
    svc: Services, job_id: str, disconnected: Callable[[], Awaitable[bool]] | None = None
) -> str | None:
    """Wait until the job is final and return its final state ("succeeded", "failed",
    "cancelled"), or None when the client went away first.

    Reads the job's event log in a worker thread between sleeps, so that neither the event
    loop nor a database connection is held while the job waits in the queue. When the
    client disconnects, the job is cancelled: nobody could receive its images any more.
    """
    after = 0
    while True:
        events = await to_thread.run_sync(svc.jobs.events, job_id, after)
        for event in events:
            after = event.id
            if event.kind in FINAL_EVENTS:
                return event.kind
        if disconnected is not None and await disconnected():
            await to_thread.run_sync(svc.jobs.cancel, job_id)
            return None
        await asyncio.sleep(WAIT_POLL_SECONDS)


def image_b64(image: StoredImage) -> str:
    """A stored PNG (with its metadata) as plain base64, as A1111 and OpenAI return images."""
    return base64.b64encode(image.path.read_bytes()).decode("ascii")
