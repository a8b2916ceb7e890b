"""The web UI's files: served at / with a policy that keeps the page on its own server, and
nothing in them that would load from the internet (the UI must work offline)."""

from __future__ import annotations

import re
from pathlib import Path

from fastapi.testclient import TestClient

from kakumei.server.app import create_app
from kakumei.server.routes.web import FILES, WEB_DIR


def test_files_load_nothing_from_other_origins() -> None:
    html = (WEB_DIR / "index.html").read_text(encoding="utf-8")
    for ref in re.findall(r'(?:src|href)="([^"]*)"', html):
        assert ref.startswith(("/", "#", "data:")), f"index.html loads {ref!r} from elsewhere"
    for name in ["index.html", *FILES]:
        text = (WEB_DIR / name).read_text(encoding="utf-8")
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text, re.IGNORECASE), name
        assert "@import" not in text and "import(" not in text, name


def test_served_with_a_same_origin_policy(tiny_settings, tmp_path: Path) -> None:
    settings = tiny_settings.model_copy(update={"home": tmp_path, "database": f"sqlite:///{tmp_path / 'k.db'}"})
    with TestClient(create_app(settings, local_worker=False)) as client:
        page = client.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "default-src 'self'" in page.headers["content-security-policy"]
        assert '<script src="/web/app.js"' in page.text
        for name, media_type in FILES.items():
            served = client.get(f"/web/{name}")
            assert served.status_code == 200 and served.headers["content-type"] == media_type
            assert served.content == (WEB_DIR / name).read_bytes()
        assert client.get("/web/index.py").status_code == 404
        assert client.get("/web/..%2Fapp.py").status_code == 404
        # The page offers sign-up only where the server says it is on.
        assert client.get("/api/v1/options").json()["signup"] == settings.signup == "off"
