"""What the image stores other than files share: a blob named by a key (store/images.py's
DbBlob, store/objects.py's ObjectBlob). Its own module so that neither imports the other."""

from __future__ import annotations

from collections.abc import Iterator

OBJECT_PREFIX = "s3:"  # a row's path naming an object in the bucket (store/objects.py)


class KeyedBlob:
    """Bytes named by a key in a store other than the file system (DbBlob, and
    store/objects.py's ObjectBlob), with the Path methods the callers use, plus `chunks()`
    (the bytes a piece at a time, to stream) and `size()` (None: not there). A row's `path`
    is `str()` of it: the store's prefix and the key."""

    prefix = ""
    key: str

    def __str__(self) -> str:
        return self.prefix + self.key

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.key!r})"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.key == self.key  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.key))

    def chunks(self) -> Iterator[bytes]:
        raise NotImplementedError

    def size(self) -> int | None:
        raise NotImplementedError

    def is_file(self) -> bool:
        return self.size() is not None

    def exists(self) -> bool:
        return self.is_file()
