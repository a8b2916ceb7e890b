"""/api/v1/images (my images with recipes), DELETE /api/v1/images/{id} and /api/v1/options,
on both databases: what the web UI's gallery and form are built from."""

from __future__ import annotations

from support import wait_done

from kakumei import schemas

SMALL = {"prompt": "a gallery fox", "width": 64, "height": 64, "steps": 2, "seed": 7, "batch_size": 2}


def test_my_images_lists_own_images_with_recipe_and_delete_removes_them(live_server) -> None:
    _, alice_key = live_server.services.users.add("alice")
    _, bob_key = live_server.services.users.add("bob")
    with live_server.client(alice_key) as alice, live_server.client(bob_key) as bob:
        first = wait_done(alice, alice.post("/api/v1/jobs", json=SMALL).json()["id"])
        second = wait_done(alice, alice.post("/api/v1/jobs", json={**SMALL, "prompt": "later", "batch_size": 1}).json()["id"])
        assert first["state"] == second["state"] == "succeeded"
        wait_done(bob, bob.post("/api/v1/jobs", json={**SMALL, "prompt": "bob's"}).json()["id"])

        images = alice.get("/api/v1/images").json()["images"]
        # Newest job first, then by index within a job.
        assert [(i["job_id"], i["index"]) for i in images] == [(second["id"], 0), (first["id"], 0), (first["id"], 1)]
        assert [i["seed"] for i in images] == [7, 7, 8]
        assert images[1]["request"]["prompt"] == "a gallery fox" and images[1]["model"] == "kakumei:tiny"
        assert "Seed: 8" in images[2]["infotext"] and images[2]["infotext"].startswith("a gallery fox")
        assert all(i["url"] == f"/api/v1/images/{i['id']}" for i in images)
        assert len(alice.get("/api/v1/images", params={"limit": 1}).json()["images"]) == 1

        target = images[2]
        path = live_server.services.images.get(target["id"]).path
        assert path.is_file()
        assert bob.delete(f"/api/v1/images/{target['id']}").status_code == 404  # not bob's
        assert alice.delete(f"/api/v1/images/{target['id']}").status_code == 204
        assert not path.exists()
        assert alice.get(target["url"]).status_code == 404
        assert alice.delete(f"/api/v1/images/{target['id']}").status_code == 404
        assert [i["id"] for i in alice.get("/api/v1/images").json()["images"]] == [i["id"] for i in images[:2]]
        # The job's record stays; it lists only the images that are left.
        assert [i["index"] for i in alice.get(f"/api/v1/jobs/{first['id']}").json()["images"]] == [0]


def test_anonymous_visitors_see_only_their_own_address(live_server) -> None:
    with live_server.client() as anon:
        job = wait_done(anon, anon.post("/api/v1/jobs", json=SMALL).json()["id"])
        assert len(anon.get("/api/v1/images").json()["images"]) == 2
    svc = live_server.services
    # a keyless caller is a person of their own address; another address has none
    person = svc.users.keyless("127.0.0.1")
    assert person is not None and person.is_anonymous
    assert svc.users.keyless("10.0.0.9") is None
    assert svc.images.for_user(svc.users.anonymous().id) == []
    assert [g.image.job_id for g in svc.images.for_user(person.id, client_addr="127.0.0.1")] == [job["id"]] * 2


def test_options_match_what_requests_accept(live_server) -> None:
    with live_server.client() as client:
        options = client.get("/api/v1/options").json()
    assert [s["name"] for s in options["samplers"]] == list(schemas.SAMPLER_NAMES)
    assert {s["name"] for s in options["samplers"] if not s["sigma_schedules"]} == {
        n for n, sigma in schemas.SAMPLERS.items() if not sigma
    }
    assert options["schedules"] == list(schemas.SCHEDULE_NAMES)
    assert options["models"] == ["kakumei:tiny"] and options["default_model"] == "kakumei:tiny"
    assert options["limits"]["max_side"] == schemas.MAX_SIDE and options["limits"]["max_steps"] == schemas.MAX_STEPS
    assert options["defaults"]["steps"] == 20 and options["defaults"]["sampler_name"] == "Euler a"
    assert options["allow_anonymous"] is True
    schemas.GenerationRequest(**options["defaults"])  # the defaults are a valid request
