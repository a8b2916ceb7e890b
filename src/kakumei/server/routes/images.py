"""/api/v1/images/{id}: a generated PNG, metadata included."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException
from fastapi.responses import FileResponse

from kakumei.server.deps import Caller, caller, services
from kakumei.server.services import Services

router = APIRouter(prefix="/api/v1", tags=["images"])


@router.get("/images/{image_id}", response_class=FileResponse, responses={200: {"content": {"image/png": {}}}})
def get_image(
    image_id: str, svc: Annotated[Services, Depends(services)], who: Annotated[Caller, Depends(caller)]
) -> FileResponse:
    image = svc.images.get(image_id)
    job = svc.jobs.get(image.job_id) if image is not None else None
    if image is None or job is None or not who.owns(job.user_id, job.client_addr) or not image.path.is_file():
        raise HTTPException(404, f"no image {image_id!r} of yours")
    return FileResponse(image.path, media_type="image/png", filename=f"{image.job_id}-{image.index}.png")
