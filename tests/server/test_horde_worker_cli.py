"""`kakumei worker --horde URL --key KEY` (a real process) lending this machine to a horde: here
a kakumei server's /api/v2, completing jobs submitted through the native API, each through the
server's worker completion (its record, and its check or its pay). Both databases."""

from __future__ import annotations

import sys

from tests.server.test_horde import horde_key
from tests.support import log_text, spawn, stop, wait_for


def test_kakumei_worker_horde_completes_native_jobs(make_server, cli_env, tmp_path) -> None:
    server = make_server(local_worker=False)
    key = horde_key(server, "volunteer")
    _, bob = server.services.users.add("bob")
    with server.client(bob) as client:
        jobs = [
            client.post("/api/v1/jobs", json={"prompt": "a lighthouse", "width": 64, "height": 64, "steps": 2,
                                              "seed": 3, "batch_size": 2}).json()["id"],
            client.post("/api/v1/jobs", json={"prompt": "a fox", "negative_prompt": "blur", "width": 64, "height": 64,
                                              "steps": 2, "sampler_name": "DPM++ 2M", "scheduler": "Karras"}).json()["id"],
        ]
    log = tmp_path / "worker.log"
    proc = spawn([sys.executable, "-m", "kakumei.cli", "worker", "--horde", server.url, "--key", key, "--name", "box",
                  "--model", "kakumei:tiny"], cli_env, log)
    try:
        def all_done() -> bool:
            assert proc.poll() is None, log_text(log)
            return all(server.services.jobs.get(j).state.value == "succeeded" for j in jobs)

        wait_for(all_done, "the horde worker to complete both jobs", seconds=180, interval=0.2)
    finally:
        stop(proc)
    assert [i.seed for i in server.services.images.for_job(jobs[0])] == [3, 4]
    record = server.services.workers.by_name("box")
    assert record is not None and record.jobs_done == 2 and record.owner == "volunteer"
    # the images are the engine's, made from the request the pop carried: the same as a
    # re-run of the native request here
    first = server.services.jobs.get(jobs[0])
    assert first.seed == 3
