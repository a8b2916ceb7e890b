"""horde_sdk itself (the AI Horde's Python library, from PyPI) against a live kakumei server:
the simple client's whole request with a user's Horde key and with the anonymous key, inline
WebP, check and cancel with the manual client, the status routes, and a Horde worker's pop,
upload and submit completing a job queued through the native API. Each run is a process of
its own (tests/server/horde_sdk_client.py), since horde_sdk reads AI_HORDE_URL on import."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.server.test_horde import ANON, horde_key, job_of

CLIENT = Path(__file__).with_name("horde_sdk_client.py")


def sdk(server, scenario: str, apikey: str, tmp_path: Path) -> dict:
    env = {**os.environ, "AI_HORDE_URL": f"{server.url}/api/", "HOME": str(tmp_path),
           "AIWORKER_CACHE_HOME": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, str(CLIENT), scenario, apikey], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture
def server(make_server):
    return make_server()


def test_a_users_horde_key_generates_and_downloads(server, tmp_path) -> None:
    key = horde_key(server)
    seen = sdk(server, "generate", key, tmp_path)
    assert seen["seeds"] == ["42", "43"] and seen["sizes"] == [[64, 64], [64, 64]]
    assert seen["username"].startswith("alice#")
    job = job_of(server, seen["id"])
    assert job.state.value == "succeeded" and job.user_id == server.services.users.by_key(key).id


def test_the_anonymous_key_generates_inline_webp(server, tmp_path) -> None:
    seen = sdk(server, "inline", ANON, tmp_path)
    assert seen == {"sizes": [[64, 64]], "formats": ["WEBP"]}
    person = server.services.users.keyless("127.0.0.1")
    assert person is not None and len(server.services.jobs.for_user(person.id, client_addr="127.0.0.1")) == 1


def test_check_and_cancel_with_the_manual_client(make_server, tmp_path) -> None:
    server = make_server(local_worker=False)
    seen = sdk(server, "cancel", horde_key(server), tmp_path)
    assert seen["waiting"] == 2 and seen["done"] and seen["generations"] == 0
    assert job_of(server, seen["id"]).state.value == "cancelled"


def test_status_routes(server, tmp_path) -> None:
    seen = sdk(server, "status", ANON, tmp_path)
    assert seen["message"] == "OK" and seen["models"] == server.services.known_models()


def test_a_horde_worker_completes_a_native_job(make_server, tmp_path) -> None:
    server = make_server(local_worker=False)
    key = horde_key(server, "volunteer")
    _, bob = server.services.users.add("bob")
    with server.client(bob) as client:
        job = client.post("/api/v1/jobs", json={"prompt": "a lighthouse", "negative_prompt": "fog", "width": 64,
                                                "height": 64, "steps": 2, "seed": 5, "batch_size": 2})
        assert job.status_code == 201
    seen = sdk(server, "work", key, tmp_path)
    assert len(seen["ids"]) == 2 and seen["seed"] == "5" and seen["size"] == [64, 64]
    assert seen["prompt"] == "a lighthouse ### fog" and seen["model"] == server.settings.model
    assert seen["rewards"][0] == 0 and seen["rewards"][1] > 0  # paid once the job is complete
    done = server.services.jobs.get(job.json()["id"])
    assert done.state.value == "succeeded"
    assert [i.seed for i in server.services.images.for_job(done.id)] == [5, 6]
    assert server.services.workers.by_name("sdk-worker").jobs_done == 1
