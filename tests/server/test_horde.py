"""The AI Horde v2 API over loopback HTTP (real uvicorn, both databases): Horde keys, requests
with a user key and the anonymous key, status with links and with inline WebP, cancel, the
Horde's refusals, and a worker's pop, upload and submit completing a native job.
(tests/server/test_horde_sdk.py drives the same with horde_sdk itself.)"""

from __future__ import annotations

import base64
import io
import uuid

import httpx
from PIL import Image

from tests.support import wait_for

SMALL = {"prompt": "a red fox in snow", "params": {"width": 64, "height": 64, "steps": 2, "seed": "42"}}
ANON = "0000000000"


def horde_client(server, key: str | None = None, addr: str | None = None) -> httpx.Client:
    transport = httpx.HTTPTransport(local_address=addr) if addr else None
    headers = {"apikey": key} if key else {}
    return httpx.Client(base_url=server.url, headers=headers, timeout=60, transport=transport)


def horde_key(server, name: str = "alice") -> str:
    """A user and a key of the Horde's shape, made the way a user makes one."""
    _, key = server.services.users.add(name)
    with server.client(key) as client:
        made = client.post("/api/v1/me/keys", json={"label": "horde", "horde": True})
        assert made.status_code == 201, made.text
        listed = client.get("/api/v1/me/keys").json()
    assert [k["horde"] for k in listed] == [False, True]
    return made.json()["key"]


def job_of(server, request_id: str):
    """The kakumei job behind a Horde request id (its own id: workers never see it)."""
    found = server.services.horde.request(uuid.UUID(request_id).hex)
    assert found is not None
    return server.services.jobs.get(found[0])


def finished(client: httpx.Client, request_id: str) -> dict:
    def done() -> dict | None:
        check = client.get(f"/api/v2/generate/check/{request_id}")
        assert check.status_code == 200, check.text
        return check.json() if check.json()["done"] else None

    return wait_for(done, "the request to finish", seconds=120, interval=0.05)


def test_a_user_key_of_the_hordes_shape_requests_and_fetches_images(live_server) -> None:
    key = horde_key(live_server)
    assert len(key) == 22
    with horde_client(live_server, key) as client:
        me = client.get("/api/v2/find_user").json()
        assert me["username"].startswith("alice#") and me["kudos"] == 0
        sent = client.post("/api/v2/generate/async", json={**SMALL, "params": {**SMALL["params"], "n": 2}})
        assert sent.status_code == 202, sent.text
        request_id = sent.json()["id"]
        assert sent.json()["kudos"] > 0
        # the request's id is not its job's: workers see job ids, and ids are all check needs
        assert job_of(live_server, request_id).id != uuid.UUID(request_id).hex
        check = finished(client, request_id)
        assert check["finished"] == 2 and not check["faulted"]
        status = client.get(f"/api/v2/generate/status/{request_id}").json()
        assert [g["seed"] for g in status["generations"]] == ["42", "43"]
        for generation in status["generations"]:
            # r2 (the default): a link on this server that needs no key
            image = httpx.get(generation["img"], timeout=30)
            assert image.status_code == 200 and image.headers["content-type"] == "image/png"
            assert Image.open(io.BytesIO(image.content)).size == (64, 64)


def test_inline_images_are_base64_webp(live_server) -> None:
    key = horde_key(live_server)
    with horde_client(live_server, key) as client:
        request_id = client.post("/api/v2/generate/async", json={**SMALL, "r2": False}).json()["id"]
        finished(client, request_id)
        generation = client.get(f"/api/v2/generate/status/{request_id}").json()["generations"][0]
    with Image.open(io.BytesIO(base64.b64decode(generation["img"]))) as decoded:
        assert decoded.format == "WEBP" and decoded.size == (64, 64)


def test_the_anonymous_key_is_the_keyless_person_of_its_address(live_server) -> None:
    with horde_client(live_server, ANON, "127.0.0.2") as mine:
        request_id = mine.post("/api/v2/generate/async", json=SMALL).json()["id"]
        assert finished(mine, request_id)["finished"] == 1
        # as on the Horde, the request's id is its key; any other id is not found
        refused = mine.get(f"/api/v2/generate/check/{uuid.uuid4()}")
        assert refused.status_code == 404 and refused.json()["rc"] == "RequestNotFound"
    job = job_of(live_server, request_id)
    person = live_server.services.users.keyless("127.0.0.2")
    assert person is not None and job.user_id == person.id


