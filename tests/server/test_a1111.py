"""The AUTOMATIC1111 API (/sdapi/v1) driven as its clients drive it: plain JSON over HTTP,
base64 PNGs back, their infotext read through kakumei's own parser. Both databases."""

from __future__ import annotations

import base64
import io
import json
import threading
import time

import httpx
from PIL import Image

from kakumei.engine.metadata import parse_infotext, read_metadata
from kakumei.fairness.shares import Place
from kakumei.server.a1111.mapping import progress_response, reported_options
from kakumei.store.activity import ActiveJob

# What a typical client (e.g. the webuiapi package) sends: A1111's neutral values for the
# fields kakumei does not implement, and a key A1111 does not know.
CLIENT_DEFAULTS = {
    "eta": 1.0, "s_churn": 0, "s_tmax": 0, "s_tmin": 0, "s_noise": 1, "subseed": -1, "subseed_strength": 0.0,
    "seed_resize_from_h": 0, "seed_resize_from_w": 0, "restore_faces": False, "tiling": False,
    "override_settings": {}, "override_settings_restore_afterwards": True, "script_args": [],
    "script_name": None, "send_images": True, "save_images": False, "alwayson_scripts": {},
    "use_async": False,
}
SMALL = {"prompt": "a red fox in snow", "width": 64, "height": 64, "steps": 2, "seed": 42}


def infotext_of(b64: str) -> dict:
    png = base64.b64decode(b64)
    assert png.startswith(b"\x89PNG")
    meta = read_metadata(png)
    assert meta.parameters is not None
    return parse_infotext(meta.parameters)


