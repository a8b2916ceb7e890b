"""/api/v1/images/{id}: a generated PNG, metadata included."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import FileResponse

from kakumei.server.deps import Svc, Who
from kakumei.server.image_access import readable_image
from kakumei.server.openapi import problems

router = APIRouter(prefix="/api/v1", tags=["images"])


@router.get("/images/{image_id}", response_class=FileResponse, responses={200: {"content": {"image/png": {}}}, **problems(401, 403, 404)})
def get_image(image_id: str, svc: Svc, who: Who) -> FileResponse:
    """The PNG, to its owner: without a key, a registered user's image is a 401 that asks for
    the key; anyone else's is a 404."""
    image = readable_image(svc, who, image_id)
    return FileResponse(image.path, media_type="image/png", filename=f"{image.job_id}-{image.index}.png")
