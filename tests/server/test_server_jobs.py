"""The native jobs API over real HTTP, on both databases, with the tiny model."""

from __future__ import annotations

import time

from imagehelpers import noise_b64
from support import wait_done

SMALL = {"prompt": "a red fox in snow", "width": 64, "height": 64, "steps": 2, "seed": 42}




def test_submit_runs_and_serves_the_png(live_server) -> None:
    with live_server.client() as client:
        response = client.post("/api/v1/jobs", json=SMALL)
        assert response.status_code == 201, response.text
        body = response.json()
        assert body["state"] in ("queued", "leased", "running", "succeeded")
        assert body["cost"] > 0 and body["model"] == "kakumei:tiny"
        assert body["eta_seconds"] is not None or body["state"] == "succeeded"
        done = wait_done(client, body["id"])
        assert done["state"] == "succeeded", done
        assert done["seed"] == 42 and len(done["images"]) == 1
        png = client.get(done["images"][0]["url"])
        assert png.status_code == 200 and png.headers["content-type"] == "image/png"
        assert png.content.startswith(b"\x89PNG") and b"Seed: 42" in png.content
        assert [j["id"] for j in client.get("/api/v1/jobs").json()["jobs"]] == [body["id"]]


def test_queued_job_reports_position_and_eta(make_server) -> None:
    server = make_server(local_worker=False)
    with server.client() as client:
        ids = [client.post("/api/v1/jobs", json=SMALL).json()["id"] for _ in range(3)]
        last = client.get(f"/api/v1/jobs/{ids[-1]}").json()
        assert last["state"] == "queued" and last["queue_position"] == 2
        assert last["eta_seconds"] > 0


def test_idempotency_key_gives_one_job(make_server) -> None:
    server = make_server(local_worker=False)
    with server.client() as client:
        first = client.post("/api/v1/jobs", json=SMALL, headers={"Idempotency-Key": "abc"})
        again = client.post("/api/v1/jobs", json=SMALL, headers={"Idempotency-Key": "abc"})
        assert first.status_code == again.status_code == 201
        assert first.json()["id"] == again.json()["id"]
        assert again.headers["Idempotent-Replayed"] == "true"
        assert len(client.get("/api/v1/jobs").json()["jobs"]) == 1
        other = client.post("/api/v1/jobs", json={**SMALL, "seed": 1}, headers={"Idempotency-Key": "abc"})
        assert other.status_code == 409 and "different request" in other.json()["detail"]


def test_malformed_requests_get_per_field_messages(live_server) -> None:
    with live_server.client() as client:
        response = client.post("/api/v1/jobs", json={**SMALL, "width": 100, "steps": 0})
        assert response.status_code == 422
        fields = {e["field"]: e["message"] for e in response.json()["errors"]}
        assert "multiple of 8" in fields["width"]
        assert "steps must be between 1 and 150" in fields["steps"]
        sampler = client.post("/api/v1/jobs", json={**SMALL, "sampler_name": "Euler z"})
        assert sampler.status_code == 422 and "unknown sampler 'Euler z'; known: Euler" in sampler.json()["detail"]
        huge = client.post("/api/v1/jobs", json={**SMALL, "width": 8192, "prompt": "x" * 20_000})
        assert huge.status_code == 422
        assert {e["field"] for e in huge.json()["errors"]} == {"width", "prompt"}
        assert client.post("/api/v1/jobs", content=b"{not json", headers={"content-type": "application/json"}).status_code == 422
        assert client.post("/api/v1/jobs", json={**SMALL, "colour": "red"}).status_code == 422
        # the same wording everywhere: the field, what is allowed, the number given
        cfg = client.post("/api/v1/jobs", json={**SMALL, "cfg_scale": 99})
        assert cfg.json()["errors"] == [{"field": "cfg_scale", "message": "cfg_scale must be at most 30, got 99"}]
        sampler_field = [e["field"] for e in sampler.json()["errors"]]
        assert sampler_field == ["sampler_name"]
        not_json = client.post("/api/v1/jobs", content=b"{not json", headers={"content-type": "application/json"})
        assert not_json.json()["detail"].startswith("the body is not valid JSON")
        # a combination no model runs is refused at submit, and nothing is queued
        both = client.post("/api/v1/jobs", json={**SMALL, "init_images": [noise_b64(64, 1)], "refiner_checkpoint": "kakumei:tiny"})
        assert both.status_code == 422 and "the refiner applies to text-to-image" in both.json()["detail"]
        assert client.get("/api/v1/jobs").json()["jobs"] == []


def test_unknown_model_names_the_known_ones(live_server) -> None:
    with live_server.client() as client:
        response = client.post("/api/v1/jobs", json={**SMALL, "model": "nobody/nothing"})
        assert response.status_code == 400
        assert "unknown model 'nobody/nothing'" in response.json()["detail"]
        assert "kakumei:tiny" in response.json()["detail"]


def test_someone_elses_job_is_not_found(make_server) -> None:
    server = make_server(local_worker=False)
    _, alice_key = server.services.users.add("alice")
    _, bob_key = server.services.users.add("bob")
    with server.client(alice_key) as alice, server.client(bob_key) as bob, server.client() as anon:
        job_id = alice.post("/api/v1/jobs", json=SMALL).json()["id"]
        for client in (bob, anon):
            assert client.get(f"/api/v1/jobs/{job_id}").status_code == 404
            assert client.delete(f"/api/v1/jobs/{job_id}").status_code == 404
            assert client.get(f"/api/v1/jobs/{job_id}/events").status_code == 404
            assert client.get("/api/v1/jobs").json()["jobs"] == []
        assert alice.get(f"/api/v1/jobs/{job_id}").json()["state"] == "queued"
        assert alice.get("/api/v1/jobs/does-not-exist").status_code == 404


def test_keys_are_checked_and_anonymous_can_be_switched_off(make_server) -> None:
    server = make_server(local_worker=False, allow_anonymous=False)
    _, key = server.services.users.add("alice")
    with server.client() as anon, server.client("kk_wrong") as wrong, server.client(key) as alice:
        assert anon.post("/api/v1/jobs", json=SMALL).status_code == 401
        assert wrong.get("/api/v1/jobs").status_code == 401
        assert alice.post("/api/v1/jobs", json=SMALL).status_code == 201


def test_cancel_works_in_every_state(live_server) -> None:
    with live_server.client() as client:
        slow = client.post("/api/v1/jobs", json={**SMALL, "steps": 150, "n_iter": 20}).json()
        queued = client.post("/api/v1/jobs", json=SMALL).json()
        deadline = time.monotonic() + 60
        while client.get(f"/api/v1/jobs/{slow['id']}").json()["state"] != "running":
            assert time.monotonic() < deadline
            time.sleep(0.02)
        cancelled_queued = client.delete(f"/api/v1/jobs/{queued['id']}").json()
        assert cancelled_queued["state"] == "cancelled"
        asked = client.delete(f"/api/v1/jobs/{slow['id']}").json()
        assert asked["cancel_requested"]
        done = wait_done(client, slow["id"])
        assert done["state"] == "cancelled"
        # Far fewer than 20 batches: the running job stopped at a step, not at the end.
        assert len(done["images"]) < 20
        assert client.delete(f"/api/v1/jobs/{slow['id']}").json()["state"] == "cancelled"


def test_health_and_docs(live_server) -> None:
    with live_server.client() as client:
        assert client.get("/healthz").json()["status"] == "ok"
        assert client.get("/docs").status_code == 200
        spec = client.get("/openapi.json").json()
        assert "/api/v1/jobs/{job_id}/events" in spec["paths"]
