"""POST /sdapi/v1/options over real HTTP, on both databases: only the option names kakumei
uses are kept, with bounded values, per caller, in the database (a restart and a second
server on the same database see them)."""

from __future__ import annotations

import httpx

from kakumei.server.a1111.mapping import reported_options

SMALL = {"prompt": "a red fox", "width": 64, "height": 64, "steps": 2}


def _client(url: str, key: str | None = None, addr: str | None = None) -> httpx.Client:
    transport = httpx.HTTPTransport(local_address=addr) if addr else None
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(base_url=url, headers=headers, timeout=60, transport=transport)


def test_unknown_option_names_are_refused_with_the_names_kakumei_keeps(make_server) -> None:
    server = make_server(local_worker=False)
    with server.client() as client:
        flood = {f"key{i}": "x" for i in range(10_000)}
        response = client.post("/sdapi/v1/options", json=flood)
        assert response.status_code == 400, response.text
        detail = response.json()["detail"]
        assert "key0" in detail and "sd_model_checkpoint" in detail and len(detail) < 2000
        assert "key0" not in client.get("/sdapi/v1/options").json()
        # One unknown name among known ones refuses the whole post: nothing is half applied.
        mixed = client.post("/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 2, "not_an_option": 1})
        assert mixed.status_code == 400 and "not_an_option" in mixed.json()["detail"]
        assert client.get("/sdapi/v1/options").json()["CLIP_stop_at_last_layers"] == 1


def test_option_values_are_bounded(make_server) -> None:
    server = make_server(local_worker=False)
    with server.client() as client:
        for body in ({"samples_format": "x" * 100_000}, {"samples_format": ["png"] * 1000},
                     {"sd_checkpoint_hash": {"nested": "x"}}, {"sd_model_checkpoint": "x" * 100_000}):
            response = client.post("/sdapi/v1/options", json=body)
            assert response.status_code == 400, (list(body), response.text)
            assert next(iter(body)) in response.json()["detail"] and len(response.json()["detail"]) < 2000
        # What GET /options reports may be posted back as it is (clients do that).
        everything = client.get("/sdapi/v1/options").json()
        assert client.post("/sdapi/v1/options", json=everything).status_code == 200
        assert client.get("/sdapi/v1/options").json() == everything


def test_options_survive_a_restart_and_are_seen_by_a_second_server(make_server, database_url) -> None:
    first = make_server(local_worker=False)
    _, alice_key = first.services.users.add("alice")
    with _client(first.url, alice_key) as alice, _client(first.url, addr="127.0.0.2") as visitor:
        assert alice.post("/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 2}).status_code == 200
        assert visitor.post("/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 3}).status_code == 200
        # Posting merges into what the caller set before.
        assert alice.post("/sdapi/v1/options", json={"samples_format": "png"}).status_code == 200
    first.__exit__(None, None, None)
    second = make_server()  # same database; the first is gone
    with _client(second.url, alice_key) as alice, _client(second.url, addr="127.0.0.2") as visitor, \
            _client(second.url, addr="127.0.0.3") as stranger:
        assert alice.get("/sdapi/v1/options").json()["CLIP_stop_at_last_layers"] == 2
        assert visitor.get("/sdapi/v1/options").json()["CLIP_stop_at_last_layers"] == 3
        # Anonymous visitors are told apart by address.
        assert stranger.get("/sdapi/v1/options").json() == reported_options({}, "kakumei:tiny")
        third = make_server(local_worker=False)  # a second server on the same database, now
        with _client(third.url, alice_key) as elsewhere:
            assert elsewhere.post("/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 4}).status_code == 200
        assert alice.get("/sdapi/v1/options").json()["CLIP_stop_at_last_layers"] == 4
        # And the stored option applies to generations.
        image = alice.post("/sdapi/v1/txt2img", json=SMALL)
        assert image.status_code == 200, image.text
        assert "Clip skip: 4" in image.json()["info"]
