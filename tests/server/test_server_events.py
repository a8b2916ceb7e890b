"""Server-Sent Events of a job, read over real HTTP while the local worker runs it."""

from __future__ import annotations

import json

import httpx

SMALL = {"prompt": "a lighthouse", "width": 64, "height": 64, "steps": 10, "seed": 3}


def read_events(client: httpx.Client, url: str, headers: dict | None = None) -> list[tuple[str | None, str, dict]]:
    """(id, event, data) until the server ends the stream."""
    events, current = [], {}
    with client.stream("GET", url, headers=headers or {}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if not line:
                if "event" in current:
                    events.append((current.get("id"), current["event"], json.loads(current["data"])))
                current = {}
            elif not line.startswith(":"):
                name, _, value = line.partition(": ")
                current[name] = value
    return events


def test_events_follow_the_job_from_queue_to_images(live_server) -> None:
    with live_server.client() as client:
        job = client.post("/api/v1/jobs", json=SMALL).json()
        events = read_events(client, job["events_url"])
    kinds = [kind for _, kind, _ in events]
    assert kinds[0] == "queued" and kinds[1] == "started" and kinds[-1] == "succeeded"
    assert set(kinds[2:-1]) == {"progress"}
    queued = events[0][2]
    assert "queue_position" in queued and "eta_seconds" in queued
    progress = [data for _, kind, data in events if kind == "progress"]
    assert progress[-1]["step"] == progress[-1]["total"]
    previews = [p["preview"] for p in progress if "preview" in p]
    assert previews and all(p.startswith("data:image/png;base64,") for p in previews)
    done = events[-1][2]
    assert done["seed"] == 3 and done["images"][0]["url"].startswith("/api/v1/images/")
    assert "Seed: 3" in done["images"][0]["infotext"]


def test_events_resume_after_last_event_id(live_server) -> None:
    with live_server.client() as client:
        job = client.post("/api/v1/jobs", json={**SMALL, "steps": 2}).json()
        first = read_events(client, job["events_url"])
        resumed = read_events(client, job["events_url"], {"Last-Event-ID": first[1][0]})
    assert [e[0] for e in resumed] == [e[0] for e in first[2:]]


def test_cancel_ends_the_stream_with_cancelled(make_server) -> None:
    server = make_server(local_worker=False)
    with server.client() as client:
        job = client.post("/api/v1/jobs", json=SMALL).json()
        client.delete(f"/api/v1/jobs/{job['id']}")
        events = read_events(client, job["events_url"])
    assert [kind for _, kind, _ in events] == ["queued", "cancelled"]
