"""`kakumei users list`: who is on the server, of which kind, in which fair-share group."""

from __future__ import annotations

from pathlib import Path

from kakumei.schemas import GenerationRequest
from kakumei.store.db import Database
from kakumei.store.images import ImageStore
from kakumei.store.jobs import JobStore, NewJob
from kakumei.store.migrate import migrate
from kakumei.store.users import UserStore


def test_users_list_shows_kind_and_group(run_cli, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'users.db'}"
    code, _, err = run_cli("users", "add", "bob", "--database", url)
    assert code == 0, err
    db = Database(url)
    try:
        migrate(db)
        bob = UserStore(db).by_name("bob")
        assert bob is not None and bob.kind == "operator"
        jobs = JobStore(db, ImageStore(db, tmp_path / "images"))
        jobs.submit(NewJob(user_id=bob.id, request=GenerationRequest(prompt="x"), model="m", cost=1.0,
                           client_addr="203.0.113.9", group="net:203.0.113.0/24"))
    finally:
        db.close()
    code, out, err = run_cli("users", "list", "--database", url)
    assert code == 0, err
    header, *rows = out.splitlines()
    assert header.split()[:3] == ["name", "kind", "group"]
    by_name = {row.split()[0]: row.split() for row in rows}
    assert by_name["bob"][1:3] == ["operator", "net:203.0.113.0/24"]
    assert by_name["anonymous"][1:3] == ["anonymous", "-"]