def basic(name: str, key: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{name}:{key}".encode()).decode()}


def test_txt2img_answers_like_a1111_with_infotext_pngs(live_server) -> None:
    with live_server.client() as client:
        body = {**CLIENT_DEFAULTS, **SMALL, "negative_prompt": "blurry", "sampler_name": "DPM++ 2M Karras", "batch_size": 2}
        response = client.post("/sdapi/v1/txt2img", json=body)
        assert response.status_code == 200, response.text
        out = response.json()
        assert set(out) == {"images", "parameters", "info"} and len(out["images"]) == 2
        fields = [infotext_of(image) for image in out["images"]]
        assert [f["Seed"] for f in fields] == ["42", "43"]
        assert fields[0]["prompt"] == "a red fox in snow" and fields[0]["negative_prompt"] == "blurry"
        # the legacy name is split into sampler and schedule, as A1111 1.9+ does
        assert fields[0]["Sampler"] == "DPM++ 2M" and fields[0]["Schedule type"] == "Karras"
        assert fields[0]["Steps"] == "2" and fields[0]["Size"] == "64x64" and fields[0]["Model"]
        # `parameters` echoes the request with A1111's defaults; `info` is a JSON string
        assert out["parameters"]["sampler_name"] == "DPM++ 2M Karras" and out["parameters"]["cfg_scale"] == 7.0
        assert "use_async" not in out["parameters"]
        info = json.loads(out["info"])
        assert info["all_seeds"] == [42, 43] and info["seed"] == 42 and len(info["infotexts"]) == 2
        assert info["infotexts"][0].startswith("a red fox in snow") and info["sd_model_name"] == fields[0]["Model"]
        # png-info reads back what txt2img wrote
        pnginfo = client.post("/sdapi/v1/png-info", json={"image": out["images"][1]}).json()
        assert pnginfo["parameters"]["Seed"] == "43" and pnginfo["parameters"]["Size-1"] == "64"
        assert pnginfo["parameters"]["Prompt"] == "a red fox in snow" and pnginfo["info"] == info["infotexts"][1]
        # the job went through the native queue like any other
        assert len(client.get("/api/v1/jobs").json()["jobs"]) == 1


def test_img2img_and_inpainting(live_server) -> None:
    with live_server.client() as client:
        source = client.post("/sdapi/v1/txt2img", json=SMALL).json()["images"][0]
        mask = Image.new("L", (64, 64), 0)
        mask.paste(255, (16, 16, 48, 48))
        buf = io.BytesIO()
        mask.save(buf, format="PNG")
        mask_b64 = base64.b64encode(buf.getvalue()).decode()
        body = {**SMALL, "init_images": ["data:image/png;base64," + source], "denoising_strength": 0.5, "mask": mask_b64}
        response = client.post("/sdapi/v1/img2img", json=body)
        assert response.status_code == 200, response.text
        out = response.json()
        assert out["parameters"]["init_images"] is None and out["parameters"]["mask"] is None
        assert out["parameters"]["inpainting_fill"] == 0 and out["parameters"]["inpaint_full_res"] is True
        image = Image.open(io.BytesIO(base64.b64decode(out["images"][0])))
        assert image.size == (64, 64)
        assert infotext_of(out["images"][0])["Seed"] == "42"
        assert json.loads(out["info"])["denoising_strength"] == 0.5
        missing = client.post("/sdapi/v1/img2img", json=SMALL)
        assert missing.status_code == 400 and "init_images" in missing.json()["detail"]


def test_what_would_change_the_image_is_refused_before_queueing(live_server) -> None:
    refused = [
        {"script_name": "X/Y/Z plot"},
        {"subseed_strength": 0.5},
        {"restore_faces": True},
        {"override_settings": {"eta_noise_seed_delta": 31337}},
        {"alwayson_scripts": {"controlnet": {"args": [{"enabled": True}]}}},
        {"sampler_name": "Euler a", "eta": 0.5},  # (Euler ignores eta, in A1111 too)
        {"enable_hr": True, "hr_prompt": "something else"},
    ]
    with live_server.client() as client:
        for fields in refused:
            response = client.post("/sdapi/v1/txt2img", json={**SMALL, **fields})
            assert response.status_code == 400, (fields, response.text)
            assert "kakumei" in response.json()["detail"]
        for fields, message in (({"width": 100}, "multiple of 8"), ({"sampler_name": "Euler z"}, "unknown sampler 'Euler z'")):
            bad = client.post("/sdapi/v1/txt2img", json={**SMALL, **fields})
            assert bad.status_code == 422 and message in bad.json()["detail"]
        assert client.get("/api/v1/jobs").json()["jobs"] == []


def test_options_belong_to_each_caller(live_server) -> None:
    _, alice_key = live_server.services.users.add("alice")
    _, bob_key = live_server.services.users.add("bob")
    with live_server.client(alice_key) as alice, live_server.client(bob_key) as bob:
        options = alice.get("/sdapi/v1/options").json()
        assert options["sd_model_checkpoint"] == "kakumei:tiny" and options["CLIP_stop_at_last_layers"] == 1
        titles = [m["title"] for m in alice.get("/sdapi/v1/sd-models").json()]
        assert "kakumei:tiny" in titles
        assert alice.post("/sdapi/v1/options", json={"sd_model_checkpoint": titles[0], "CLIP_stop_at_last_layers": 2, "samples_format": "png"}).status_code == 200
        unknown = alice.post("/sdapi/v1/options", json={"sd_model_checkpoint": "nothing.safetensors [abc]"})
        assert unknown.status_code == 400 and "unknown checkpoint" in unknown.json()["detail"]
        assert alice.post("/sdapi/v1/options", json={"randn_source": "GPU"}).status_code == 400
        assert alice.get("/sdapi/v1/options").json()["CLIP_stop_at_last_layers"] == 2
        assert bob.get("/sdapi/v1/options").json()["CLIP_stop_at_last_layers"] == 1
        image = alice.post("/sdapi/v1/txt2img", json=SMALL).json()["images"][0]
        assert infotext_of(image)["Clip skip"] == "2"
        # override_settings applies to one request only
        image = bob.post("/sdapi/v1/txt2img", json={**SMALL, "override_settings": {"CLIP_stop_at_last_layers": 3}}).json()["images"][0]
        assert infotext_of(image)["Clip skip"] == "3"
        assert bob.get("/sdapi/v1/options").json()["CLIP_stop_at_last_layers"] == 1


def test_http_basic_auth_when_the_operator_asks_for_it(make_server) -> None:
    server = make_server(allow_anonymous=False, a1111_auth="basic", local_worker=False)
    _, key = server.services.users.add("alice")
    with httpx.Client(base_url=server.url) as client:
        assert client.get("/sdapi/v1/sd-models", headers=basic("alice", key)).status_code == 200
        nobody = client.get("/sdapi/v1/sd-models")
        assert nobody.status_code == 401 and nobody.headers["www-authenticate"].startswith("Basic")
        assert client.get("/sdapi/v1/sd-models", headers=basic("alice", "wrong")).status_code == 401
        assert client.get("/sdapi/v1/sd-models", headers=basic("bob", key)).status_code == 401
        assert client.get("/sdapi/v1/sd-models", headers={"Authorization": f"Bearer {key}"}).status_code == 401


def test_progress_and_interrupt_act_on_the_callers_own_job(make_server) -> None:
    server = make_server(local_worker=False)  # the job stays queued until interrupted
    _, alice_key = server.services.users.add("alice")
    _, bob_key = server.services.users.add("bob")
    result: dict = {}

    def generate() -> None:
        with server.client(alice_key) as client:
            result["response"] = client.post("/sdapi/v1/txt2img", json=SMALL)

    thread = threading.Thread(target=generate)
    thread.start()
    with server.client(alice_key) as alice, server.client(bob_key) as bob:
        deadline = time.monotonic() + 30
        while (progress := alice.get("/sdapi/v1/progress").json())["state"]["job"] == "":
            assert time.monotonic() < deadline, "alice's job never showed up"
            time.sleep(0.05)
        assert progress["progress"] == 0 and progress["state"]["job_count"] == 1
        assert "queue" in progress["textinfo"]
        assert bob.get("/sdapi/v1/progress").json()["state"]["job"] == ""
        assert bob.post("/sdapi/v1/interrupt").status_code == 200
        assert server.services.jobs.get(progress["state"]["job"]).state == "queued"
        assert alice.post("/sdapi/v1/interrupt").json() == {}
        thread.join(timeout=60)
    response = result["response"]
    assert response.status_code == 200 and response.json()["images"] == []
    assert json.loads(response.json()["info"])["state"] == "cancelled"


def test_listing_endpoints_answer_in_a1111_shapes(live_server) -> None:
    with live_server.client() as client:
        samplers = client.get("/sdapi/v1/samplers").json()
        assert {"name": "Euler a", "aliases": ["k_euler_a", "k_euler_ancestral"], "options": {}} in samplers
        schedulers = client.get("/sdapi/v1/schedulers").json()
        assert {s["label"] for s in schedulers} >= {"Automatic", "Karras"} and schedulers[0]["name"] == "automatic"
        assert {u["name"] for u in client.get("/sdapi/v1/upscalers").json()} == {"Lanczos", "Nearest", "None"}
        assert client.get("/sdapi/v1/loras").json() == []
        assert client.get("/sdapi/v1/embeddings").json() == {"loaded": {}, "skipped": {}}
        assert client.get("/sdapi/v1/prompt-styles").json() == []
        assert client.get("/sdapi/v1/scripts").json() == {"txt2img": [], "img2img": []}
        assert "ram" in client.get("/sdapi/v1/memory").json()
        assert client.get("/sdapi/v1/cmd-flags").json()["api"] is True
        assert client.post("/sdapi/v1/refresh-checkpoints").status_code == 200
        assert client.post("/sdapi/v1/skip").status_code == 200
        assert client.get("/sdapi/v1/progress").json()["progress"] == 0
        assert client.post("/sdapi/v1/png-info", json={"image": ""}).json()["info"] == ""


# -- the pure mapping, without a server ---------------------------------------------------------


def test_reported_options_put_the_callers_own_over_kakumeis() -> None:
    own = reported_options({"sd_model_checkpoint": "mine", "CLIP_stop_at_last_layers": 2}, "kakumei:tiny")
    assert own["sd_model_checkpoint"] == "mine" and own["CLIP_stop_at_last_layers"] == 2
    assert own["eta_ddim"] == 0.0 and own["samples_format"] == "png"
    fresh = reported_options({}, "kakumei:tiny")
    assert fresh["sd_model_checkpoint"] == "kakumei:tiny" and fresh["CLIP_stop_at_last_layers"] == 1


def test_progress_of_a_running_and_of_a_queued_job() -> None:
    running = ActiveJob(id="j1", state="running", step=5, total=10, cancel_requested=False, created_at=0.0)
    answer = progress_response(running, 2, (Place(jobs_ahead=0, cost_ahead=0.0), 3.0), "data:image/png;base64,AAAA")
    assert answer.progress == 0.5 and answer.eta_relative == 3.0 and answer.current_image == "AAAA"
    assert answer.state.job == "j1" and answer.state.job_count == 2 and answer.state.sampling_step == 5
    assert answer.textinfo is None
    queued = ActiveJob(id="j2", state="queued", step=None, total=None, cancel_requested=False, created_at=0.0)
    waiting = progress_response(queued, 1, (Place(jobs_ahead=3, cost_ahead=1.5), 12.0), None)
    assert waiting.progress == 0.0 and waiting.eta_relative == 12.0 and waiting.current_image is None
    assert waiting.textinfo == "In queue: 3 job(s) before yours"
