"""Images and input images in an S3-compatible bucket (settings `s3_bucket`, `s3_endpoint_url`,
`s3_region`, `s3_access_key_id`, `s3_secret_access_key`), through boto3: every server
configured with the bucket reaches every image, whichever server or worker made it.

An image row's `path` "s3:<key>" names object `<key>` (`images/<hex>.png`); an input image
whose row has no bytes (`data` empty, `bytes` its size) is object `inputs/<sha256>`.
Uploads are boto3's managed transfers (multipart past 8 MiB), downloads are read a chunk at a
time. Imported only when a bucket is configured, so servers without one never load boto3.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any, BinaryIO

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from kakumei.store.blobs import OBJECT_PREFIX, KeyedBlob

# One read of a download: about this much of an image in memory at a time.
CHUNK_BYTES = 256 * 1024


def _missing(exc: ClientError) -> bool:
    return exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound")


class Bucket:
    """One bucket of an S3-compatible service; thread-safe (one boto3 client)."""

    def __init__(self, bucket: str, *, endpoint_url: str | None = None, region: str | None = None,
                 access_key_id: str | None = None, secret_access_key: str | None = None) -> None:
        self.name = bucket
        self.client: Any = boto3.session.Session().client(
            "s3", endpoint_url=endpoint_url or None, region_name=region or None,
            aws_access_key_id=access_key_id or None, aws_secret_access_key=secret_access_key or None,
            config=Config(retries={"max_attempts": 5, "mode": "standard"}),
        )

    def check(self) -> None:
        """Raise when the bucket cannot be reached with these settings: a server does not
        start with images it could not store."""
        self.client.head_bucket(Bucket=self.name)

    def put(self, key: str, data: bytes | BinaryIO) -> None:
        """Upload `data`, bytes or a file read front to back (boto3 holds a part of it at a
        time, 8 MiB, not the whole file)."""
        self.client.upload_fileobj(io.BytesIO(data) if isinstance(data, bytes) else data, self.name, key)

    def chunks(self, key: str) -> Iterator[bytes]:
        """The object's bytes a chunk at a time; nothing when there is no such object."""
        try:
            body = self.client.get_object(Bucket=self.name, Key=key)["Body"]
        except ClientError as exc:
            if _missing(exc):
                return
            raise
        try:
            yield from body.iter_chunks(CHUNK_BYTES)
        finally:
            body.close()

    def get(self, key: str) -> bytes | None:
        try:
            body = self.client.get_object(Bucket=self.name, Key=key)["Body"]
        except ClientError as exc:
            if _missing(exc):
                return None
            raise
        with body:
            return body.read()

    def size(self, key: str) -> int | None:
        try:
            return int(self.client.head_object(Bucket=self.name, Key=key)["ContentLength"])
        except ClientError as exc:
            if _missing(exc):
                return None
            raise

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.name, Key=key)


class ObjectBlob(KeyedBlob):
    """An image's bytes in the bucket (as DbBlob's are in the database)."""

    prefix = OBJECT_PREFIX

    def __init__(self, bucket: Bucket, key: str) -> None:
        self.bucket = bucket
        self.key = key

    def chunks(self) -> Iterator[bytes]:
        return self.bucket.chunks(self.key)

    def read_bytes(self) -> bytes:
        data = self.bucket.get(self.key)
        if data is None:
            raise FileNotFoundError(f"no object {self.key!r} in bucket {self.bucket.name!r}")
        return data

    def size(self) -> int | None:
        return self.bucket.size(self.key)

    def unlink(self, missing_ok: bool = True) -> None:
        self.bucket.delete(self.key)
