"""Refused: a request the server turns down, with the HTTP status that says why.

Raised by the server's service modules (accounts.py, worker_access.py, job_source.py) so
that they decide without speaking HTTP; app.py renders it exactly as FastAPI renders an
HTTPException (`{"detail": sentence}`, same status and headers), so the answers are the same.
"""

from __future__ import annotations

from kakumei.errors import KakumeiError


class Refused(KakumeiError):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers
