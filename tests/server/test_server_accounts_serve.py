"""Sign-up by invite against a real `kakumei serve` process, with the invite made by the
real `kakumei users invite` command: codes spent once per sign-up, a flood from one /24
stopped while another /24 still signs up, sign-in, and a revoked key failing at once."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx

from kakumei.store.accounts import AccountStore
from kakumei.store.db import Database
from tests.support import listening_socket, start_serve, stop, url_of

PASSWORD = "correct horse battery"


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kakumei.cli", *args], env=env, capture_output=True, text=True, timeout=120)


def test_invites_from_the_cli_and_limits_over_real_http(database_url: str, kakumei_home: Path, tmp_path: Path) -> None:
    env = {
        **os.environ, "KAKUMEI_HOME": str(kakumei_home), "KAKUMEI_DEVICE": "cpu",
        "KAKUMEI_SIGNUP": "invite", "KAKUMEI_SIGNUPS_PER_NETWORK_PER_HOUR": "2",
    }
    bad = _cli(env, "users", "invite", "--uses", "0", "--database", database_url)
    assert bad.returncode == 2 and "--uses must be at least 1" in bad.stderr and not bad.stdout
    made = _cli(env, "users", "invite", "--uses", "3", "--hours", "1", "--database", database_url)
    assert made.returncode == 0, made.stderr
    code = made.stdout.strip()
    assert code.startswith("kki_") and "3 sign-up(s)" in made.stderr and code not in made.stderr

    sock, log = listening_socket(), tmp_path / "serve.log"
    proc = start_serve(sock, ["--database", database_url, "--model", "kakumei:tiny", "--no-local-worker"], env, log, seconds=90)
    url = url_of(sock)

    def post(addr: str, path: str, body: dict, key: str | None = None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        with httpx.Client(base_url=url, timeout=30, headers=headers,
                          transport=httpx.HTTPTransport(local_address=addr)) as client:
            return client.post(path, json=body)

    try:
        assert post("127.0.40.1", "/api/v1/accounts", {"name": "nocode", "password": PASSWORD}).status_code == 403
        for i, addr in enumerate(("127.0.40.1", "127.0.40.2")):
            answer = post(addr, "/api/v1/accounts", {"name": f"first{i}", "password": PASSWORD, "invite": code})
            assert answer.status_code == 201, answer.text
        flood = post("127.0.40.3", "/api/v1/accounts", {"name": "first2", "password": PASSWORD, "invite": code})
        assert flood.status_code == 429 and int(flood.headers["Retry-After"]) > 3000, flood.text
        elsewhere = post("127.0.41.1", "/api/v1/accounts", {"name": "second", "password": PASSWORD, "invite": code})
        assert elsewhere.status_code == 201, elsewhere.text
        used = post("127.0.42.1", "/api/v1/accounts", {"name": "third", "password": PASSWORD, "invite": code})
        assert used.status_code == 403 and "used up" in used.json()["detail"]

        key = post("127.0.43.1", "/api/v1/sessions", {"name": "second", "password": PASSWORD}).json()["key"]
        with httpx.Client(base_url=url, timeout=30, headers={"Authorization": f"Bearer {key}"}) as second:
            keys = second.get("/api/v1/me/keys").json()
            (current,) = [k for k in keys if k["current"]]
            assert current["label"] == "sign-in"
            assert second.delete(f"/api/v1/me/keys/{current['id']}").status_code == 204
            assert second.get("/api/v1/me").status_code == 401
    finally:
        stop(proc)
        sock.close()

    db = Database(database_url)
    try:
        assert AccountStore(db).invite(code).uses_left == 0
        with db.transaction(write=False) as tx:
            names = {r["name"] for r in tx.all("SELECT name FROM users WHERE kind = 'account'")}
        assert names == {"first0", "first1", "second"}, "refused sign-ups left no user behind"
    finally:
        db.close()
