"""The OpenAI Images API (/v1/images/generations) as the OpenAI SDKs call it: JSON in, the
OpenAI response and error shapes out. Both databases."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from kakumei.engine.metadata import parse_infotext, read_metadata
from kakumei.schemas import MAX_BATCH_SIZE
from kakumei.server.openai_mapping import ImagesGenerate, Refused, to_generation_request


def test_generations_round_trip_b64_and_url(live_server) -> None:
    _, key = live_server.services.users.add("alice")
    with live_server.client(key) as client:
        body = {"model": "dall-e-3", "prompt": "a red fox in snow", "n": 2, "size": "64x64",
                "response_format": "b64_json", "quality": "hd", "style": "vivid", "user": "someone"}
        response = client.post("/v1/images/generations", json=body)
        assert response.status_code == 200, response.text
        out = response.json()
        assert isinstance(out["created"], int) and len(out["data"]) == 2
        seeds = []
        for item in out["data"]:
            png = base64.b64decode(item["b64_json"])
            assert Image.open(io.BytesIO(png)).size == (64, 64)
            fields = parse_infotext(read_metadata(png).parameters or "")
            assert fields["prompt"] == "a red fox in snow" and fields["Size"] == "64x64"
            seeds.append(int(fields["Seed"]))
        assert seeds[1] == seeds[0] + 1
        by_url = client.post("/v1/images/generations", json={"prompt": "a lighthouse", "size": "64x64"}).json()
        assert len(by_url["data"]) == 1 and by_url["data"][0]["url"].startswith(live_server.url)
        png = client.get(by_url["data"][0]["url"])
        assert png.status_code == 200 and png.content.startswith(b"\x89PNG")
        assert len(client.get("/api/v1/jobs").json()["jobs"]) == 2  # the same fair queue as every job


def test_errors_have_the_openai_shape(live_server) -> None:
    with live_server.client() as client:
        cases = [
            ({"prompt": "x", "size": "100x100"}, "multiple of 8", None),
            ({"prompt": "x", "size": "big"}, "size must look like", "size"),
            ({"prompt": "x", "model": "nobody/nothing"}, "unknown model", "model"),
            ({"prompt": "x", "response_format": "jpeg"}, "response_format", "response_format"),
            ({"prompt": "x", "n": 11}, "n must be at most 10, got 11", "n"),
            ({"n": 1}, "prompt", "prompt"),
        ]
        for body, message, param in cases:
            response = client.post("/v1/images/generations", json=body)
            assert response.status_code == 400, (body, response.text)
            error = response.json()["error"]
            assert message in error["message"] and error["type"] == "invalid_request_error"
            if param is not None:
                assert error["param"] == param
        wrong_key = client.post("/v1/images/generations", json={"prompt": "x"}, headers={"Authorization": "Bearer sk-nope"})
        assert wrong_key.status_code == 401 and wrong_key.json()["error"]["code"] == "invalid_api_key"
        assert client.get("/api/v1/jobs").json()["jobs"] == []


# -- the pure mapping, without a server ---------------------------------------------------------


def test_openai_request_maps_onto_a_generation_request() -> None:
    known = ["kakumei:tiny", "my-model"]
    gen = to_generation_request(ImagesGenerate(prompt="a fox", model="dall-e-3", size="64x128", n=2), known)
    assert gen.prompt == "a fox" and gen.model is None  # OpenAI's names: the server's default
    assert (gen.width, gen.height, gen.batch_size, gen.n_iter) == (64, 128, 2, 1)
    assert to_generation_request(ImagesGenerate(prompt="a fox", model="my-model"), known).model == "my-model"
    default = to_generation_request(ImagesGenerate(prompt="a fox", size="auto"), known)
    assert (default.width, default.height) == (512, 512)
    many = to_generation_request(ImagesGenerate(prompt="a fox", n=MAX_BATCH_SIZE + 1), known)
    assert (many.batch_size, many.n_iter) == (1, MAX_BATCH_SIZE + 1)


@pytest.mark.parametrize(
    "fields, param",
    [
        ({"model": "nobody/nothing"}, "model"),
        ({"size": "big"}, "size"),
        ({"response_format": "jpeg"}, "response_format"),
        ({"output_format": "webp"}, "output_format"),
    ],
)
def test_openai_fields_kakumei_cannot_honour_are_refused_by_name(fields: dict, param: str) -> None:
    with pytest.raises(Refused) as refused:
        to_generation_request(ImagesGenerate(prompt="a fox", **fields), ["kakumei:tiny"])
    assert refused.value.param == param and param in str(refused.value)
