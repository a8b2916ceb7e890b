"""OpenAI's /v1/images/edits (multipart forms, OpenAI's transparency masks) and OpenAI's error
shape on every /v1 answer, shared machinery included. Both databases."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from kakumei.engine.metadata import read_metadata
from kakumei.server.openai_mapping import ImagesGenerate, Refused, to_edit_request


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def picture(size: tuple[int, int] = (64, 64), hole: tuple[int, int, int, int] | None = None) -> Image.Image:
    """An opaque RGBA picture, fully transparent inside `hole`."""
    image = Image.new("RGBA", size, (200, 40, 40, 255))
    if hole is not None:
        image.paste((0, 0, 0, 0), hole)
    return image


def kakumei_mask(request) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(request.mask))))


# -- the pure mapping ---------------------------------------------------------------------------


def test_transparent_areas_become_the_white_of_kakumeis_mask() -> None:
    body = ImagesGenerate(prompt="a window", n=2)
    own = to_edit_request(body, png(picture(hole=(16, 16, 48, 48))), None, ["kakumei:tiny"])
    mask = kakumei_mask(own)
    assert mask[32, 32] == 255 and mask[0, 0] == 0 and (mask == 255).sum() == 32 * 32
    assert (own.width, own.height, own.batch_size, own.denoising_strength) == (64, 64, 2, 1.0)
    assert Image.open(io.BytesIO(base64.b64decode(own.init_images[0]))).mode == "RGB"
    # a separate mask wins over the image's own transparency
    separate = picture(hole=(0, 0, 8, 8))
    given = to_edit_request(body, png(picture(hole=(16, 16, 48, 48))), png(separate), ["kakumei:tiny"])
    assert (kakumei_mask(given) == 255).sum() == 64 and kakumei_mask(given)[0, 0] == 255
    # an opaque image without a mask is edited whole; `size` sets the answer's size
    whole = to_edit_request(ImagesGenerate(prompt="x", size="128x64"), png(picture((100, 60))), None, ["kakumei:tiny"])
    assert whole.mask is None and (whole.width, whole.height) == (128, 64) and whole.denoising_strength == 0.75
    odd = to_edit_request(ImagesGenerate(prompt="x"), png(picture((100, 70))), None, ["kakumei:tiny"])
    assert (odd.width, odd.height) == (96, 64)  # the image's size, down to multiples of 8


@pytest.mark.parametrize(
    "image, mask, param, message",
    [
        (b"not an image", None, "image", "not an image"),
        (png(picture()), b"\x89PNG broken", "mask", "mask"),
        (png(picture()), png(picture((32, 32), hole=(0, 0, 8, 8))), "mask", "same size"),
        (png(picture()), png(Image.new("L", (64, 64), 0)), "mask", "alpha channel"),
        (png(picture()), png(picture()), "mask", "no fully transparent pixel"),
    ],
)
def test_bad_edit_images_are_refused_by_name(image: bytes, mask: bytes | None, param: str, message: str) -> None:
    with pytest.raises(Refused) as refused:
        to_edit_request(ImagesGenerate(prompt="x"), image, mask, ["kakumei:tiny"])
    assert refused.value.param == param and message in str(refused.value)


# -- over HTTP ----------------------------------------------------------------------------------


def test_edits_inpaint_through_the_fair_queue(live_server) -> None:
    _, key = live_server.services.users.add("alice")
    with live_server.client(key) as client:
        form = {"prompt": "a blue window", "n": "2", "size": "64x64", "response_format": "b64_json", "user": "someone"}
        files = {"image": ("fox.png", png(picture(hole=(16, 16, 48, 48))), "image/png")}
        response = client.post("/v1/images/edits", data=form, files=files)
        assert response.status_code == 200, response.text
        out = response.json()
        assert isinstance(out["created"], int) and len(out["data"]) == 2
        for item in out["data"]:
            image = base64.b64decode(item["b64_json"])
            assert Image.open(io.BytesIO(image)).size == (64, 64)
            kakumei = read_metadata(image).kakumei or {}
            assert kakumei["request"]["prompt"] == "a blue window" and kakumei["inputs"]["mask_sha256"]  # inpainted
        # url answers, and a separate mask
        files = {"image": ("fox.png", png(picture()), "image/png"), "mask": ("mask.png", png(picture(hole=(0, 0, 32, 32))), "image/png")}
        by_url = client.post("/v1/images/edits", data={"prompt": "x"}, files=files)
        assert by_url.status_code == 200, by_url.text
        assert client.get(by_url.json()["data"][0]["url"]).content.startswith(b"\x89PNG")
        jobs = client.get("/api/v1/jobs").json()["jobs"]
        assert len(jobs) == 2 and all(j["request"]["mask"] and j["request"]["init_images"] for j in jobs)


def test_edit_refusals_have_the_openai_shape(live_server) -> None:
    with live_server.client() as client:
        cases = [
            ({"prompt": "x"}, {"image": ("a.png", b"not a png", "image/png")}, 400, "image"),
            ({"prompt": "x"}, {}, 400, "image"),
            ({}, {"image": ("a.png", png(picture(hole=(0, 0, 8, 8))), "image/png")}, 400, "prompt"),
            ({"prompt": "x", "n": "11"}, {"image": ("a.png", png(picture(hole=(0, 0, 8, 8))), "image/png")}, 400, "n"),
            ({"prompt": "x", "size": "100x100"}, {"image": ("a.png", png(picture(hole=(0, 0, 8, 8))), "image/png")}, 400, "size"),
        ]
        for form, files, status, param in cases:
            response = client.post("/v1/images/edits", data=form, files=files or {"unused": ("u", b"", "text/plain")})
            assert response.status_code == status, (form, response.text)
            error = response.json()["error"]
            assert error["param"] == param and error["type"] == "invalid_request_error" and error["message"]
        as_json = client.post("/v1/images/edits", json={"prompt": "x"})
        assert as_json.status_code == 415 and "multipart" in as_json.json()["error"]["message"]
        # a form a web page on another site sent through its visitor's browser
        files = {"image": ("a.png", png(picture(hole=(0, 0, 8, 8))), "image/png")}
        cross = client.post("/v1/images/edits", data={"prompt": "x"}, files=files, headers={"Origin": "https://elsewhere.example"})
        assert cross.status_code == 403 and cross.json()["error"]["message"]
        # forms stay refused everywhere else
        elsewhere = client.post("/v1/images/generations", data={"prompt": "x"}, files=files)
        assert elsewhere.status_code == 415 and "error" in elsewhere.json()
        assert client.get("/api/v1/jobs").json()["jobs"] == []


def test_every_v1_answer_has_the_openai_shape(make_server) -> None:
    server = make_server(max_body_bytes=10_000, local_worker=False)
    with server.client() as client:
        def error_of(response, status: int) -> dict:
            assert response.status_code == status, response.text
            assert set(response.json()) == {"error"}, response.text
            error = response.json()["error"]
            assert set(error) == {"message", "type", "param", "code"} and error["message"]
            return error

        assert error_of(client.get("/v1/models/nothing"), 404)["code"] == "not_found"
        assert error_of(client.get("/v1/images/generations"), 405)["type"] == "invalid_request_error"
        assert error_of(client.post("/v1/images/generations", content=b"x" * 20_000,
                                    headers={"Content-Type": "application/json"}), 413)["code"] == "request_too_large"
        assert error_of(client.post("/v1/images/generations", content=b"prompt=x",
                                    headers={"Content-Type": "text/plain"}), 415)
        control = error_of(client.post("/v1/images/generations?x=%00", json={"prompt": "x"}), 422)
        assert control["param"] == "x"
        key_error = error_of(client.post("/v1/images/generations", json={"prompt": "x"}, headers={"Authorization": "Bearer nope"}), 401)
        assert key_error["code"] == "invalid_api_key"
        # the native and A1111 APIs keep their own shape
        assert set(client.get("/api/v1/nothing").json()) == {"detail"}
        assert set(client.post("/api/v1/jobs", content=b"x" * 20_000, headers={"Content-Type": "application/json"}).json()) == {"detail"}
        assert "detail" in client.get("/sdapi/v1/nothing").json()


def test_openai_sdk_edits_and_generates(live_server) -> None:
    import openai
    _, key = live_server.services.users.add("alice")
    client = openai.OpenAI(base_url=live_server.url + "/v1", api_key=key, max_retries=0)
    edited = client.images.edit(
        image=("fox.png", png(picture(hole=(16, 16, 48, 48))), "image/png"), prompt="a window", size="64x64",
        response_format="b64_json",
    )
    assert Image.open(io.BytesIO(base64.b64decode(edited.data[0].b64_json))).size == (64, 64)
    with pytest.raises(openai.BadRequestError) as refused:
        client.images.edit(image=("fox.png", b"not a png", "image/png"), prompt="x")
    assert refused.value.body["param"] == "image"  # the SDK reads OpenAI's error shape
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=live_server.url + "/v1", api_key="nope", max_retries=0).images.generate(prompt="x")
