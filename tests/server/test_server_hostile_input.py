"""Hostile input at the server's edge (real uvicorn, both databases): control characters,
unbounded lists and numbers, malformed bodies and headers are refused with a 4xx that names
what is wrong, never a 5xx; and one job whose images cannot be stored fails alone."""

from __future__ import annotations

import json

import pytest

from kakumei.cli import main
from kakumei.protocol import MAX_MODELS
from kakumei.server.job_source import StoreJobSource
from kakumei.store.jobs import JobState
from kakumei.worker import Worker
from kakumei.worker.remote import HttpJobSource

JOB = {"width": 64, "height": 64, "steps": 2}


def worker_key(server, owner: str = "volunteer", name: str = "gpu-1") -> str:
    user, _ = server.services.users.add(owner)
    _, key = server.services.workers.add(user.id, name)
    return key


# -- control characters ---------------------------------------------------------------------


@pytest.mark.parametrize("field", ["prompt", "negative_prompt", "model", "refiner_checkpoint"])
def test_control_characters_in_a_request_are_refused_naming_the_field(make_server, field) -> None:
    server = make_server(local_worker=False)
    with server.client() as client:
        for bad in ("a\x00b", "a\x1bb", "a\x7fb"):
            reply = client.post("/api/v1/jobs", json={**JOB, field: bad})
            assert reply.status_code == 422, (field, bad, reply.text)
            assert field in reply.text and "control character" in reply.text
        assert client.get("/api/v1/jobs").json()["jobs"] == []


def test_prompts_keep_tabs_and_line_breaks(make_server) -> None:
    server = make_server(local_worker=False)
    with server.client() as client:
        reply = client.post("/api/v1/jobs", json={**JOB, "prompt": "a fox,\n\tin snow\r\n", "negative_prompt": "blur\nnoise"})
        assert reply.status_code == 201, reply.text
        assert reply.json()["request"]["prompt"] == "a fox,\n\tin snow\r\n"


def test_control_characters_are_refused_on_every_submission_api(make_server) -> None:
    server = make_server(local_worker=False)
    with server.client() as client:
        a1111 = client.post("/sdapi/v1/txt2img", json={**JOB, "prompt": "fox\x00"})
        assert a1111.status_code == 422 and "prompt" in a1111.text, a1111.text
        openai = client.post("/v1/images/generations", json={"prompt": "fox\x00", "size": "64x64"})
        assert openai.status_code == 400, openai.text
        error = openai.json()["error"]
        assert "prompt" in error["message"] and error["type"] == "invalid_request_error"
        assert client.get("/api/v1/jobs").json()["jobs"] == []


def test_a_control_character_in_a_path_id_is_not_found(make_server) -> None:
    server = make_server(local_worker=False)
    key = worker_key(server)
    with server.client() as client:
        for path in ("/api/v1/jobs/ab%00cd", "/api/v1/jobs/ab%00cd/events", "/api/v1/images/ab%00cd"):
            reply = client.get(path)
            assert reply.status_code == 404, (path, reply.text)
        assert client.delete("/api/v1/jobs/ab%00cd").status_code == 404
        assert client.delete("/api/v1/images/ab%00cd").status_code == 404
    with server.client(key) as worker:
        assert worker.get("/api/v1/worker/jobs/ab%00cd").status_code == 404
        assert worker.post("/api/v1/worker/jobs/ab%00cd/fail", json={"lease_id": "x", "reason": "r"}).status_code == 404


def test_a_control_character_in_an_admin_name_or_query_is_refused(make_server) -> None:
    server = make_server(local_worker=False)
    _, key = server.services.users.add("root", admin=True)
    with server.client(key) as admin:
        lifted = admin.delete("/api/v1/admin/bans", params={"kind": "user", "target": "bob\x00"})
        assert lifted.status_code == 422 and "target" in lifted.text, lifted.text
        granted = admin.post("/api/v1/admin/users/bob%00/grant", json={"amount": 1})
        assert granted.status_code == 404, granted.text
        assert admin.delete("/api/v1/admin/offences/1.2.3.4%00").status_code == 404
        banned = admin.post("/api/v1/admin/bans", json={"kind": "user", "target": "bob\x00", "reason": "spam"})
        assert banned.status_code == 422 and "target" in banned.text, banned.text
        noted = admin.post("/api/v1/admin/users/root/grant", json={"amount": 1, "note": "thanks\x00"})
        assert noted.status_code == 422 and "note" in noted.text, noted.text
        assert admin.post("/api/v1/admin/users/root/grant", json={"amount": 1, "note": "thanks,\nroot"}).status_code == 200


