"""The sha256 of the server's models, for listings such as /sdapi/v1/sd-models.

The hashes are the ones the engine writes into every image ("Model hash" is the first 10 hex
digits): a file's sha256, or for a diffusers folder the sha256 of its sorted (relative path,
file sha256) list, computed by the engine's own `HashCache` (kept in a cache file of its own,
so that a restarted server does not read the files again). Hashing a multi-GB checkpoint takes
seconds, so it runs in a background thread, once per version of the file (size and
modification time); a listing waits for it only briefly, and
answers None for a hash still being computed, as A1111 does for checkpoints it has not hashed.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kakumei.config import Settings

log = logging.getLogger(__name__)

# How long a listing waits for hashes being computed: small files (and cached ones) are ready,
# a big checkpoint is answered without its hash until it is.
LISTING_WAIT_SECONDS = 2.0
# The listing's own hash cache in the data dir's cache folder (same form as the engine's).
LISTING_CACHE = "listing-hashes.json"
# Suffixes that count for a folder's version (those the engine's folder hash reads).
_FOLDER_FILES = (".safetensors", ".bin", ".ckpt", ".pt", ".pth", ".json")


@dataclass(frozen=True)
class ModelFile:
    """Where a model is on disk, as a listing may show it: `filename` is relative to the
    models folder (or just the file's name): the server's own paths are nobody's business."""

    sha256: str | None
    filename: str

    @property
    def short_hash(self) -> str | None:
        """A1111's short hash: the first 10 hex digits."""
        return self.sha256[:10] if self.sha256 else None


def _version(path: Path) -> tuple[Any, ...]:
    """What changes when the model's bytes change, read with stat calls only."""
    if path.is_dir():
        return tuple(
            sorted(
                (p.relative_to(path).as_posix(), p.stat().st_size, p.stat().st_mtime_ns)
                for p in path.rglob("*")
                if p.is_file() and p.suffix in _FOLDER_FILES
            )
        )
    stat = path.stat()
    return (stat.st_size, stat.st_mtime_ns)


def _shown_name(path: Path, models_dir: Path) -> str:
    try:
        return path.resolve().relative_to(models_dir.resolve()).as_posix()
    except ValueError:
        return path.name


class ModelHashes:
    """sha256 of models by reference, kept in memory per file version and computed off the
    event loop, one model at a time."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._lock = threading.Lock()
        self._known: dict[tuple[str, tuple[Any, ...]], str] = {}
        self._running: dict[tuple[str, tuple[Any, ...]], threading.Event] = {}
        self._one_at_a_time = threading.Lock()  # hashing two big files at once helps nobody
        self.computed = 0  # hashes computed (not answered from memory), for tests

    def describe(self, refs: list[str], engine: Any | None = None, wait: float = LISTING_WAIT_SECONDS) -> dict[str, ModelFile]:
        """The models among `refs` that are files or folders on disk, with their sha256 when
        known within `wait` seconds (None while it is still being computed). `engine` resolves
        references as jobs will (its models folder); without one, the server's settings do."""
        from kakumei.engine.models import resolve_model  # torch: only when a listing asks
        from kakumei.errors import KakumeiError

        settings = getattr(engine, "settings", None) or self._settings
        found: dict[str, tuple[Path, tuple[str, tuple[Any, ...]]]] = {}
        pending: list[threading.Event] = []
        for ref in refs:
            try:
                source = resolve_model(ref, settings.models_dir)
            except KakumeiError:
                continue
            if source.kind == "hub":
                continue  # a hub id names no file of this server's until it is downloaded
            path = Path(source.location)
            try:
                key = (str(path.resolve()), _version(path))
            except OSError:  # not on disk (the tiny model before its first use), or unreadable
                continue
            found[ref] = (path, key)
            event = self._start(key, path, settings)
            if event is not None:
                pending.append(event)
        deadline = time.monotonic() + wait
        for event in pending:
            event.wait(max(0.0, deadline - time.monotonic()))
        with self._lock:
            return {
                ref: ModelFile(self._known.get(key), _shown_name(path, settings.models_dir))
                for ref, (path, key) in found.items()
            }

    def _start(self, key: tuple[str, tuple[Any, ...]], path: Path, settings: Settings) -> threading.Event | None:
        """None when the hash is known; else the event set when it is (hashing started once)."""
        with self._lock:
            if key in self._known:
                return None
            event = self._running.get(key)
            if event is not None:
                return event
            event = self._running[key] = threading.Event()
        thread = threading.Thread(target=self._hash, args=(key, path, settings, event), name="model-hash", daemon=True)
        thread.start()
        return event

    def _hash(self, key: tuple[str, tuple[Any, ...]], path: Path, settings: Settings, event: threading.Event) -> None:
        from kakumei.engine.models import HashCache

        try:
            with self._one_at_a_time:
                # A cache file of its own: the engine rewrites its hashes.json while loading a
                # model, and two writers of one file in one process could lose one's update.
                hashes = HashCache(settings.home / "cache" / LISTING_CACHE)
                digest = hashes.folder_sha256(path) if path.is_dir() else hashes.file_sha256(path)
            with self._lock:
                self._known[key] = digest
                self.computed += 1
        except OSError:
            log.warning("could not hash model %s", path.name, exc_info=True)
        finally:
            with self._lock:
                self._running.pop(key, None)
            event.set()
