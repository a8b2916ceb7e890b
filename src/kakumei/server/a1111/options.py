"""Each caller's own A1111 options.

A1111 is a one-user program: POST /options changes the model for everyone. On a shared server
each caller gets their own options instead (kept per user, and per address for anonymous
callers), so one client choosing a checkpoint never changes another's images.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from fastapi import Request

from kakumei.server.deps import Caller

MAX_REMEMBERED_CALLERS = 10_000


class CallerOptions:
    """Each caller's own A1111 options, newest callers kept, at most MAX_REMEMBERED_CALLERS.

    In memory: a client sets options and generates on the same server, and options are only
    ever choices among what a request could say itself (override_settings)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_caller: OrderedDict[tuple[int, str | None], dict[str, Any]] = OrderedDict()

    @staticmethod
    def key(who: Caller) -> tuple[int, str | None]:
        return (who.user.id, who.scope_addr)

    def get(self, who: Caller) -> dict[str, Any]:
        with self._lock:
            return dict(self._by_caller.get(self.key(who), {}))

    def update(self, who: Caller, values: Mapping[str, Any]) -> None:
        with self._lock:
            key = self.key(who)
            merged = {**self._by_caller.pop(key, {}), **values}
            self._by_caller[key] = merged
            while len(self._by_caller) > MAX_REMEMBERED_CALLERS:
                self._by_caller.popitem(last=False)


def caller_options(request: Request) -> CallerOptions:
    """The app's CallerOptions, made on first use (created once: setdefault on the state dict
    is atomic, so two first requests cannot each make their own)."""
    state = request.app.state._state
    return state.setdefault("a1111_options", CallerOptions())