def test_a_control_character_in_a_worker_name_is_refused(make_server) -> None:
    server = make_server(local_worker=False)
    _, key = server.services.users.add("alice")
    with server.client(key) as client:
        for bad in ("gpu\x00", "gpu\n1", "gpu\t1"):
            reply = client.post("/api/v1/me/workers", json={"name": bad})
            assert reply.status_code == 422 and "name" in reply.text, (bad, reply.text)
        assert client.post("/api/v1/me/workers", json={"name": "gpu 1"}).status_code == 201


def test_a_worker_report_with_a_control_character_is_refused(make_server) -> None:
    server = make_server(local_worker=False)
    key = worker_key(server)
    with server.client() as client:
        job_id = client.post("/api/v1/jobs", json={**JOB, "seed": 1}).json()["id"]
    with server.client(key) as worker:
        lease = worker.post("/api/v1/worker/claim", json={}).json()
        failed = worker.post(f"/api/v1/worker/jobs/{job_id}/fail", json={"lease_id": lease["lease_id"], "reason": "oops\x00"})
        assert failed.status_code == 422 and "reason" in failed.text, failed.text
        image = {"png_base64": "AAAA", "seed": 1, "index": 0, "infotext": "fox\x00"}
        done = worker.post(f"/api/v1/worker/jobs/{job_id}/complete",
                           json={"lease_id": lease["lease_id"], "seed": 1, "images": [image]})
        assert done.status_code == 422 and "infotext" in done.text, done.text
    assert server.services.jobs.get(job_id).state == JobState.LEASED


# -- one job's images cannot be stored: it fails alone -------------------------------------


def three_jobs(server) -> list[str]:
    ids = []
    for i, name in enumerate(["ann", "bob", "cat"]):
        _, key = server.services.users.add(name)
        with server.client(key) as user:
            reply = user.post("/api/v1/jobs", json={**JOB, "prompt": f"picture {i}", "seed": i})
            assert reply.status_code == 201, reply.text
            ids.append(reply.json()["id"])
    return ids


def test_a_job_whose_completion_fails_fails_alone_in_its_batch(make_server, engine, monkeypatch) -> None:
    server = make_server(local_worker=False, worker_batch_jobs=3, fairness_slack=100.0)
    svc = server.services
    ids = three_jobs(server)
    real_complete = svc.jobs.complete

    def complete(job_id, *args, **kwargs):
        if job_id == ids[1]:
            raise RuntimeError("the disk is full")
        return real_complete(job_id, *args, **kwargs)

    monkeypatch.setattr(svc.jobs, "complete", complete)
    worker = Worker(StoreJobSource(svc.jobs, svc.images), engine, "local", max_batch_jobs=3, fairness_slack=100.0)
    assert worker.run_one()
    jobs = [svc.jobs.get(i) for i in ids]
    assert [j.state for j in jobs] == [JobState.SUCCEEDED, JobState.FAILED, JobState.SUCCEEDED]
    assert "could not be stored" in jobs[1].error and "the disk is full" in jobs[1].error
    assert jobs[1].attempts == 0 and svc.images.for_job(ids[1]) == []  # no lease ran out
    assert [len(svc.images.for_job(i)) for i in (ids[0], ids[2])] == [1, 1]