def test_anonymous_is_refused_where_keys_are_required(make_server) -> None:
    server = make_server(allow_anonymous=False, local_worker=False)
    with horde_client(server, ANON) as client:
        refused = client.post("/api/v2/generate/async", json=SMALL)
    assert refused.status_code == 403 and refused.json()["rc"] == "AnonForbidden"


def test_refusals_are_in_the_hordes_shape(make_server) -> None:
    server = make_server(local_worker=False)
    key = horde_key(server)
    with horde_client(server, key) as client:
        for body, status, rc in [
            ({**SMALL, "params": {**SMALL["params"], "sampler_name": "k_dpm_fast"}}, 400, "UnsupportedSampler"),
            ({**SMALL, "censor_nsfw": True}, 400, "BadRequest"),
            ({**SMALL, "params": {**SMALL["params"], "post_processing": ["GFPGAN"]}}, 400, "BadRequest"),
            ({**SMALL, "models": ["stable_diffusion_xl_nonexistent"]}, 400, "UnsupportedModel"),
            ({**SMALL, "source_image": "https://example.invalid/a.png"}, 400, "SourceImageUrlInvalid"),
            ({"prompt": ""}, 400, "MissingPrompt"),
            ({**SMALL, "params": {**SMALL["params"], "width": 65}}, 400, "BadRequest"),
        ]:
            refused = client.post("/api/v2/generate/async", json=body)
            assert (refused.status_code, refused.json()["rc"]) == (status, rc), refused.text
            assert refused.json()["message"]
    with horde_client(server, "a" * 22) as nobody:
        refused = nobody.get("/api/v2/find_user")
        assert refused.status_code == 401 and refused.json()["rc"] == "InvalidAPIKey"
    # nothing was queued by any of them
    assert server.services.jobs.for_user(server.services.users.by_key(key).id) == []


def test_samplers_karras_hires_and_clip_skip_map_onto_kakumeis_request(make_server) -> None:
    server = make_server(local_worker=False)
    key = horde_key(server)
    params = {"width": 128, "height": 128, "steps": 5, "seed": "fox", "sampler_name": "k_dpmpp_2m", "karras": True,
              "hires_fix": True, "clip_skip": 2, "cfg_scale": 5, "n": 1}
    with horde_client(server, key) as client:
        sent = client.post("/api/v2/generate/async", json={"prompt": "a fox ### blurry", "params": params})
        assert sent.status_code == 202, sent.text
    job = job_of(server, sent.json()["id"])
    request = job.request
    assert (request.prompt, request.negative_prompt) == ("a fox", "blurry")
    assert (request.sampler_name, request.scheduler, request.clip_skip, request.cfg_scale) == ("DPM++ 2M", "Karras", 2, 5.0)
    assert request.enable_hr and request.hr_size == (128, 128) and (request.width, request.height) == (64, 64)
    assert request.seed >= 0  # text seeds are hashed, the same text to the same seed


def test_cancel_answers_the_status(make_server) -> None:
    server = make_server(local_worker=False)
    key = horde_key(server)
    with horde_client(server, key) as client:
        request_id = client.post("/api/v2/generate/async", json=SMALL).json()["id"]
        assert client.get(f"/api/v2/generate/check/{request_id}").json()["waiting"] == 1
        cancelled = client.delete(f"/api/v2/generate/status/{request_id}")
        assert cancelled.status_code == 200 and cancelled.json()["done"] and cancelled.json()["generations"] == []
    assert job_of(server, request_id).state.value == "cancelled"


def test_status_routes_answer_in_the_hordes_shape(live_server) -> None:
    with horde_client(live_server) as client:
        assert client.get("/api/v2/status/heartbeat").json()["message"] == "OK"
        models = client.get("/api/v2/status/models").json()
        assert [m["name"] for m in models] == live_server.services.known_models()
        assert client.get("/api/v2/status/performance").json()["queued_requests"] == 0


