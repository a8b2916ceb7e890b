"""Accounts over real HTTP, on both databases: sign-up (open, by invite, off), sign-in, guests,
guests turning into accounts, and a user's keys. Clients come from distinct loopback
addresses where the network they come from matters (127.0.X.0/24 are different groups)."""

from __future__ import annotations

from typing import Any

import httpx
from support import wait_done

from kakumei.server.signup import NAME_RULE, SIGN_IN_FAILED, SIGNUP_OFF

SMALL = {"prompt": "an account fox", "width": 64, "height": 64, "steps": 2, "seed": 3}
GOOD = "correct horse battery"


def client(server: Any, addr: str | None = None, key: str | None = None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    transport = httpx.HTTPTransport(local_address=addr) if addr else None
    return httpx.Client(base_url=server.url, headers=headers, timeout=60, transport=transport)


def count(server: Any, sql: str, params: tuple = ()) -> int:
    with server.services.db.transaction(write=False) as tx:
        return int(tx.scalar(sql, params))


def sign_up(server: Any, name: str, password: str = GOOD, addr: str = "127.0.20.1", **extra: Any) -> httpx.Response:
    with client(server, addr) as c:
        return c.post("/api/v1/accounts", json={"name": name, "password": password, **extra})


def test_open_sign_up_then_sign_in(make_server) -> None:
    server = make_server(signup="open")
    made = sign_up(server, "Alice")
    assert made.status_code == 201, made.text
    body = made.json()
    assert body["name"] == "Alice" and body["key"].startswith("kk_") and set(body) == {"name", "key"}
    with client(server, key=body["key"]) as alice:
        me = alice.get("/api/v1/me").json()
        assert me["name"] == "Alice" and not me["anonymous"]

    with client(server) as c:
        signed = c.post("/api/v1/sessions", json={"name": "alice", "password": GOOD})
        assert signed.status_code == 200 and set(signed.json()) == {"key"}
        wrong = c.post("/api/v1/sessions", json={"name": "Alice", "password": GOOD + "!"})
        nobody = c.post("/api/v1/sessions", json={"name": "nobody", "password": GOOD})
        assert wrong.status_code == nobody.status_code == 401
        assert wrong.json() == nobody.json() == {"detail": SIGN_IN_FAILED}
        # An operator's user has no password: it signs in with keys only.
        server.services.users.add("operated")
        assert c.post("/api/v1/sessions", json={"name": "operated", "password": GOOD}).status_code == 401
    with client(server, key=signed.json()["key"]) as again:
        assert again.get("/api/v1/me").json()["name"] == "Alice"
        labels = [k["label"] for k in again.get("/api/v1/me/keys").json()]
        assert labels == ["sign-up", "sign-in"]
    # The password is nowhere in the database, only its argon2id hash.
    with server.services.db.transaction(write=False) as tx:
        stored = tx.scalar("SELECT password_hash FROM users WHERE name = 'Alice'")
        everything = str(tx.all("SELECT * FROM users")) + str(tx.all("SELECT * FROM api_keys"))
    assert stored.startswith("$argon2id$") and GOOD not in everything and body["key"] not in everything


def test_names_are_unique_without_case_and_must_be_plain(make_server) -> None:
    server = make_server(signup="open")
    assert sign_up(server, "bob").status_code == 201
    for taken in ("bob", "BOB", "Bob"):
        refused = sign_up(server, taken)
        assert refused.status_code == 409 and "taken" in refused.json()["detail"]
    server.services.users.add("Operator")
    assert sign_up(server, "operator").status_code == 409
    for bad in ("ab", "x" * 33, "anonymous", "Anonymous", "guest-me", "GUEST-me", "two words", "üser-name", "a/b", "", " bob2"):
        refused = sign_up(server, bad)
        assert refused.status_code == 422, (bad, refused.text)
        assert NAME_RULE in refused.json()["detail"], refused.json()
    refused = sign_up(server, "tab\tname")
    assert refused.status_code == 422 and refused.json()["errors"][0]["field"] == "name"
    assert count(server, "SELECT COUNT(*) FROM users WHERE kind = 'account'") == 1


WEAK = [
    ("", "at least 10 characters"),
    ("short", "at least 10 characters"),
    ("xcarolinex!", "name"),
    ("CAROLINE-is-me", "name"),
    ("aaaaaaaaaaaa", "repeated"),
    ("password123", "most common"),
    ("1234567890", "most common"),
    ("QwertyUiop", "most common"),
]


def test_weak_passwords_are_refused_with_a_sentence(make_server) -> None:
    server = make_server(signup="open")
    for password, words in WEAK:
        refused = sign_up(server, "caroline", password)
        assert refused.status_code == 422 and words in refused.json()["detail"], (password, refused.text)
        assert not password or password not in refused.text
    assert server.services.users.by_name("caroline") is None
    assert sign_up(server, "caroline", "a much better passphrase").status_code == 201


def test_bodies_that_are_not_accounts_get_a_422_not_a_trace(make_server) -> None:
    server = make_server(signup="open")
    with client(server) as c:
        for body in ({"name": "dave"}, {"name": 5, "password": GOOD}, {"name": "dave", "password": GOOD, "admin": True},
                     {"name": "dave", "password": "nul\x00inside-it"}, {"name": "dave", "password": 98765432101},
                     {"name": "dave", "password": "p" * 1025}, [], "dave"):
            for path in ("/api/v1/accounts", "/api/v1/sessions"):
                refused = c.post(path, json=body)
                assert refused.status_code == 422 and refused.json()["errors"], (body, refused.text)
                # No trace, and a password is never repeated, not even a wrong one.
                assert "Traceback" not in refused.text and "nul" not in refused.text
                assert "98765432101" not in refused.text and "ppp" not in refused.text
        for raw in (b"{", b"\xff\xfe\x00not text", b""):
            for path in ("/api/v1/accounts", "/api/v1/sessions"):
                refused = c.post(path, content=raw, headers={"content-type": "application/json"})
                assert refused.status_code == 422 and refused.json()["errors"], (path, raw, refused.text)
        assert c.post("/api/v1/accounts", content=b"name=dave", headers={"content-type": "application/x-www-form-urlencoded"}).status_code == 415
        assert c.post("/api/v1/sessions", json={"name": "dave"}).status_code == 422
    assert server.services.users.by_name("dave") is None


def test_signup_off_is_the_default(make_server) -> None:
    server = make_server()
    refused = sign_up(server, "erin")
    assert refused.status_code == 403 and refused.json() == {"detail": SIGNUP_OFF}
    assert server.services.users.by_name("erin") is None


def test_invite_mode_needs_a_good_unused_unexpired_code(make_server) -> None:
    server = make_server(signup="invite")
    accounts = server.services.accounts
    _, code = accounts.add_invite(uses=1, hours=1, created_by="test")
    _, expired = accounts.add_invite(uses=3, hours=1, created_by="test")
    with server.services.db.transaction() as tx:
        tx.run("UPDATE invites SET expires_at = 1000 WHERE code_hash <> (SELECT code_hash FROM invites ORDER BY id LIMIT 1)")

    missing = sign_up(server, "frank")
    assert missing.status_code == 403 and "need an invite code" in missing.json()["detail"]
    wrong = sign_up(server, "frank", invite=code + "x")
    assert wrong.status_code == 403 and "not one of this server's" in wrong.json()["detail"]
    late = sign_up(server, "frank", invite=expired)
    assert late.status_code == 403 and "expired at 1970-01-01 00:16 UTC" in late.json()["detail"]
    # A refused sign-up spends nothing: a weak password, then a taken name, with the good code.
    assert sign_up(server, "frank", "tooshort", invite=code).status_code == 422
    server.services.users.add("taken")
    assert sign_up(server, "Taken", invite=code).status_code == 409
    assert accounts.invite(code).uses_left == 1 and accounts.invite(expired).uses_left == 3
    assert server.services.users.by_name("frank") is None

    assert sign_up(server, "frank", invite=code).status_code == 201
    assert accounts.invite(code).uses_left == 0
    used = sign_up(server, "gina", invite=code)
    assert used.status_code == 403 and "used up" in used.json()["detail"]
    assert server.services.users.by_name("gina") is None


def test_a_sign_up_flood_from_one_network_is_stopped_there(make_server) -> None:
    server = make_server(signup="open", signups_per_network_per_hour=3)
    for i in range(3):
        assert sign_up(server, f"flood{i}", addr=f"127.0.21.{i + 1}").status_code == 201
    refused = sign_up(server, "flood3", addr="127.0.21.9")
    assert refused.status_code == 429, refused.text
    assert 3500 < int(refused.headers["Retry-After"]) <= 3600
    assert "too many sign-ups from your network" in refused.json()["detail"]
    assert "try again in 60 minutes" in refused.json()["detail"]
    assert server.services.users.by_name("flood3") is None
    assert sign_up(server, "elsewhere", addr="127.0.22.1").status_code == 201


def test_failed_sign_ins_are_limited_per_network(make_server) -> None:
    server = make_server(signup="open", failed_sign_ins_per_network_per_hour=3)
    assert sign_up(server, "henry").status_code == 201
    with client(server, "127.0.23.1") as guesser, client(server, "127.0.24.1") as other:
        for i in range(3):
            assert guesser.post("/api/v1/sessions", json={"name": "henry", "password": f"guess-{i}-xxxx"}).status_code == 401
        refused = guesser.post("/api/v1/sessions", json={"name": "henry", "password": GOOD})
        assert refused.status_code == 429 and int(refused.headers["Retry-After"]) > 0
        assert "wrong passwords" in refused.json()["detail"]
        assert other.post("/api/v1/sessions", json={"name": "henry", "password": GOOD}).status_code == 200


def test_two_guests_behind_one_address_see_nothing_of_each_other(make_server) -> None:
    server = make_server()
    with client(server, "127.0.25.5") as visitor:
        first, second = visitor.post("/api/v1/guests"), visitor.post("/api/v1/guests")
    assert first.status_code == second.status_code == 201
    one, two = first.json(), second.json()
    assert one["name"].startswith("guest-") and one["name"] != two["name"] and one["key"] != two["key"]
    with client(server, "127.0.25.5", one["key"]) as a, client(server, "127.0.25.5", two["key"]) as b:
        job_a = wait_done(a, a.post("/api/v1/jobs", json=SMALL).json()["id"])
        job_b = wait_done(b, b.post("/api/v1/jobs", json={**SMALL, "prompt": "b's"}).json()["id"])
        assert job_a["state"] == job_b["state"] == "succeeded"
        assert [j["id"] for j in a.get("/api/v1/jobs").json()["jobs"]] == [job_a["id"]]
        assert [j["id"] for j in b.get("/api/v1/jobs").json()["jobs"]] == [job_b["id"]]
        assert [i["job_id"] for i in a.get("/api/v1/images").json()["images"]] == [job_a["id"]]
        assert a.get(f"/api/v1/jobs/{job_b['id']}").status_code == 404
        assert a.get(job_b["images"][0]["url"]).status_code == 404
        assert b.delete(f"/api/v1/images/{job_a['images'][0]['id']}").status_code == 404
        me = a.get("/api/v1/me").json()
        assert me["name"] == one["name"] and not me["anonymous"]
    with client(server, "127.0.25.5") as keyless:
        assert keyless.get("/api/v1/jobs").json()["jobs"] == [], "the anonymous user at that address has no jobs"


def test_guests_are_limited_per_network_and_need_anonymous_use(make_server) -> None:
    server = make_server(guests_per_network_per_hour=2)
    with client(server, "127.0.26.1") as one, client(server, "127.0.26.2") as two, client(server, "127.0.27.1") as other:
        assert one.post("/api/v1/guests").status_code == 201
        assert two.post("/api/v1/guests").status_code == 201
        refused = one.post("/api/v1/guests")
        assert refused.status_code == 429 and int(refused.headers["Retry-After"]) > 0
        assert "guest sessions" in refused.json()["detail"]
        assert other.post("/api/v1/guests").status_code == 201
    closed = make_server(allow_anonymous=False, signup="open")
    with client(closed) as c:
        refused = c.post("/api/v1/guests")
        assert refused.status_code == 403 and "no guests" in refused.json()["detail"]
        # Keys required, yet a keyless visitor can still sign up and sign in.
        assert c.post("/api/v1/accounts", json={"name": "keyless", "password": GOOD}).status_code == 201
        assert c.post("/api/v1/sessions", json={"name": "keyless", "password": GOOD}).status_code == 200


def test_a_guest_becomes_an_account_and_keeps_its_images(make_server) -> None:
    server = make_server(signup="open")
    with client(server, "127.0.28.1") as visitor:
        guest = visitor.post("/api/v1/guests").json()
    with client(server, "127.0.28.1", guest["key"]) as g:
        assert g.get("/api/v1/me").json()["kind"] == "guest"
        job = wait_done(g, g.post("/api/v1/jobs", json=SMALL).json()["id"])
        assert job["state"] == "succeeded"
        made = g.post("/api/v1/accounts", json={"name": "ivy", "password": GOOD})
        assert made.status_code == 201, made.text
        assert made.json()["name"] == "ivy" and made.json()["key"] != guest["key"]
        me = g.get("/api/v1/me").json()
        assert me["name"] == "ivy" and me["kind"] == "account", "the guest key keeps working, as the account"
        again = g.post("/api/v1/accounts", json={"name": "ivy2", "password": GOOD})
        assert again.status_code == 409 and "signed in as 'ivy'" in again.json()["detail"]
    with client(server, "127.0.29.9", made.json()["key"]) as ivy:
        assert [i["job_id"] for i in ivy.get("/api/v1/images").json()["images"]] == [job["id"]]
        assert ivy.get(job["images"][0]["url"]).status_code == 200
    with client(server) as c:
        key = c.post("/api/v1/sessions", json={"name": "ivy", "password": GOOD}).json()["key"]
    with client(server, key=key) as ivy:
        assert [j["id"] for j in ivy.get("/api/v1/jobs").json()["jobs"]] == [job["id"]]
    assert count(server, "SELECT COUNT(*) FROM users WHERE kind = 'guest'") == 0


def test_keys_are_minted_listed_and_revoked_at_once(make_server) -> None:
    server = make_server(max_keys_per_user=3)
    user, first = server.services.users.add("jack")
    _, other_key = server.services.users.add("kate")
    with client(server, key=first) as jack, client(server, key=other_key) as kate:
        listed = jack.get("/api/v1/me/keys").json()
        assert [(k["label"], k["current"]) for k in listed] == [("kakumei users add", True)]
        assert set(listed[0]) == {"id", "label", "created_at", "last_used_at", "current", "horde"}
        made = jack.post("/api/v1/me/keys", json={"label": "laptop"})
        assert made.status_code == 201 and made.json()["label"] == "laptop"
        unlabelled = jack.post("/api/v1/me/keys")
        assert unlabelled.status_code == 201 and unlabelled.json()["label"] == ""
        full = jack.post("/api/v1/me/keys", json={"label": "one too many"})
        assert full.status_code == 409 and "3 keys" in full.json()["detail"]
        assert first not in jack.get("/api/v1/me/keys").text

        laptop = made.json()
        with client(server, key=laptop["key"]) as on_laptop:
            assert on_laptop.get("/api/v1/me").json()["name"] == "jack"
            current = {k["label"]: k["current"] for k in on_laptop.get("/api/v1/me/keys").json()}
            assert current == {"kakumei users add": False, "laptop": True, "": False}
            assert kate.delete(f"/api/v1/me/keys/{laptop['id']}").status_code == 404, "not kate's key"
            assert jack.delete(f"/api/v1/me/keys/{laptop['id']}").status_code == 204
            # The very next request with it fails.
            assert on_laptop.get("/api/v1/me").status_code == 401
            assert on_laptop.get("/api/v1/jobs").status_code == 401
        assert jack.delete(f"/api/v1/me/keys/{laptop['id']}").status_code == 404
        assert jack.delete("/api/v1/me/keys/not-a-number").status_code == 422
        assert jack.post("/api/v1/me/keys", json={"label": "room again"}).status_code == 201
        assert jack.get("/api/v1/me").status_code == 200
    with client(server) as keyless:
        assert keyless.get("/api/v1/me/keys").status_code == 401
        assert keyless.post("/api/v1/me/keys", json={}).status_code == 401
        assert keyless.delete("/api/v1/me/keys/1").status_code == 401


def test_an_operators_user_keeps_its_last_key(make_server) -> None:
    server = make_server()
    _, key = server.services.users.add("liam")
    with client(server, key=key) as liam:
        (only,) = liam.get("/api/v1/me/keys").json()
        refused = liam.delete(f"/api/v1/me/keys/{only['id']}")
        assert refused.status_code == 409 and "last key" in refused.json()["detail"]
        assert liam.get("/api/v1/me").status_code == 200
        spare = liam.post("/api/v1/me/keys", json={"label": "spare"}).json()
        assert liam.delete(f"/api/v1/me/keys/{only['id']}").status_code == 204
        assert liam.get("/api/v1/me").status_code == 401
    with client(server, key=spare["key"]) as liam:
        assert liam.get("/api/v1/me").json()["name"] == "liam"


def test_password_routes_run_off_the_event_loop() -> None:
    """Hashing takes tens of milliseconds: in an async route it would stall every request.
    Sync routes run in the thread pool."""
    import inspect

    from kakumei.server.routes import accounts

    for route in accounts.router.routes:
        assert not inspect.iscoroutinefunction(route.endpoint), route.path
