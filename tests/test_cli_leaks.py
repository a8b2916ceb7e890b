"""The CLI's banner and errors name the database without its password."""

from __future__ import annotations




def test_unreachable_database_error_hides_the_password(run_cli) -> None:
    # Port 1: nothing listens, so the driver fails and its message is shown.
    url = "postgresql://kim:userinfo-secret@127.0.0.1:1/k?password=query-secret&connect_timeout=2"
    code, out, err = run_cli("users", "list", "--database", url)
    assert code == 2, err
    assert "cannot open database" in err
    assert "userinfo-secret" not in out + err and "query-secret" not in out + err


def test_unsupported_database_url_error_hides_the_password(run_cli) -> None:
    code, _, err = run_cli("users", "list", "--database", "mysql://kim:userinfo-secret@db/k?password=query-secret")
    assert code == 2 and "unsupported database URL" in err
    assert "userinfo-secret" not in err and "query-secret" not in err


def test_serve_banner_hides_a_password_parameter(run_cli, postgres_database, monkeypatch) -> None:
    import uvicorn

    def started(server: uvicorn.Server, sockets: object = None) -> None:  # the banner, not the serving
        server.started = True

    monkeypatch.setattr(uvicorn.Server, "run", started)
    # A password parameter is a PostgreSQL URL's; the test server trusts local connections, so
    # the password is accepted and ignored.
    url = f"{postgres_database}?password=query-secret"
    code, _, err = run_cli("serve", "--database", url, "--no-local-worker", "--port", "0")
    assert code == 0, err
    assert "kakumei serving" in err and "password=***" in err
    assert "query-secret" not in err
    assert "/docs" in err
