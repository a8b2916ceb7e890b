"""The web UI: static files from kakumei/web served at `/` and `/web/...`.

No build step and nothing from other origins: the Content-Security-Policy lets the page load
only this server's own files, so the UI works offline and cannot leak prompts elsewhere.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse

router = APIRouter(include_in_schema=False)

WEB_DIR = Path(str(resources.files("kakumei") / "web"))
# Only these files are served; a fixed table rules out path tricks.
FILES: dict[str, str] = {
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
CSP = (
    "default-src 'self'; img-src 'self' data: blob:; connect-src 'self'; style-src 'self'; "
    "script-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # Small files: revalidate each time (ETag) so an upgraded server never serves a stale UI.
    "Cache-Control": "no-cache",
}


@router.get("/")
def index() -> FileResponse:
    return FileResponse(WEB_DIR / "index.html", media_type="text/html; charset=utf-8", headers=HEADERS)


@router.get("/web/{name}")
def web_file(name: str) -> FileResponse:
    if name not in FILES:
        raise HTTPException(404, f"no web file {name!r}")
    return FileResponse(WEB_DIR / name, media_type=FILES[name], headers=HEADERS)
