"""Where stored input images turn back into base64: the one seam per path out of the store.

Job rows name their init images and masks by reference (store/inputs.py); the engine and
every worker take base64 as before, so that images and their metadata stay byte for byte
what they were. A request is resolved here when a lease is handed to a worker (in process
or over HTTP) and when the verifier regenerates a job, and nowhere else.
"""

from __future__ import annotations

from typing import Any

from kakumei.schemas import GenerationRequest, as_input_ref
from kakumei.store.db import Database
from kakumei.store.inputs import InputStore


def resolve_inputs(db: Database, request: GenerationRequest) -> GenerationRequest:
    """`request` with each stored image reference replaced by the image as base64. A missing
    image raises MissingInput; it cannot happen for a committed job, whose images were
    written in the transaction that queued it."""
    refs = request.input_refs()
    return request.with_inputs(InputStore(db).get_many(refs)) if refs else request


def referenced_request(request: dict[str, Any]) -> dict[str, Any]:
    """A stored request as JSON (the gallery reads the row) with every input image as its
    reference, so that no image data travels in a listing."""
    init_images = request.get("init_images") or []
    mask = request.get("mask")
    refs = [as_input_ref(v) for v in init_images]
    if refs == init_images and (mask is None or as_input_ref(mask) == mask):
        return request
    return {**request, "init_images": refs, "mask": None if mask is None else as_input_ref(mask)}
