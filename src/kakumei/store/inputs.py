"""Input images (init images, masks) stored once by content hash; the only writer of
`input_images` (migration 0005).

A job's request names its input images by reference ("sha256:<hex>" of the file's bytes,
GenerationRequest.stored_form), so that reading, listing and claiming a job never decodes
an image and the same image sent by many jobs is kept once. The engine and workers still
receive base64: server/inputs.py resolves the references where a job is handed to them.

With a bucket configured (`Database.objects`, store/objects.py) the bytes go to object
`inputs/<sha256>` and the row keeps none (`data` empty, `bytes` their size); rows with bytes
stay readable.
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


# The objects of input images in the bucket: this, then the sha256.
INPUT_OBJECTS = "inputs/"


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
        bucket = self.db.objects
        for raw in images:
            ref = input_ref(raw)
            digest = ref.removeprefix(INPUT_REF_PREFIX)
            if bucket is not None and raw:
                # Before the row: named by its content, so a rolled-back job leaves an object
                # that the next put of these bytes reuses.
                bucket.put(INPUT_OBJECTS + digest, raw)
            tx.execute(INSERT_INPUT, (digest, b"" if bucket is not None else raw, len(raw), now))
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
            rows = tx.all(f"SELECT sha256, data, bytes FROM input_images WHERE sha256 IN ({placeholders})", digests)
        found = {}
        for r in rows:
            data: bytes | None = bytes(r["data"])
            if not data and int(r["bytes"]):  # in the bucket
                data = self.db.objects.get(INPUT_OBJECTS + r["sha256"]) if self.db.objects is not None else None
                if data is None:
                    continue
            found[INPUT_REF_PREFIX + r["sha256"]] = base64.b64encode(data).decode("ascii")
        missing = [r for r in wanted if r not in found]
        if missing:
            raise MissingInput(f"stored input image(s) missing: {', '.join(missing)}")
        return found