def smuggle_nul(server, job_id: str) -> None:
    """Put a NUL into a queued job's prompt past the schema (as a job queued by an earlier
    version could carry): JSON escapes it, so the row stores on both databases."""
    with server.services.db.transaction() as tx:
        row = tx.one("SELECT request FROM jobs WHERE id = ?", (job_id,))
        request = json.loads(row["request"])
        request["prompt"] = "picture\x00 of a fox"
        tx.run("UPDATE jobs SET request = ? WHERE id = ?", (json.dumps(request), job_id))


def test_a_stored_prompt_with_a_nul_fails_only_its_own_job(make_server, engine) -> None:
    server = make_server(local_worker=False, worker_batch_jobs=3, fairness_slack=100.0)
    svc = server.services
    ids = three_jobs(server)
    smuggle_nul(server, ids[1])
    assert "\x00" in svc.jobs.get(ids[1]).request.prompt  # still readable
    with server.client() as client:
        assert client.get("/api/v1/jobs").status_code == 200
    worker = Worker(StoreJobSource(svc.jobs, svc.images), engine, "local", max_batch_jobs=3, fairness_slack=100.0)
    assert worker.run_one()
    jobs = [svc.jobs.get(i) for i in ids]
    assert [jobs[0].state, jobs[2].state] == [JobState.SUCCEEDED, JobState.SUCCEEDED]
    # its infotext cannot be stored (PostgreSQL has no NUL in text): it fails now, with a
    # reason, instead of losing its lease again and again
    assert jobs[1].state == JobState.FAILED and jobs[1].attempts == 0
    assert "control character" in jobs[1].error


def test_a_stored_prompt_with_a_nul_fails_only_its_own_job_on_a_remote_worker(make_server, engine) -> None:
    server = make_server(local_worker=False, worker_batch_jobs=3, fairness_slack=100.0)
    svc = server.services
    source = HttpJobSource(server.url, worker_key(server))
    ids = three_jobs(server)
    smuggle_nul(server, ids[1])
    try:
        source.hello()
        worker = Worker(source, engine, "gpu-1", lease_seconds=source.lease_seconds, max_batch_jobs=3)
        assert worker.run_one()
        jobs = [svc.jobs.get(i) for i in ids]
        assert [jobs[0].state, jobs[2].state] == [JobState.SUCCEEDED, JobState.SUCCEEDED]
        # A remote worker's failure sends the job to another worker (one machine's trouble is
        # not the job's) at once, without waiting for its lease; after max_attempts it fails.
        assert jobs[1].state == JobState.QUEUED and jobs[1].attempts == 1 and jobs[1].lease_expires_at is None
        for _ in range(jobs[1].max_attempts - 1):
            assert worker.run_one()
    finally:
        source.close()
    failed = svc.jobs.get(ids[1])
    assert failed.state == JobState.FAILED and "control character" in failed.error


# -- bounds on what a worker announces --------------------------------------------------------


def test_a_claim_with_too_many_model_names_is_refused(make_server) -> None:
    server = make_server(local_worker=False)
    with server.client(worker_key(server)) as worker:
        many = worker.post("/api/v1/worker/claim", json={"models": [f"m{i}" for i in range(MAX_MODELS + 1)]})
        assert many.status_code == 422 and "models" in many.text and str(MAX_MODELS) in many.text
        # past PostgreSQL's limit of bind parameters in one statement
        huge = worker.post("/api/v1/worker/claim-batch", json={"models": [str(i) for i in range(100_000)]})
        assert huge.status_code == 422, huge.text[:500]
        long_name = worker.post("/api/v1/worker/claim", json={"models": ["m" * 100_000]})
        assert long_name.status_code == 422, long_name.text[:500]
        fine = worker.post("/api/v1/worker/claim", json={"models": [f"m{i}" for i in range(MAX_MODELS)]})
        assert fine.status_code == 204, fine.text[:500]


@pytest.mark.parametrize("value", [10**11, 2**63, 2**64, 1e11])
def test_a_huge_max_pixels_or_max_batch_is_refused(make_server, value) -> None:
    server = make_server(local_worker=False)
    with server.client() as client:
        assert client.post("/api/v1/jobs", json=JOB).status_code == 201
    with server.client(worker_key(server)) as worker:
        for path in ("/api/v1/worker/claim", "/api/v1/worker/claim-batch"):
            for field in ("max_pixels", "max_batch"):
                reply = worker.post(path, content=f'{{"{field}": {value}}}', headers={"Content-Type": "application/json"})
                assert reply.status_code == 422 and field in reply.text, (path, field, reply.text)
        assert worker.post("/api/v1/worker/claim", json={"max_pixels": 2**31 - 1}).status_code == 200


