"""The AUTOMATIC1111 API as real clients use it while a job runs: interrupt keeps the images
finished so far, progress shows the live preview, sd-models carries the models' hashes. The
test drives its own worker (the real engine, over the store) so that it can act at an exact
step; the `webuiapi` package, where installed, is the client. Both databases."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import threading
from collections.abc import Callable
from typing import Any

from PIL import Image

from kakumei.engine.models import HashCache
from kakumei.server.app import create_app
from kakumei.server.job_source import StoreJobSource
from kakumei.worker import Worker
from tests.server.conftest import ADMISSION_OFF, LiveServer

SMALL = {"prompt": "a red fox in snow", "width": 64, "height": 64, "steps": 3, "seed": 42}


def stepping_worker(server: Any, engine: Any, on_beat: Callable[[Any], None]) -> Worker:
    """A worker on the server's store that calls `on_beat(progress)` after each heartbeat
    with a step (the store has the progress event by then)."""
    svc = server.services
    source = StoreJobSource(svc.jobs, svc.images)
    original = source.heartbeat

    def heartbeat(job_id: str, lease_id: str, progress: Any = None) -> Any:
        reply = original(job_id, lease_id, progress)
        if progress is not None and progress.step is not None:
            on_beat(progress)
            reply = original(job_id, lease_id, None)  # what the owner did in on_beat
        return reply

    source.heartbeat = heartbeat  # type: ignore[method-assign]
    return Worker(source, engine, "test-worker", preview_every=1, progress_interval=0.0)


def in_background(call: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    result: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: result.update(response=call()))
    thread.start()
    return thread, result


def run_until_taken(server: Any, worker: Worker, thread: threading.Thread) -> None:
    """Run jobs on `worker` until the waiting request in `thread` has its answer."""
    while thread.is_alive():
        if not worker.run_one():
            thread.join(timeout=0.05)
    thread.join()


def test_interrupt_in_the_second_batch_answers_with_both(make_server, engine) -> None:
    """As A1111: the finished first batch, and the second as far as it got; no third."""
    server = make_server(local_worker=False)
    _, key = server.services.users.add("alice")
    interrupted: list[int] = []

    def on_beat(progress: Any) -> None:
        # the second image of n_iter 3 has begun: the first is finished
        if progress.image_offset >= 1 and not interrupted:
            with server.client(key) as client:
                assert client.post("/sdapi/v1/interrupt").json() == {}
            interrupted.append(progress.image_offset)

    worker = stepping_worker(server, engine, on_beat)
    with server.client(key) as client:
        thread, result = in_background(lambda: client.post("/sdapi/v1/txt2img", json={**SMALL, "n_iter": 3}))
        run_until_taken(server, worker, thread)
    response = result["response"]
    assert interrupted == [1]
    assert response.status_code == 200, response.text
    out = response.json()
    assert len(out["images"]) == 2
    assert Image.open(io.BytesIO(base64.b64decode(out["images"][0]))).size == (64, 64)
    info = json.loads(out["info"])
    assert info["state"] == "cancelled" and info["all_seeds"] == [42, 43] and len(info["infotexts"]) == 2


def test_interrupt_of_a_single_batch_answers_with_it_partly_denoised(make_server, engine) -> None:
    """A1111 answers an interrupted batch with its images as far as they got, so a client
    that reads images[0] after an interrupt (webuiapi does) always finds one."""
    server = make_server(local_worker=False)
    _, key = server.services.users.add("alice")
    interrupted: list[int] = []

    def on_beat(progress: Any) -> None:
        if progress.step == 1 and not interrupted:
            with server.client(key) as client:
                assert client.post("/sdapi/v1/interrupt").json() == {}
            interrupted.append(progress.step)

    worker = stepping_worker(server, engine, on_beat)
    with server.client(key) as client:
        body = {**SMALL, "steps": 6, "batch_size": 2}
        thread, result = in_background(lambda: client.post("/sdapi/v1/txt2img", json=body))
        run_until_taken(server, worker, thread)
    response = result["response"]
    assert interrupted == [1]
    assert response.status_code == 200, response.text
    out = response.json()
    assert len(out["images"]) == 2
    assert {Image.open(io.BytesIO(base64.b64decode(i))).size for i in out["images"]} == {(64, 64)}
    info = json.loads(out["info"])
    assert info["state"] == "cancelled" and info["all_seeds"] == [42, 43]


def test_native_cancel_of_a_single_batch_keeps_no_half_image(make_server, engine) -> None:
    server = make_server(local_worker=False)
    _, key = server.services.users.add("alice")
    job_ids: list[str] = []

    def on_beat(progress: Any) -> None:
        if progress.step == 1 and job_ids:
            with server.client(key) as client:
                assert client.delete(f"/api/v1/jobs/{job_ids[0]}").status_code == 200

    worker = stepping_worker(server, engine, on_beat)
    with server.client(key) as client:
        job = client.post("/api/v1/jobs", json={**SMALL, "steps": 6}).json()
        job_ids.append(job["id"])
        assert worker.run_one()
        final = client.get(f"/api/v1/jobs/{job['id']}").json()
    assert final["state"] == "cancelled"
    assert final["images"] == []


def test_progress_carries_the_live_preview_unless_skipped(make_server, engine) -> None:
    server = make_server(local_worker=False)
    _, key = server.services.users.add("alice")
    seen: dict[str, Any] = {}

    def on_beat(progress: Any) -> None:
        if progress.preview is not None and "with" not in seen:
            with server.client(key) as client:
                seen["with"] = client.get("/sdapi/v1/progress").json()
                seen["skipped"] = client.get("/sdapi/v1/progress", params={"skip_current_image": "true"}).json()
                seen["preview"] = progress.preview

    worker = stepping_worker(server, engine, on_beat)
    with server.client(key) as client:
        thread, result = in_background(lambda: client.post("/sdapi/v1/txt2img", json=SMALL))
        run_until_taken(server, worker, thread)
    assert result["response"].status_code == 200
    live = seen["with"]
    assert live["state"]["sampling_step"] >= 1 and live["state"]["sampling_steps"] == 3 and live["progress"] > 0
    png = base64.b64decode(live["current_image"])  # plain base64, no data: prefix, as A1111 sends it
    assert png.startswith(b"\x89PNG") and Image.open(io.BytesIO(png)).size[0] > 0
    assert seen["preview"].endswith(live["current_image"])
    assert seen["skipped"]["current_image"] is None and seen["skipped"]["state"]["job"] == live["state"]["job"]


def test_sd_models_carry_the_hashes_images_record(live_server, tiny_settings) -> None:
    with live_server.client() as client:
        models = client.get("/sdapi/v1/sd-models").json()
        image = client.post("/sdapi/v1/txt2img", json=SMALL).json()["images"][0]
    tiny = next(m for m in models if m["model_name"] == "kakumei:tiny")
    folder = tiny_settings.models_dir / "kakumei-tiny"
    assert folder.is_dir()
    expected = HashCache(tiny_settings.home / "cache" / "hashes.json").folder_sha256(folder)
    assert tiny["sha256"] == expected and tiny["hash"] == expected[:10]
    assert tiny["filename"] == "kakumei-tiny"  # relative to the models folder: no server paths
    meta = Image.open(io.BytesIO(base64.b64decode(image))).text["parameters"]
    assert f"Model hash: {tiny['hash']}" in meta


def test_sd_models_hash_a_checkpoint_file_once(database_url, tiny_settings, tmp_path) -> None:
    home = tmp_path / "home"
    (home / "models" / "checkpoints").mkdir(parents=True)
    weights = home / "models" / "checkpoints" / "mine.safetensors"
    weights.write_bytes(b"not really weights, but a file to hash" * 1000)
    settings = tiny_settings.model_copy(
        update={"home": home, "database": database_url, "local_worker": False, "model": "mine", **ADMISSION_OFF}
    )
    # No engine: the server resolves its models itself, as `kakumei serve --no-local-worker`.
    with LiveServer(create_app(settings), settings) as server, server.client() as client:
        first = client.get("/sdapi/v1/sd-models").json()
        again = client.get("/sdapi/v1/sd-models").json()
        computed = server.app.state.model_hashes.computed
    mine = next(m for m in first if m["model_name"] == "mine")
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    assert (mine["sha256"], mine["hash"], mine["filename"]) == (digest, digest[:10], "checkpoints/mine.safetensors")
    assert again == first
    assert computed == 1  # the second listing was answered from memory, without reading the file


def test_webuiapi_client_flow(live_server) -> None:
    import webuiapi
    host, _, port = live_server.url.removeprefix("http://").rpartition(":")
    api = webuiapi.WebUIApi(host=host, port=int(port), steps=2)
    assert "kakumei:tiny" in api.util_get_model_names()
    result = api.txt2img(prompt="a red fox in snow", width=64, height=64, seed=7, batch_size=2)
    assert len(result.images) == 2 and result.image.size == (64, 64)
    assert result.info["all_seeds"] == [7, 8]
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    edited = api.img2img(images=[result.image], mask_image=mask, prompt="a blue fox", width=64, height=64, seed=7)
    assert edited.image.size == (64, 64)
    assert api.png_info(result.image).info.startswith("a red fox in snow")
    assert api.get_progress()["progress"] == 0
