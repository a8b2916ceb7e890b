"""The OpenAPI document tells the truth: the error bodies, the statuses, the constraints that
live in validators, and `Allow` on 405."""

from __future__ import annotations

import jsonschema_rs
import pytest

from kakumei.schemas import SAMPLER_NAMES, SCHEDULE_NAMES

SMALL = {"prompt": "a red fox in snow", "width": 64, "height": 64, "steps": 2, "seed": 42}
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")


def _valid(spec: dict, schema: dict, body: object) -> bool:
    """Whether `body` fits `schema`, a part of `spec` that may refer to its components."""
    return jsonschema_rs.Draft202012Validator({**schema, "components": spec["components"]}).is_valid(body)


def _response_schema(spec: dict, path: str, method: str, status: int) -> dict:
    response = spec["paths"][path][method]["responses"][str(status)]
    return response["content"]["application/json"]["schema"]


def test_the_422_body_is_the_one_described(live_server) -> None:
    with live_server.client() as client:
        spec = client.get("/openapi.json").json()
        bad = client.post("/api/v1/jobs", json={**SMALL, "width": 100})
    assert bad.status_code == 422
    assert "ValidationError" not in spec["components"]["schemas"]  # FastAPI's default shape
    described = spec["components"]["schemas"]["HTTPValidationError"]
    assert set(described["required"]) == {"detail", "errors"}
    assert _valid(spec, described, bad.json())
    assert _valid(spec, _response_schema(spec, "/api/v1/jobs", "post", 422), bad.json())
    assert not _valid(spec, described, {"detail": [{"loc": ["body"], "msg": "x", "type": "y"}]})


@pytest.mark.parametrize(
    ("path", "method", "statuses"),
    [
        ("/api/v1/jobs", "post", {400, 401, 403, 409, 413, 422, 429}),
        ("/api/v1/jobs/{job_id}", "get", {401, 403, 404}),
        ("/api/v1/jobs/{job_id}", "delete", {401, 403, 404}),
        ("/api/v1/images/{image_id}", "get", {401, 403, 404}),
        ("/api/v1/admin/users", "get", {401, 403}),
        ("/api/v1/worker/jobs/{job_id}/complete", "post", {401, 403, 404, 409, 413, 422}),
        ("/sdapi/v1/txt2img", "post", {400, 401, 403, 409, 413, 422, 429}),
        ("/v1/images/generations", "post", {400, 401, 403, 429}),
        ("/healthz", "get", {503}),
    ],
)
def test_refusals_are_declared_where_they_happen(live_server, path: str, method: str, statuses: set[int]) -> None:
    with live_server.client() as client:
        spec = client.get("/openapi.json").json()
    declared = {int(s) for s in spec["paths"][path][method]["responses"] if s.isdigit()}
    assert statuses <= declared, f"{method.upper()} {path} declares {sorted(declared)}"


def test_a_refusal_body_matches_its_declared_schema(live_server) -> None:
    with live_server.client() as client:
        spec = client.get("/openapi.json").json()
        missing = client.get("/api/v1/jobs/nope")
        unknown_key = client.get("/api/v1/jobs", headers={"Authorization": "Bearer nope"})
        openai = client.post("/v1/images/generations", json={"prompt": "x", "size": "huge"})
    assert missing.status_code == 404 and unknown_key.status_code == 401 and openai.status_code == 400
    assert _valid(spec, _response_schema(spec, "/api/v1/jobs/{job_id}", "get", 404), missing.json())
    assert _valid(spec, _response_schema(spec, "/api/v1/jobs", "get", 401), unknown_key.json())
    assert _valid(spec, _response_schema(spec, "/v1/images/generations", "post", 400), openai.json())


def test_validator_constraints_are_in_the_schema(live_server) -> None:
    with live_server.client() as client:
        spec = client.get("/openapi.json").json()
        # and the validators still speak for themselves
        message = client.post("/api/v1/jobs", json={**SMALL, "height": 100}).json()["errors"][0]["message"]
    fields = spec["components"]["schemas"]["GenerationRequest"]["properties"]
    for side in ("width", "height"):
        assert fields[side]["multipleOf"] == 8 and fields[side]["minimum"] == 64
    assert set(SAMPLER_NAMES) <= set(fields["sampler_name"]["enum"])
    assert "DPM++ 2M Karras" in fields["sampler_name"]["enum"]  # A1111's older names are accepted
    assert fields["scheduler"]["enum"] == list(SCHEDULE_NAMES)
    assert "multiple of 8" in message


# Routes outside the OpenAPI document (the web UI, the docs page and the document itself).
HIDDEN = {"/": {"GET"}, "/web/{name}": {"GET"}, "/docs": {"GET"}, "/openapi.json": {"GET"}}


def test_405_names_the_allowed_methods_on_every_route(live_server) -> None:
    with live_server.client() as client:
        spec = client.get("/openapi.json").json()
        by_path = {path: {m.upper() for m in item if m.upper() in METHODS} for path, item in spec["paths"].items()}
        by_path.update(HIDDEN)
        checked = 0
        for path, methods in sorted(by_path.items()):
            url = path.replace("{", "").replace("}", "")  # any value fills a path parameter
            for method in (m for m in METHODS if m not in methods):
                response = client.request(method, url)
                assert response.status_code == 405, (method, path, response.status_code)
                allowed = {m.strip() for m in response.headers["allow"].split(",")}
                assert allowed - {"HEAD"} == methods, (method, path, allowed)
                checked += 1
    assert checked > 100
