"""/metrics scraped as Prometheus does, parsed by prometheus_client's own text parser."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

SMALL = {"prompt": "a red fox in snow", "width": 64, "height": 64, "steps": 2, "seed": 1}


def scrape(client: httpx.Client) -> dict[tuple[str, tuple], float]:
    response = client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def test_metrics_follow_the_queue_and_the_jobs(make_server) -> None:
    server = make_server(local_worker=False)
    with server.client() as client:
        empty = scrape(client)
        assert empty[("kakumei_jobs", (("state", "queued"),))] == 0
        assert empty[("kakumei_workers_connected", ())] == 0
        for _ in range(2):
            assert client.post("/api/v1/jobs", json=SMALL).status_code == 201
        queued = scrape(client)
        assert queued[("kakumei_queue_jobs", (("model", "kakumei:tiny"),))] == 2
        assert queued[("kakumei_jobs", (("state", "queued"),))] == 2
        assert queued[("kakumei_users_backlogged", ())] == 1


def test_finished_jobs_fill_histograms_and_shares(live_server) -> None:
    _, key = live_server.services.users.add("alice")
    with live_server.client() as anonymous, live_server.client(key) as alice:
        assert anonymous.post("/sdapi/v1/txt2img", json=SMALL).status_code == 200
        assert alice.post("/sdapi/v1/txt2img", json={**SMALL, "width": 128}).status_code == 200
        samples = scrape(anonymous)
    assert samples[("kakumei_jobs", (("state", "succeeded"),))] == 2
    assert samples[("kakumei_workers_connected", ())] == 1  # the local worker
    for user_class in ("anonymous", "registered"):
        labels = (("user_class", user_class),)
        assert samples[("kakumei_job_run_seconds_count", labels)] == 1
        assert samples[("kakumei_job_wait_seconds_bucket", (("le", "+Inf"), ("user_class", user_class)))] == 1
        assert samples[("kakumei_job_run_seconds_sum", labels)] >= 0
    # alice's image had twice the pixels, so twice the compute units: a third vs two thirds
    assert abs(samples[("kakumei_compute_share", (("user_class", "anonymous"),))] - 1 / 3) < 1e-6
    assert abs(samples[("kakumei_compute_share", (("user_class", "registered"),))] - 2 / 3) < 1e-6
    assert samples[("kakumei_compute_units_total", (("user_class", "registered"),))] > 0
