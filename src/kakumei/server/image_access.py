"""Who may fetch an image by its URL (/api/v1/images/{id}, the URLs every API hands out).

The owner may; anybody else is told it does not exist (404), as for jobs. One exception: a
caller without a key asking for an image of a registered user is most likely that user having
left the key out (a browser, curl, a client that does not send it for image links), so the
answer says how to authenticate (401 with a Bearer challenge) instead of "not found". Image
ids are random, so this tells nothing to someone guessing. Keyless visitors' own images
(their address's person's) still need no key, and others' keyless images stay 404.
"""

from __future__ import annotations

from fastapi import HTTPException

from kakumei.server.deps import Caller, owned_image
from kakumei.server.services import Services
from kakumei.store.images import StoredImage


def readable_image(svc: Services, who: Caller, image_id: str) -> StoredImage:
    """The caller's image with its file on disk, or 401 (keyless caller, a registered user's
    image) or 404 (anything else that is not theirs, or gone)."""
    try:
        return owned_image(svc, who, image_id, on_disk=True)
    except HTTPException:
        # Looked up again only on this path: an owner's fetch reads the image and job once.
        if who.user.is_anonymous and _belongs_to_an_account(svc, image_id):
            raise HTTPException(
                401,
                "this image belongs to an account: send its API key ('Authorization: Bearer YOUR_KEY')",
                {"WWW-Authenticate": 'Bearer realm="kakumei"'},
            ) from None
        raise


def _belongs_to_an_account(svc: Services, image_id: str) -> bool:
    """Whether the image is a registered user's (keyless people hold no key to send)."""
    image = svc.images.get(image_id)
    job = svc.jobs.get(image.job_id) if image is not None else None
    owner = svc.users.get(job.user_id) if job is not None else None
    return owner is not None and not owner.is_anonymous
