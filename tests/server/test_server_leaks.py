"""What the server tells anyone: no driver text, no server paths, no third-party resources."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import pytest
from support import wait_done

SMALL = {"prompt": "a red fox in snow", "width": 64, "height": 64, "steps": 2, "seed": 42}


def _server_paths(server) -> list[str]:
    """Absolute paths whose mention would tell a caller how the server's disk is laid out."""
    return [str(server.settings.home), str(server.settings.home.resolve()), str(Path.home())]


def test_healthz_says_degraded_without_driver_text(live_server, monkeypatch) -> None:
    def broken() -> None:
        raise RuntimeError('connection to server at "10.1.2.3" failed for user "kim" (/var/run/secret)')

    monkeypatch.setattr(live_server.services.db, "ping", broken)
    with live_server.client() as client:
        response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json() == {"status": "degraded", "database": "unreachable"}
    assert "10.1.2.3" not in response.text and "secret" not in response.text


@pytest.mark.parametrize("tag", ["<lora:../../etc/passwd:1>", "<lora:no_such_lora:0.5>"])
def test_lora_errors_name_the_lora_not_a_server_path(live_server, tag: str) -> None:
    with live_server.client() as client:
        job = client.post("/api/v1/jobs", json={**SMALL, "prompt": f"a fox {tag}"})
        assert job.status_code == 201, job.text
        done = wait_done(client, job.json()["id"])
    assert done["state"] == "failed"
    error = done["error"]
    assert "LoRA" in error and tag.split(":")[1] in error
    for path in _server_paths(live_server):
        assert path not in error
    assert not re.search(r"(^|[\s'\"(])/(home|root|tmp|var|etc/[a-z])", error.replace("../../etc/passwd", "")), error


def test_refiner_errors_name_the_refiner_as_given(live_server, engine) -> None:
    # A folder in the models folder the engine reads, which is no model: its message used to
    # name the folder by its absolute path. It is refused at submit now (refiners must be known
    # models), and the refusal names it as the request did.
    folder = engine.settings.models_dir / f"not-a-model-{uuid.uuid4().hex[:8]}"
    folder.mkdir(parents=True)
    try:
        with live_server.client() as client:
            refused = client.post("/api/v1/jobs", json={**SMALL, "refiner_checkpoint": folder.name})
    finally:
        folder.rmdir()
    assert refused.status_code == 400, refused.text
    message = refused.json()["detail"]
    assert folder.name in message and "refiner_checkpoint" in message
    for path in [*_server_paths(live_server), str(engine.settings.models_dir)]:
        assert path not in message


def test_docs_pages_load_nothing_from_other_origins(live_server) -> None:
    with live_server.client() as client:
        assert client.get("/openapi.json").status_code == 200
        docs = client.get("/docs")
        redoc = client.get("/redoc")
    assert redoc.status_code == 404
    if docs.status_code == 200:
        assert not re.search(r"(src|href)=[\"']?(https?:)?//", docs.text), "an external resource in /docs"
        assert "<script" not in docs.text
        assert "/api/v1/jobs" in docs.text and "openapi.json" in docs.text
