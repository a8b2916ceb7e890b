"""/docs: the API reference as one HTML page built from the OpenAPI document on the server.

FastAPI's own /docs and /redoc pages load their scripts and styles from a public CDN; a
server that works offline and leaks nothing to third parties serves this page instead: no
script, no external resource, and a Content-Security-Policy that forbids both.
"""

from __future__ import annotations

import html
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

router = APIRouter(include_in_schema=False)

METHODS = ("get", "post", "put", "patch", "delete")
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
STYLE = "body{font:15px/1.5 system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem}code{font-size:.95em}"


def render_docs(spec: dict[str, Any]) -> str:
    """The page: title, description, and one line per operation (method, path, summary)."""
    info = spec.get("info", {})
    title = html.escape(f"{info.get('title', 'API')} {info.get('version', '')}".strip())
    rows = []
    for path, item in sorted(spec.get("paths", {}).items()):
        for method in METHODS:
            if method in item:
                operation = item[method]
                summary = html.escape(operation.get("summary") or operation.get("operationId", ""))
                rows.append(f"<li><code>{method.upper()} {html.escape(path)}</code> {summary}</li>")
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
        f"<style>{STYLE}</style></head><body><h1>{title}</h1>"
        f"<p>{html.escape(info.get('description', ''))}</p>"
        '<p>The full OpenAPI document: <a href="openapi.json">openapi.json</a>.</p>'
        f"<ul>{''.join(rows)}</ul></body></html>"
    )


@router.get("/docs")
def docs(request: Request) -> HTMLResponse:
    return HTMLResponse(render_docs(request.app.openapi()), headers=HEADERS)
