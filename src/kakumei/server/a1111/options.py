"""Each caller's own A1111 options.

A1111 is a one-user program: POST /options changes the model for everyone. On a shared server
each caller gets their own options instead (kept per user, and per address for anonymous
callers), so one client choosing a checkpoint never changes another's images. They live in
the database (store/options.py): a client may set options on one server and generate on
another, or after a restart.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import Request

from kakumei.server.deps import Caller, services
from kakumei.store.options import OptionStore


class CallerOptions:
    """The options of callers, by who they are: the user, and for anonymous visitors the
    address that tells them apart (`Caller.scope_addr`)."""

    def __init__(self, store: OptionStore) -> None:
        self.store = store

    def get(self, who: Caller) -> dict[str, Any]:
        return self.store.get(who.scope_id, who.scope_addr or "")

    def update(self, who: Caller, values: Mapping[str, Any]) -> None:
        """Merge already checked values (mapping.checked_options) into the caller's own."""
        if values:
            self.store.update(who.scope_id, who.scope_addr or "", values, bounded=who.user.is_anonymous)


def caller_options(request: Request) -> CallerOptions:
    """The options of this app's callers (the store holds no state of its own)."""
    return CallerOptions(OptionStore(services(request).db))
