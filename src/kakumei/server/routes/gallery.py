"""/api/v1/images: the caller's images with their recipes (the web UI's gallery), and delete.

Reading one PNG stays in images.py; this module lists and removes.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from kakumei.server.deps import Svc, Who, owned_image
from kakumei.server.models import Gallery
from kakumei.server.views import gallery_of
from kakumei.server.openapi import problems

router = APIRouter(prefix="/api/v1", tags=["images"])


@router.get("/images", response_model=Gallery, responses=problems(401, 403))
def my_images(svc: Svc, who: Who, limit: Annotated[int, Query(ge=1, le=500)] = 100) -> Gallery:
    """Your images, newest first, each with the request that made it."""
    return gallery_of(svc, who, limit)


@router.delete("/images/{image_id}", status_code=204, response_class=Response, responses=problems(401, 403, 404))
def delete_image(image_id: str, svc: Svc, who: Who) -> Response:
    """Delete one of your images (the PNG and its row); the job's record stays."""
    svc.images.delete(owned_image(svc, who, image_id).id)
    return Response(status_code=204)
