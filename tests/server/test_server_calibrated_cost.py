"""Calibrated cost over real HTTP on both databases: once the observed seconds per unit of a
model and of the SD 1.5 reference have enough samples, a job's reserved cost and its ETA
follow them, within the clamp."""

from __future__ import annotations

from kakumei.fairness.cost import request_cost
from kakumei.schemas import GenerationRequest

XL = "my-sdxl"  # fixed factor 2
REF = "kakumei:tiny"
BODY = {"prompt": "a red fox", "width": 64, "height": 64, "steps": 2, "seed": 1}
FIXED = request_cost(GenerationRequest(**BODY), XL)


def observe(server, model: str, worker_class: str, seconds_per_unit: float, samples: int) -> None:
    with server.services.db.transaction() as tx:
        tx.run("INSERT INTO model_speeds (model, worker_class, seconds_per_unit, samples, updated_at) "
               "VALUES (?, ?, ?, ?, 0)", (model, worker_class, seconds_per_unit, samples))


def submit(server, key: str) -> dict:
    with server.client(key) as client:
        reply = client.post("/api/v1/jobs", json=BODY)
        assert reply.status_code == 201, reply.text
        return client.get(f"/api/v1/jobs/{reply.json()['id']}").json()


def test_the_reserved_cost_and_the_eta_follow_the_observed_speeds(make_server) -> None:
    server = make_server(local_worker=False, model=XL, cost_calibration_min_samples=5)
    _, key = server.services.users.add("alice", admin=True)
    first = submit(server, key)
    assert abs(first["cost"] - FIXED) < 1e-9  # nothing observed: the fixed factor
    observe(server, REF, "remote:cuda", 0.5, 5)
    observe(server, XL, "remote:cuda", 1.5, 4)
    assert abs(submit(server, key)["cost"] - FIXED) < 1e-9  # one sample short
    with server.services.db.transaction() as tx:
        tx.run("UPDATE model_speeds SET samples = 5 WHERE model = ?", (XL,))
    third = submit(server, key)
    assert abs(third["cost"] - FIXED * 1.5) < 1e-9  # factor 3 observed, not 2
    # The ETA: every unit ahead and its own at the reference's 0.5 s a unit.
    ahead = first["cost"] + FIXED + third["cost"]
    assert abs(third["eta_seconds"] - ahead * 0.5) < 1e-6, third


def test_a_lying_worker_cannot_move_the_price_beyond_the_clamp(make_server) -> None:
    server = make_server(local_worker=False, model=XL, cost_calibration_min_samples=1, cost_calibration_clamp=4.0)
    _, key = server.services.users.add("alice", admin=True)
    observe(server, REF, "remote", 1.0, 100)
    observe(server, XL, "remote", 1000.0, 100)
    assert abs(submit(server, key)["cost"] - FIXED * 4) < 1e-9