def test_a_long_prefer_model_is_refused(make_server) -> None:
    server = make_server(local_worker=False)
    with server.client(worker_key(server)) as worker:
        reply = worker.post("/api/v1/worker/claim-batch", json={"prefer_model": "m" * 100_000})
        assert reply.status_code == 422 and "prefer_model" in reply.text


# -- malformed bodies and headers -----------------------------------------------------------


def test_the_openai_route_refuses_deep_json_and_invalid_utf8_in_its_own_shape(make_server) -> None:
    server = make_server(local_worker=False)
    with server.client() as client:
        bodies = [
            b'{"prompt": ' + b"[" * 1000 + b"]" * 1000 + b"}",
            b"[" * 100_000 + b"]" * 100_000,
            b'{"prompt": "\xff\xfe fox"}',
            b'{"prompt": "fox"',
        ]
        for body in bodies:
            reply = client.post("/v1/images/generations", content=body, headers={"Content-Type": "application/json"})
            assert reply.status_code == 400, (body[:40], reply.text)
            error = reply.json()["error"]
            assert error["type"] == "invalid_request_error" and error["message"]


def test_the_native_routes_refuse_deep_json_and_invalid_utf8(make_server) -> None:
    server = make_server(local_worker=False)
    with server.client() as client:
        for path in ("/api/v1/jobs", "/sdapi/v1/txt2img"):
            for body in (b'{"prompt": ' + b"[" * 1000 + b"]" * 1000 + b"}", b'{"prompt": "\xff fox"}'):
                reply = client.post(path, content=body, headers={"Content-Type": "application/json"})
                assert 400 <= reply.status_code < 500, (path, body[:40], reply.text)


@pytest.mark.parametrize("header", ["1e20", "100000000000000000000", "-5", "abc", "9223372036854775808"])
def test_a_strange_last_event_id_is_ignored(make_server, header) -> None:
    server = make_server(local_worker=False)
    with server.client() as client:
        job_id = client.post("/api/v1/jobs", json=JOB).json()["id"]
        assert client.delete(f"/api/v1/jobs/{job_id}").status_code == 200
        with client.stream("GET", f"/api/v1/jobs/{job_id}/events", headers={"Last-Event-ID": header}) as reply:
            assert reply.status_code == 200
            text = "".join(reply.iter_text())
    # ignored: the stream starts from the beginning and ends with the job
    assert "event: queued" in text and "event: cancelled" in text


def test_a_last_event_id_resumes_after_that_event(make_server) -> None:
    server = make_server(local_worker=False)
    with server.client() as client:
        job_id = client.post("/api/v1/jobs", json=JOB).json()["id"]
        assert client.delete(f"/api/v1/jobs/{job_id}").status_code == 200
        first = server.services.jobs.events(job_id, 0)[0]
        with client.stream("GET", f"/api/v1/jobs/{job_id}/events", headers={"Last-Event-ID": str(first.id)}) as reply:
            text = "".join(reply.iter_text())
    assert "event: queued" not in text and "event: cancelled" in text


# -- the command line -----------------------------------------------------------------------


def test_serve_with_an_sqlite_folder_that_cannot_be_made_says_so(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("KAKUMEI_HOME", str(tmp_path / "home"))
    a_file = tmp_path / "plain-file"
    a_file.write_text("not a folder")
    for url in ("sqlite:////proc/kakumei-none/x/y.db", f"sqlite:///{a_file}/sub/kakumei.db", f"sqlite:///{a_file}/kakumei.db"):
        code = main(["serve", "--database", url])
        err = capsys.readouterr().err
        assert code == 2, (url, err)
        assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
        assert "database" in err

