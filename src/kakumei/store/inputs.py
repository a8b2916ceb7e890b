"""Input images (init images, masks) stored once by content hash; the only writer of
`input_images` (migration 0005).

A job's request names its input images by reference ("sha256:<hex>" of the file's bytes,
GenerationRequest.stored_form), so that reading, listing and claiming a job never decodes
an image and the same image sent by many jobs is kept once. The engine and workers still
receive base64: server/inputs.py resolves the references where a job is handed to them.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Iterable

from kakumei.schemas import INPUT_REF_PREFIX, input_ref
from kakumei.store.db import Database, Transaction

INSERT_INPUT = """
INSERT INTO input_images (sha256, data, bytes, created_at) VALUES (?, ?, ?, ?)
ON CONFLICT (sha256) DO NOTHING
"""

# Jobs queued before migration 0005 whose request may still carry an image inline
# (pydantic writes compact JSON, so an empty list is exactly "[]"). Walked in seq order in
# slices, so a large history is not read at once.


class MissingInput(LookupError):
    """A request names a stored input image that is not there."""


class InputStore:
    """Put and get input images by reference."""

    def __init__(self, db: Database, clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.clock = clock

    def put_many(self, tx: Transaction, images: Iterable[bytes]) -> list[str]:
        """Store each image file once (a second put of the same bytes writes nothing);
        return their references. Runs in the caller's transaction, so a job row and the
        images it names commit together."""
        refs = []
        now = self.clock()
        for raw in images:
            ref = input_ref(raw)
            tx.execute(INSERT_INPUT, (ref.removeprefix(INPUT_REF_PREFIX), raw, len(raw), now))
            refs.append(ref)
        return refs

    def get_many(self, refs: Iterable[str]) -> dict[str, str]:
        """ref -> the image as base64 (standard encoding), for every ref given; raises
        MissingInput if one is not stored."""
        wanted = list(dict.fromkeys(refs))
        if not wanted:
            return {}
        digests = [r.removeprefix(INPUT_REF_PREFIX) for r in wanted]
        placeholders = ", ".join("?" for _ in digests)
        with self.db.transaction(write=False) as tx:
            rows = tx.all(f"SELECT sha256, data FROM input_images WHERE sha256 IN ({placeholders})", digests)
        found = {INPUT_REF_PREFIX + r["sha256"]: base64.b64encode(bytes(r["data"])).decode("ascii") for r in rows}
        missing = [r for r in wanted if r not in found]
        if missing:
            raise MissingInput(f"stored input image(s) missing: {', '.join(missing)}")
        return found