def test_a_horde_worker_pops_uploads_and_submits_a_native_job(make_server, engine) -> None:
    server = make_server(local_worker=False)
    key = horde_key(server, "volunteer")
    _, user_key = server.services.users.add("bob")
    with server.client(user_key) as bob:
        job = bob.post("/api/v1/jobs", json={"prompt": "a lighthouse", "width": 64, "height": 64, "steps": 2, "seed": 9, "n_iter": 2})
        assert job.status_code == 201
    job_id = job.json()["id"]
    with horde_client(server, key) as worker:
        pop = worker.post("/api/v2/generate/pop", json={"name": "gpu-1", "models": [], "max_pixels": 4096 * 4096})
        assert pop.status_code == 200, pop.text
        popped = pop.json()
        assert len(popped["ids"]) == 2 and popped["payload"]["seed"] == "9" and popped["payload"]["n_iter"] == 2
        assert server.services.jobs.get(job_id).state.value == "running"
        # the real engine makes the images, as a Horde worker would with its own
        request = server.services.jobs.get(job_id).request
        result = engine.generate(request)
        for gen_id, upload, image in zip(popped["ids"], popped["r2_uploads"], result.images, strict=True):
            webp = io.BytesIO()
            Image.open(io.BytesIO(image.png)).save(webp, format="WEBP", lossless=True)
            # a wrong token stores nothing
            assert httpx.put(upload.split("?")[0] + "?token=wrong", content=webp.getvalue()).status_code == 404
            put = httpx.put(upload, content=webp.getvalue(), headers={"Content-Type": "image/webp"})
            assert put.status_code == 200, put.text
            submitted = worker.post("/api/v2/generate/submit",
                                    json={"id": gen_id, "generation": "R2", "state": "ok", "seed": image.seed})
            assert submitted.status_code == 200, submitted.text
        assert submitted.json()["reward"] > 0
        # the job completed through the worker protocol's own completion: once
        again = worker.post("/api/v2/generate/submit", json={"id": popped["ids"][0], "generation": "R2", "state": "ok", "seed": 9})
        assert again.status_code == 404 and again.json()["rc"] == "InvalidJobID"
    done = server.services.jobs.get(job_id)
    assert done.state.value == "succeeded"
    record = server.services.workers.by_name("gpu-1")
    assert record is not None and record.jobs_done == 1
    assert [i.seed for i in server.services.images.for_job(job_id)] == [9, 10]


def test_a_worker_name_of_someone_else_is_refused(make_server) -> None:
    server = make_server(local_worker=False)
    alice, bob = horde_key(server, "alice"), horde_key(server, "bob")
    with horde_client(server, alice) as client:
        assert client.post("/api/v2/generate/pop", json={"name": "box"}).json()["id"] is None
    with horde_client(server, bob) as client:
        refused = client.post("/api/v2/generate/pop", json={"name": "box"})
    assert refused.status_code == 403 and refused.json()["rc"] == "WrongCredentials"


def test_a_faulted_generation_goes_back_to_the_queue(make_server) -> None:
    server = make_server(local_worker=False)
    key = horde_key(server)
    with horde_client(server, key) as client:
        request_id = client.post("/api/v2/generate/async", json=SMALL).json()["id"]
        popped = client.post("/api/v2/generate/pop", json={"name": "flaky"}).json()
        assert popped["id"] is not None
        faulted = client.post("/api/v2/generate/submit", json={"id": popped["id"], "generation": "", "state": "faulted", "seed": 1})
        assert faulted.status_code == 200
        check = client.get(f"/api/v2/generate/check/{request_id}").json()
    assert check["waiting"] == 1 and check["restarted"] == 1


def test_a_job_id_seen_by_workers_cannot_cancel_or_read_through_the_horde_api(make_server) -> None:
    server = make_server(local_worker=False)
    key = horde_key(server)
    with horde_client(server, key) as client:
        request_id = client.post("/api/v2/generate/async", json=SMALL).json()["id"]
    job = job_of(server, request_id)
    # a worker holds job ids (native leases, verification); they are not Horde request ids
    with horde_client(server) as stranger:
        job_uuid = str(uuid.UUID(job.id))
        assert stranger.delete(f"/api/v2/generate/status/{job_uuid}").status_code == 404
        assert stranger.get(f"/api/v2/generate/status/{job_uuid}").status_code == 404
    assert server.services.jobs.get(job.id).state.value == "queued"


def test_a_generation_is_submitted_only_by_the_worker_it_was_handed_to(make_server) -> None:
    server = make_server(local_worker=False)
    alice, bob = horde_key(server, "alice"), horde_key(server, "bob")
    with horde_client(server, alice) as client:
        client.post("/api/v2/generate/async", json=SMALL)
        popped = client.post("/api/v2/generate/pop", json={"name": "alices-box"}).json()
    with horde_client(server, bob) as thief:
        stolen = thief.post("/api/v2/generate/submit", json={"id": popped["id"], "generation": "", "state": "faulted", "seed": 0})
    assert stolen.status_code == 403 and stolen.json()["rc"] == "WrongCredentials"
    assert server.services.horde.get(uuid.UUID(popped["id"]).hex) is not None  # nothing changed
