"""Input images through the server, on both databases: img2img and inpainting give the
engine's own bytes, listings carry references and never the image data, workers and the
verifier get base64 as before."""

from __future__ import annotations

import base64
import hashlib

from imagehelpers import mask_b64, noise_b64
from support import wait_done

from kakumei.engine.metadata import read_metadata
from kakumei.schemas import GenerationRequest, input_ref
from kakumei.protocol import Capabilities
from kakumei.worker import Worker
from kakumei.worker.remote import HttpJobSource
from kakumei.server.verification import Verifier

BASE = {"prompt": "a harbour", "width": 64, "height": 64, "steps": 4, "seed": 11, "sampler_name": "Euler"}


def ref_of(b64: str) -> str:
    return input_ref(base64.b64decode(b64))


def input_rows(server) -> int:
    with server.services.db.transaction(write=False) as tx:
        return int(tx.scalar("SELECT COUNT(*) FROM input_images"))


def test_img2img_and_inpainting_give_the_engines_bytes_and_listings_carry_no_image(live_server, engine) -> None:
    image, mask = noise_b64(64, 1), mask_b64()
    img2img = {**BASE, "init_images": [image], "denoising_strength": 0.6}
    inpaint = {**img2img, "mask": mask, "seed": 12}
    with live_server.client() as client:
        submitted = [client.post("/api/v1/jobs", json=body) for body in (img2img, inpaint)]
        assert all(r.status_code == 201 for r in submitted), [r.text for r in submitted]
        assert all(image not in r.text for r in submitted)
        done = [wait_done(client, r.json()["id"]) for r in submitted]
        assert [d["state"] for d in done] == ["succeeded", "succeeded"], done
        for body, job in zip((img2img, inpaint), done):
            png = client.get(job["images"][0]["url"]).content
            direct = engine.generate(GenerationRequest(**body, model="kakumei:tiny")).images[0].png
            assert png == direct
        assert done[0]["request"]["init_images"] == [ref_of(image)] and done[0]["request"]["mask"] is None
        assert done[1]["request"]["mask"] == ref_of(mask)
        listing = client.get("/api/v1/jobs")
        gallery = client.get("/api/v1/images")
        for text in (listing.text, gallery.text, client.get(f"/api/v1/jobs/{done[1]['id']}").text):
            assert image not in text and mask not in text
        items = gallery.json()["images"]
        assert {tuple(i["request"]["init_images"]) for i in items} == {(ref_of(image),)}
    # One image sent by two jobs is stored once: the init image and the mask.
    assert input_rows(live_server) == 2


def test_a_data_url_input_keeps_its_recorded_hash_and_is_listed_by_reference(live_server) -> None:
    image = "data:image/png;base64," + noise_b64(64, 2)
    with live_server.client() as client:
        job = wait_done(client, client.post("/api/v1/jobs", json={**BASE, "init_images": [image], "denoising_strength": 0.5}).json()["id"])
        assert job["state"] == "succeeded", job
        assert job["request"]["init_images"] == [ref_of(image.partition(",")[2])]
        assert image not in client.get("/api/v1/jobs").text and image not in client.get("/api/v1/images").text
        png = client.get(job["images"][0]["url"]).content
    # The PNG records the sha256 of the text the client sent, as before references existed.
    recorded = (read_metadata(png).kakumei or {})["inputs"]["init_images_sha256"]
    assert recorded == [hashlib.sha256(image.encode()).hexdigest()]


def test_references_are_not_accepted_from_clients(live_server) -> None:
    with live_server.client() as client:
        refused = client.post("/api/v1/jobs", json={**BASE, "init_images": ["sha256:" + "a" * 64]})
        assert refused.status_code == 422 and "base64" in refused.json()["detail"]
        assert client.get("/api/v1/jobs").json()["jobs"] == []


def test_a_remote_worker_gets_base64_and_the_verifier_regenerates_from_it(make_server, engine) -> None:
    server = make_server(local_worker=False, verify_sample_rate=1.0)
    svc = server.services
    owner, _ = svc.users.add("volunteer")
    _, worker_key = svc.workers.add(owner.id, "box")
    image, mask = noise_b64(64, 3), mask_b64()
    body = {**BASE, "init_images": [image], "mask": mask, "denoising_strength": 0.7}
    with server.client() as client:
        job_id = client.post("/api/v1/jobs", json=body).json()["id"]
    with server.client(worker_key) as worker_http:
        lease = worker_http.post("/api/v1/worker/claim", json={}).json()
        assert lease["request"]["init_images"] == [image] and lease["request"]["mask"] == mask
        assert worker_http.get(f"/api/v1/worker/jobs/{job_id}").json()["request"]["init_images"] == [image]
        assert worker_http.post(f"/api/v1/worker/jobs/{job_id}/release", json={"lease_id": lease["lease_id"]}).status_code == 200
    source = HttpJobSource(server.url, worker_key)
    try:
        assert Worker(source, engine, "box", capabilities=Capabilities()).run_one()
    finally:
        source.close()
    assert svc.jobs.get(job_id).state.value == "succeeded"
    verifier = Verifier(svc.workers, svc.jobs, svc.images, engine, "trusted", max_distance=svc.settings.verify_max_distance)
    assert verifier.run_one()
    # "passed", not "unverifiable": the verifier regenerated the job from its images.
    assert svc.workers.verification_counts(svc.workers.by_name("box").id) == {"passed": 1}


def test_a1111_include_init_images_returns_the_images(live_server) -> None:
    image = noise_b64(64, 4)
    body = {"prompt": "a harbour", "width": 64, "height": 64, "steps": 4, "seed": 3, "init_images": [image],
            "denoising_strength": 0.5, "include_init_images": True}
    with live_server.client() as client:
        out = client.post("/sdapi/v1/img2img", json=body)
        assert out.status_code == 200, out.text
        assert out.json()["parameters"]["init_images"] == [image]
        assert image not in client.get("/api/v1/jobs").text
