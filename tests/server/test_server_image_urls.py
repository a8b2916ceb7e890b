"""Image URLs (what the OpenAI, A1111 and native APIs hand out) fetched with and without a key:
a keyless fetch of an account's image asks for the key (401), someone else's key still finds
nothing (404), and keyless visitors' own images need no key. Both databases."""

from __future__ import annotations

import httpx

SMALL = {"prompt": "a lighthouse", "size": "64x64"}


def test_image_urls_ask_for_the_key_of_their_account(live_server) -> None:
    _, alice_key = live_server.services.users.add("alice")
    _, bob_key = live_server.services.users.add("bob")
    with live_server.client(alice_key) as alice:
        url = alice.post("/v1/images/generations", json=SMALL).json()["data"][0]["url"]
        assert alice.get(url).content.startswith(b"\x89PNG")
    with live_server.client() as keyless:
        asked = keyless.get(url)
        assert asked.status_code == 401 and asked.headers["www-authenticate"].startswith("Bearer")
        assert "API key" in asked.json()["detail"]
        assert keyless.get("/api/v1/images/no-such-image").status_code == 404
        # a keyless visitor's own image needs no key; another address does not see it
        own = keyless.post("/v1/images/generations", json=SMALL).json()["data"][0]["url"]
        assert keyless.get(own).content.startswith(b"\x89PNG")
    with live_server.client(bob_key) as bob:
        assert bob.get(url).status_code == 404  # someone else's image: not disclosed
        assert bob.get(own).status_code == 404
    elsewhere = httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.3.4"), timeout=60)
    with elsewhere:
        assert elsewhere.get(own).status_code == 404  # the anonymous user's image from another address
