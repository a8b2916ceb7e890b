"""/api/v1/me, terms, refusals over HTTP (status, sentence, Retry-After) and the admin API,
on both databases; bans hold when the server restarts."""

from __future__ import annotations

SMALL = {"prompt": "a red fox in snow", "width": 64, "height": 64, "steps": 2}


def test_me_terms_refusals_and_admin(make_server) -> None:
    server = make_server(local_worker=False, terms="CreativeML OpenRAIL-M: you are responsible.",
                         prompt_blocklist=["forbidden"], key_rate_per_minute=1, key_burst=2)
    _, root_key = server.services.users.add("root", admin=True)
    _, alice_key = server.services.users.add("alice")
    with server.client() as anon, server.client(alice_key) as alice, server.client(root_key) as root:
        # terms first, once
        refused = anon.post("/api/v1/jobs", json=SMALL)
        assert refused.status_code == 403 and "accept this server's terms" in refused.json()["detail"]
        me = anon.get("/api/v1/me").json()
        assert me["anonymous"] and me["balance"] is None and me["weight"] == 0.5 and me["free_tier"]
        terms = me["terms"]
        assert terms["required"] and not terms["accepted"] and "OpenRAIL" in terms["text"]
        assert anon.post("/api/v1/me/terms", json={"accepted": True, "version": "old"}).status_code == 409
        accepted = anon.post("/api/v1/me/terms", json={"accepted": True, "version": terms["version"]}).json()
        assert accepted["terms"]["accepted"] and accepted["standing"]["allowed"]
        assert anon.post("/api/v1/jobs", json=SMALL).status_code == 201
        blocked = anon.post("/api/v1/jobs", json={**SMALL, "prompt": "a Forbidden fox"})
        assert blocked.status_code == 403 and "change the prompt" in blocked.json()["detail"]
        # alice: terms, then the key's bucket of two
        alice.post("/api/v1/me/terms", json={"accepted": True, "version": terms["version"]})
        assert [alice.post("/api/v1/jobs", json=SMALL).status_code for _ in range(2)] == [201, 201]
        limited = alice.post("/api/v1/jobs", json=SMALL)
        assert limited.status_code == 429 and int(limited.headers["Retry-After"]) >= 1
        assert "too many requests with this API key" in limited.json()["detail"]
        # the A1111 API gives the same refusal
        a1111 = alice.post("/sdapi/v1/txt2img", json={"prompt": "a fox", "width": 64, "height": 64, "steps": 2})
        assert a1111.status_code == 429 and "Retry-After" in a1111.headers
        me = alice.get("/api/v1/me").json()
        assert me["name"] == "alice" and me["weight_source"] == "merit" and me["limits"]["queued_jobs"] == 2
        assert 0 < me["share"] <= 1
        # alice and the keyless visitor are free-tier people of one network: one group
        assert me["group"] == {
            "kind": "network", "network": "127.0.0.0/24", "others": 1,
            "sentence": "You share this server's free time with 1 other person on your network 127.0.0.0/24.",
        }
        # the only group waiting; inside it weight 1 beside the keyless visitor's 0.5
        assert abs(me["share"] - 2 / 3) < 1e-9
        # admin
        assert alice.get("/api/v1/admin/users").status_code == 403
        granted = root.post("/api/v1/admin/users/alice/grant", json={"amount": 50, "note": "ran a worker"}).json()
        # her two queued jobs hold their cost from the balance (reserved when accepted)
        assert 49.99 < granted["balance"] < 50 and granted["weight"] > 2
        me = alice.get("/api/v1/me").json()
        assert 49.99 < me["balance"] < 50 and not me["free_tier"]
        assert me["group"]["kind"] == "own" and me["group"]["network"] is None
        assert me["group"]["sentence"].startswith("Your workers' credit gives you a share of your own")
        fixed = root.put("/api/v1/admin/users/alice/weight", json={"weight": 3}).json()
        assert fixed["weight"] == 3 and fixed["weight_source"] == "admin"
        ban = root.post("/api/v1/admin/bans", json={"kind": "user", "target": "alice", "reason": "spam"})
        assert ban.status_code == 201
        assert root.post("/api/v1/admin/bans", json={"kind": "ip", "target": "not-an-ip", "reason": "x"}).status_code == 400
        actions = [e["action"] for e in root.get("/api/v1/admin/audit").json()]
        assert actions == ["ban-user", "weight", "grant"]
        assert all(e["actor"] == "root" for e in root.get("/api/v1/admin/audit").json())
    server.__exit__(None, None, None)

    restarted = make_server(local_worker=False)
    with restarted.client(alice_key) as alice, restarted.client(root_key) as root:
        banned = alice.post("/api/v1/jobs", json=SMALL)
        assert banned.status_code == 403 and "banned" in banned.json()["detail"] and "spam" in banned.json()["detail"]
        assert alice.get("/api/v1/me").json()["standing"]["allowed"] is False
        assert root.delete("/api/v1/admin/bans", params={"kind": "user", "target": "alice"}).json() == {"lifted": 1}
        assert alice.post("/api/v1/jobs", json=SMALL).status_code == 201
