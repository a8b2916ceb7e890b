"""People behind one address, from outside: a household of guests on a real `kakumei serve`
with the default caps. Each guest can queue, sees only their own jobs, and together they are
one network group that shares one person's share; a neighbour network is not slowed."""

from __future__ import annotations

import os
from pathlib import Path

import httpx

from tests.support import listening_socket, start_serve, stop, url_of

SMALL = {"prompt": "a fox", "width": 64, "height": 64, "steps": 2}


def test_a_household_of_guests_behind_one_address(kakumei_home: Path, tmp_path: Path) -> None:
    environ = {**os.environ, "KAKUMEI_HOME": str(kakumei_home), "KAKUMEI_DEVICE": "cpu"}
    sock, log = listening_socket(), tmp_path / "serve.log"
    database = f"sqlite:///{tmp_path / 'household.db'}"
    proc = start_serve(sock, ["--database", database, "--model", "kakumei:tiny", "--no-local-worker"], environ, log)
    url = url_of(sock)
    home = httpx.HTTPTransport(local_address="127.0.7.20")
    try:
        with httpx.Client(base_url=url, timeout=60, transport=home) as anon:
            keys = []
            for _ in range(5):
                answer = anon.post("/api/v1/guests")
                assert answer.status_code == 201, answer.text
                keys.append(answer.json()["key"])
        jobs = []
        for key in keys:
            with httpx.Client(base_url=url, timeout=60, headers={"Authorization": f"Bearer {key}"},
                              transport=httpx.HTTPTransport(local_address="127.0.7.20")) as guest:
                submitted = guest.post("/api/v1/jobs", json=SMALL)
                assert submitted.status_code in (200, 201, 202), submitted.text  # the default caps let a household queue
                jobs.append(submitted.json()["id"])
        for key, job in zip(keys, jobs):
            with httpx.Client(base_url=url, timeout=60, headers={"Authorization": f"Bearer {key}"},
                              transport=httpx.HTTPTransport(local_address="127.0.7.20")) as guest:
                assert [j["id"] for j in guest.get("/api/v1/jobs").json()["jobs"]] == [job]
                for other in jobs:
                    if other != job:
                        assert guest.get(f"/api/v1/jobs/{other}").status_code == 404
                        assert guest.delete(f"/api/v1/jobs/{other}").status_code == 404
                me = guest.get("/api/v1/me").json()
                assert me["group"]["kind"] == "network" and me["group"]["network"] == "127.0.7.0/24"
                assert me["group"]["others"] == 4 and me["kind"] == "guest"
        # A keyless neighbour on another network stands as a group of its own: its share is
        # one group's, as large as the whole household's.
        with httpx.Client(base_url=url, timeout=60, transport=httpx.HTTPTransport(local_address="127.0.8.5")) as neighbour:
            assert neighbour.post("/api/v1/jobs", json=SMALL).status_code in (200, 201, 202)
            mine = neighbour.get("/api/v1/me").json()
            assert mine["group"]["network"] == "127.0.8.0/24" and mine["group"]["others"] == 0
            assert mine["kind"] == "keyless"
            assert abs(mine["share"] - 0.5) < 0.01, mine["share"]
    finally:
        stop(proc)
        sock.close()
