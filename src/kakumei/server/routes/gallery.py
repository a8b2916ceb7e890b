"""/api/v1/images: the caller's images with their recipes (the web UI's gallery), and delete.

Reading one PNG stays in images.py; this module lists and removes.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Response
from pydantic import BaseModel, Field

from kakumei.server.deps import Caller, caller, services
from kakumei.server.inputs import referenced_request
from kakumei.server.services import Services

router = APIRouter(prefix="/api/v1", tags=["images"])


class GalleryItem(BaseModel):
    id: str
    url: str
    job_id: str
    index: int
    seed: int = Field(description="the seed this image was made with (the job's seed + index)")
    model: str
    request: dict[str, Any] = Field(
        description="the job's generation request, as submitted; input images appear as sha256: references"
    )
    infotext: str = Field(description="AUTOMATIC1111 infotext: the recipe as it is in the PNG")
    created_at: float


class Gallery(BaseModel):
    images: list[GalleryItem]


@router.get("/images", response_model=Gallery)
def my_images(
    svc: Annotated[Services, Depends(services)],
    who: Annotated[Caller, Depends(caller)],
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> Gallery:
    """Your images, newest first, each with the request that made it."""
    addr = who.scope_addr
    found = svc.images.for_user(who.user.id, client_addr=addr, limit=limit)
    return Gallery(
        images=[
            GalleryItem(
                id=g.image.id,
                url=f"/api/v1/images/{g.image.id}",
                job_id=g.image.job_id,
                index=g.image.index,
                seed=g.image.seed,
                model=g.model,
                request=referenced_request(g.request),
                infotext=g.image.infotext,
                created_at=g.image.created_at,
            )
            for g in found
        ]
    )


@router.delete("/images/{image_id}", status_code=204, response_class=Response)
def delete_image(
    image_id: str, svc: Annotated[Services, Depends(services)], who: Annotated[Caller, Depends(caller)]
) -> Response:
    """Delete one of your images (the PNG and its row); the job's record stays."""
    image = svc.images.get(image_id)
    job = svc.jobs.get(image.job_id) if image is not None else None
    if image is None or job is None or not who.owns(job.user_id, job.client_addr):
        raise HTTPException(404, f"no image {image_id!r} of yours")
    svc.images.delete(image_id)
    return Response(status_code=204)
