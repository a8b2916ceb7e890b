"""A small LRU of prompt encodings: a shared server sees the same prompts again and again
(retries, "same seed, new settings", popular negative prompts), and encoding a long prompt
costs a CLIP forward pass per 77-token chunk."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any


class PromptCache:
    def __init__(self, capacity: int = 128) -> None:
        self._capacity = capacity
        self._items: OrderedDict[tuple, Any] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: tuple | None, encode: Callable[[], Any]) -> Any:
        """The cached value for `key`, or `encode()` stored under it. A None key (e.g. LoRA
        weights merged into the text encoder) always encodes."""
        if key is None:
            return encode()
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                self.hits += 1
                return self._items[key]
        value = encode()
        with self._lock:
            self.misses += 1
            self._items[key] = value
            while len(self._items) > self._capacity:
                self._items.popitem(last=False)
        return value
