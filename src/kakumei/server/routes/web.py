"""The web UI: static files from kakumei/web served at `/` and `/web/...`.

No build step and nothing from other origins: the Content-Security-Policy lets the page load
only this server's own files, so the UI works offline and cannot leak prompts elsewhere.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from fastapi import APIRouter, Header, HTTPException
from fastapi.responses import FileResponse, Response

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


# The page's languages: one strings file each in web/i18n/ (English is the page's own text).
LANGUAGES = tuple(sorted(p.stem for p in (WEB_DIR / "i18n").glob("*.json")))
_LANG_MARK = '<html lang="en">'


def language_of(accept_language: str | None) -> str:
    """The page language for an `Accept-Language` header: the most wanted one the page has
    (ja-JP counts as ja), else English."""
    wanted: list[tuple[float, int, str]] = []
    for i, part in enumerate((accept_language or "").split(",")[:32]):
        tag, _, params = part.strip().partition(";")
        quality = 1.0
        if params.strip().startswith("q="):
            try:
                quality = float(params.strip()[2:])
            except ValueError:
                quality = 0.0
        primary = tag.strip().lower().split("-")[0]
        if primary in LANGUAGES and quality > 0:
            wanted.append((-quality, i, primary))
    return min(wanted)[2] if wanted else "en"


@router.get("/")
def index(accept_language: str | None = Header(None, include_in_schema=False)) -> Response:
    # <html lang> carries the language picked from the browser's Accept-Language; the page
    # uses it until the visitor chooses one (kept in localStorage).
    page = (WEB_DIR / "index.html").read_text(encoding="utf-8")
    page = page.replace(_LANG_MARK, f'<html lang="{language_of(accept_language)}">', 1)
    return Response(page, media_type="text/html; charset=utf-8", headers={**HEADERS, "Vary": "Accept-Language"})


@router.get("/web/i18n/{name}")
def strings_file(name: str) -> FileResponse:
    lang = name.removesuffix(".json")
    if not name.endswith(".json") or lang not in LANGUAGES:
        raise HTTPException(404, f"no strings file {name!r}")
    return FileResponse(WEB_DIR / "i18n" / f"{lang}.json", media_type="application/json; charset=utf-8", headers=HEADERS)


@router.get("/web/{name}")
def web_file(name: str) -> FileResponse:
    if name not in FILES:
        raise HTTPException(404, f"no web file {name!r}")
    return FileResponse(WEB_DIR / name, media_type=FILES[name], headers=HEADERS)
