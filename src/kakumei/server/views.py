"""The native API's answers, assembled from the stores: a job with its place, ETA and images,
the caller's listings, a job's events as clients see them, a worker's record.

Routes parse and render; what goes into an answer, and from which store, is decided here.
"""

from __future__ import annotations

from typing import Any

from kakumei import schemas
from kakumei.schemas import GenerationRequest
from kakumei.server.deps import Caller
from kakumei.server.inputs import referenced_request
from kakumei.server.models import (
    Gallery,
    GalleryItem,
    ImageRef,
    JobList,
    JobOut,
    Options,
    Progress,
    Sampler,
    WorkerList,
    WorkerOut,
)
from kakumei.server.services import Services
from kakumei.store.images import GalleryImage
from kakumei.store.jobs import Job, JobEvent, JobState
from kakumei.store.workers import WorkerRecord
from kakumei.translate import untranslated_note


def image_url(image_id: str) -> str:
    return f"/api/v1/images/{image_id}"


def job_out(svc: Services, job: Job) -> JobOut:
    """A job as its owner sees it: a queue position while queued, an ETA until it ends, and
    its images once it has some to show (a cancelled job keeps those it finished)."""
    position = eta = None
    if not job.finished:
        placed = svc.jobs.place(job.id)
        if placed is not None:
            place, eta = placed
            position = place.jobs_ahead if job.state == JobState.QUEUED else None
    images = []
    if job.state in (JobState.SUCCEEDED, JobState.CANCELLED):
        images = [
            ImageRef(id=i.id, url=image_url(i.id), seed=i.seed, index=i.index) for i in svc.images.for_job(job.id)
        ]
    progress = None
    if job.progress_total is not None:
        progress = Progress(step=job.progress_step, total=job.progress_total)
    return JobOut(
        id=job.id,
        state=job.state.value,
        model=job.model,
        request=job.request.referenced(),  # no image data in answers and listings
        cost=job.cost,
        queue_position=position,
        eta_seconds=eta,
        attempts=job.attempts,
        cancel_requested=job.cancel_requested,
        progress=progress,
        seed=job.seed,
        error=job.error,
        notes=[untranslated_note(job.request.untranslated)] if job.request.untranslated else [],
        images=images,
        events_url=f"/api/v1/jobs/{job.id}/events",
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
    )


# The caller's listings, newest first. Anonymous visitors share one user; `scope_addr` keeps
# each to what its own address made.


def jobs_of(svc: Services, who: Caller, limit: int) -> JobList:
    jobs = svc.jobs.for_user(who.user.id, client_addr=who.scope_addr, limit=limit)
    return JobList(jobs=[job_out(svc, j) for j in jobs])


def gallery_of(svc: Services, who: Caller, limit: int) -> Gallery:
    found = svc.images.for_user(who.user.id, client_addr=who.scope_addr, limit=limit)
    return Gallery(images=[gallery_item(g) for g in found])


def gallery_item(g: GalleryImage) -> GalleryItem:
    return GalleryItem(
        id=g.image.id,
        url=image_url(g.image.id),
        job_id=g.image.job_id,
        index=g.image.index,
        seed=g.image.seed,
        model=g.model,
        request=referenced_request(g.request),
        infotext=g.image.infotext,
        created_at=g.image.created_at,
    )


# -- a job's events as its watchers see them --------------------------------------------------


def queued_event(svc: Services, job_id: str, data: dict[str, Any]) -> dict[str, Any]:
    """A `queued` event's data with the job's current place and ETA, when it has one."""
    placed = svc.jobs.place(job_id)
    if placed is None:
        return data
    place, eta = placed
    return {**data, "queue_position": place.jobs_ahead, "eta_seconds": eta}


def public_event(svc: Services, event: JobEvent) -> dict[str, Any]:
    """An event's data for clients: a place for `queued`, the images (URLs, recipes) in place
    of their ids for a finished job."""
    data = dict(event.data)
    if event.kind == "queued":
        return queued_event(svc, event.job_id, data)
    if event.kind in ("succeeded", "cancelled"):
        images = svc.images.for_job(event.job_id)
        data["images"] = [
            {"id": i.id, "url": image_url(i.id), "seed": i.seed, "index": i.index,
             "infotext": i.infotext, "metadata": i.metadata}
            for i in images
        ]
        data.pop("image_ids", None)
    return data


# -- workers ----------------------------------------------------------------------------------


def worker_out(svc: Services, record: WorkerRecord) -> WorkerOut:
    return WorkerOut(
        name=record.name,
        owner=record.owner,
        status=record.status.value,
        jobs_done=record.jobs_done,
        jobs_failed=record.jobs_failed,
        units_done=record.units_done,
        units_per_second=record.units_per_second,
        credit_pending=svc.workers.pending_credit(record.id),
        credit_settled=record.units_paid,
        results_refused=record.results_refused,
        verifications=svc.workers.verification_counts(record.id),
        capabilities=record.capabilities,
        last_seen_at=record.last_seen_at,
        created_at=record.created_at,
    )


def worker_list(svc: Services, owner_id: int | None = None) -> WorkerList:
    """The workers of one owner, or (None) every worker."""
    return WorkerList(workers=[worker_out(svc, w) for w in svc.workers.list(owner_id)])


# -- what a generation form may offer ---------------------------------------------------------


def options_out(svc: Services) -> Options:
    """Samplers, schedules, models and limits from the tables that validate requests."""
    defaults = GenerationRequest().model_dump(
        exclude={"init_images", "mask", "model", "refiner_checkpoint", "prompt_original", "negative_prompt_original", "untranslated"}
    )
    return Options(
        samplers=[Sampler(name=n, sigma_schedules=s) for n, s in schemas.SAMPLERS.items()],
        schedules=list(schemas.SCHEDULE_NAMES),
        sigma_schedules=sorted(schemas.SIGMA_SCHEDULES),
        hr_upscalers=list(schemas.HR_UPSCALERS),
        models=svc.known_models(),
        default_model=svc.settings.model,
        allow_anonymous=svc.settings.allow_anonymous,
        signup=svc.settings.signup,
        translator=svc.settings.translator if svc.settings.translator in ("dictionary", "off") else "model",
        limits={
            "min_side": schemas.MIN_SIDE,
            "max_side": schemas.MAX_SIDE,
            "max_steps": schemas.MAX_STEPS,
            "max_batch_size": schemas.MAX_BATCH_SIZE,
            "max_n_iter": schemas.MAX_N_ITER,
            "max_seed": schemas.MAX_SEED,
            "max_cfg_scale": 30.0,
            "max_prompt_chars": schemas.MAX_PROMPT_CHARS,
        },
        defaults=defaults,
    )
