"""Credit reserved at admission, over real HTTP on both databases: a small grant cannot admit
a job beyond it, concurrent submits cannot spend one balance twice, the hires pass counts
against the free tier and is charged, and what a job does not generate comes back."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from kakumei.fairness.cost import request_cost
from kakumei.schemas import GenerationRequest

# Free tier: 64x64, 4 steps, one image. Rate limits stay off (ADMISSION_OFF).
CAPS = {"free_max_pixels": 64 * 64, "free_max_steps": 4, "free_max_images": 1, "free_busy_queue": 10_000,
        "max_queued_jobs": 100, "free_queued_per_ip": 100}
SMALL = {"prompt": "a red fox", "width": 64, "height": 64, "steps": 2, "seed": 1}
BIG = {"prompt": "a red fox", "width": 128, "height": 128, "steps": 2, "seed": 1}
HUGE = {"prompt": "a red fox", "width": 512, "height": 512, "steps": 150, "batch_size": 8, "n_iter": 4,
        "enable_hr": True, "hr_scale": 2.0, "hr_second_pass_steps": 150, "denoising_strength": 1.0, "seed": 1}


def cost(body: dict) -> float:
    return request_cost(GenerationRequest(**body), "kakumei:tiny")


def people(server, *names: str) -> tuple[str, list[str]]:
    svc = server.services
    _, root = svc.users.add("root", admin=True)
    return root, [svc.users.add(name)[1] for name in names]


def balance(client) -> float:
    return float(client.get("/api/v1/me").json()["balance"])


def test_a_small_grant_cannot_admit_a_huge_job(make_server) -> None:
    server = make_server(local_worker=False, **CAPS)
    root_key, (alice_key,) = people(server, "alice")
    with server.client(root_key) as root, server.client(alice_key) as alice:
        assert root.post("/api/v1/admin/users/alice/grant", json={"amount": 0.01}).status_code == 200
        refused = alice.post("/api/v1/jobs", json=HUGE)
        assert refused.status_code == 403, refused.text
        detail = refused.json()["detail"]
        missing = cost(HUGE) - 0.01
        assert f"{missing:.2f} credits are missing" in detail and f"costs {cost(HUGE):.2f} credits" in detail
        assert balance(alice) == 0.01  # nothing held for a refused job
        # within the free tier the grant is not needed, and the job's cost is held at once
        assert alice.post("/api/v1/jobs", json=SMALL).status_code == 201
        assert abs(balance(alice) - (0.01 - cost(SMALL))) < 1e-9


def test_hires_counts_against_the_free_tier_and_is_charged(make_server) -> None:
    server = make_server(local_worker=False, **CAPS)
    root_key, (alice_key,) = people(server, "alice")
    hires = {**SMALL, "enable_hr": True, "hr_scale": 2.0, "denoising_strength": 0.5}
    steps = {**SMALL, "enable_hr": True, "hr_scale": 1.0, "hr_second_pass_steps": 40, "denoising_strength": 0.5}
    with server.client(root_key) as root, server.client(alice_key) as alice:
        # a 64x64 first pass within the caps, a 128x128 second pass beyond them
        refused = alice.post("/api/v1/jobs", json=hires)
        assert refused.status_code == 403 and "128x128" in refused.json()["detail"], refused.text
        refused = alice.post("/api/v1/jobs", json=steps)
        assert refused.status_code == 403 and "40 steps" in refused.json()["detail"], refused.text
        # the second pass is charged: 2 steps at 64x64 plus 1 at 128x128
        assert cost(hires) > 2.9 * cost(SMALL)
        root.post("/api/v1/admin/users/alice/grant", json={"amount": cost(hires)})
        assert alice.post("/api/v1/jobs", json=hires).status_code == 201
        assert abs(balance(alice)) < 1e-9
        assert alice.post("/api/v1/jobs", json=hires).status_code == 403  # the balance is held


def test_concurrent_submits_cannot_spend_one_balance_twice(make_server) -> None:
    server = make_server(local_worker=False, **CAPS)
    root_key, (alice_key,) = people(server, "alice")
    with server.client(root_key) as root:
        root.post("/api/v1/admin/users/alice/grant", json={"amount": 3 * cost(BIG)})

    def submit(_: int) -> int:
        with server.client(alice_key) as alice:
            return alice.post("/api/v1/jobs", json=BIG).status_code

    with ThreadPoolExecutor(20) as pool:
        codes = list(pool.map(submit, range(20)))
    assert sorted(codes) == [201] * 3 + [403] * 17, codes
    with server.client(alice_key) as alice:
        assert abs(balance(alice)) < 1e-9
        assert len([j for j in alice.get("/api/v1/jobs").json()["jobs"] if j["state"] == "queued"]) == 3


def test_cancel_and_failure_give_back_what_was_not_generated(make_server) -> None:
    server = make_server(local_worker=False, **CAPS)
    root_key, (alice_key,) = people(server, "alice")
    with server.client(root_key) as root, server.client(alice_key) as alice:
        root.post("/api/v1/admin/users/alice/grant", json={"amount": 2 * cost(BIG)})
        first = alice.post("/api/v1/jobs", json=BIG).json()["id"]
        alice.post("/api/v1/jobs", json=BIG)
        assert abs(balance(alice)) < 1e-9
        assert alice.delete(f"/api/v1/jobs/{first}").json()["state"] == "cancelled"
        assert abs(balance(alice) - cost(BIG)) < 1e-9
        me = alice.get("/api/v1/me").json()
        assert abs(me["spent"] - cost(BIG)) < 1e-9 and abs(me["earned"] - 2 * cost(BIG)) < 1e-9
    # a job that fails on every attempt costs nothing
    svc = server.services
    second = [j for j in svc.jobs.for_user(svc.users.by_name("alice").id) if j.state == "queued"][0]
    for _ in range(second.max_attempts):
        lease = svc.jobs.claim("w")
        assert lease is not None
        svc.jobs.release(lease.job.id, lease.lease_id, count_attempt=True, reason="broken")
    with server.client(alice_key) as alice:
        assert alice.get(f"/api/v1/jobs/{second.id}").json()["state"] == "failed"
        assert abs(balance(alice) - 2 * cost(BIG)) < 1e-9
