"""/api/v1/images/{id}: a generated PNG, metadata included."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse, Response, StreamingResponse

from kakumei.server.deps import Svc, Who
from kakumei.server.image_access import readable_image
from kakumei.server.openapi import problems
from kakumei.store.blobs import KeyedBlob

router = APIRouter(prefix="/api/v1", tags=["images"])


@router.get("/images/{image_id}", response_class=FileResponse, responses={200: {"content": {"image/png": {}}}, **problems(401, 403, 404)})
def get_image(image_id: str, svc: Svc, who: Who) -> Response:
    """The PNG, to its owner: without a key, a registered user's image is a 401 that asks for
    the key; anyone else's is a 404."""
    image = readable_image(svc, who, image_id)
    filename = f"{image.job_id}-{image.index}.png"
    if isinstance(image.path, KeyedBlob):
        # Streamed a chunk at a time from the database or the bucket: never the whole image
        # in memory.
        size = image.path.size()
        if size is None:  # deleted between the check and now
            raise HTTPException(404, f"no image {image_id!r} of yours")
        headers = {"Content-Length": str(size), "Content-Disposition": f'attachment; filename="{filename}"'}
        return StreamingResponse(image.path.chunks(), media_type="image/png", headers=headers)
    return FileResponse(image.path, media_type="image/png", filename=filename)
