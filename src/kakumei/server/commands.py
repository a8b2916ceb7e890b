"""`kakumei serve` and `kakumei users`, registered into the CLI by cli.py."""

from __future__ import annotations

import argparse
import socket
import sys
from typing import Any

from kakumei.config import Settings
from kakumei.errors import ConfigError, KakumeiError


def register(subparsers: Any) -> None:
    """Add `serve` and `users` to the CLI's subparsers."""
    serve = subparsers.add_parser("serve", help="share this machine: HTTP API over a fair job queue")
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (default 7860)")
    serve.add_argument("--fd", type=int, metavar="N", help="serve on the listening socket inherited as file descriptor N, instead of --host/--port")
    serve.add_argument("--database", metavar="URL", help="sqlite:///FILE or postgresql://... (default: SQLite in the data dir)")
    serve.add_argument("--no-local-worker", action="store_true", help="do not generate in this process; only remote workers run jobs")
    serve.add_argument("--model", "-m", help="default model: hub id, diffusers folder or kakumei:tiny")
    serve.set_defaults(func=cmd_serve)

    users = subparsers.add_parser("users", help="manage the server's users and API keys")
    users_sub = users.add_subparsers(dest="users_command", metavar="ACTION", required=True)
    add = users_sub.add_parser("add", help="add a user and print their API key (shown once)")
    add.add_argument("name")
    add.add_argument("--weight", type=float, help="fixed share of the machine relative to others (default: from merit)")
    add.add_argument("--admin", action="store_true", help="may use /api/v1/admin")
    add.add_argument("--database", metavar="URL", help="as for serve")
    add.set_defaults(func=cmd_users_add)
    listing = users_sub.add_parser("list", help="list users with their share and queue")
    listing.add_argument("--database", metavar="URL", help="as for serve")
    listing.set_defaults(func=cmd_users_list)
    from kakumei.server.moderation_commands import register_moderation

    register_moderation(users_sub)


def _apply(settings: Settings, **overrides: Any) -> Settings:
    values = {k: v for k, v in overrides.items() if v is not None}
    try:
        return Settings.model_validate({**settings.model_dump(), **values})
    except ValueError as exc:
        raise ConfigError(f"invalid option: {exc}") from None


def _open(settings: Settings) -> Any:
    """The migrated database, or a sentence saying why it cannot be opened."""
    from kakumei.store.db import Database, redact
    from kakumei.store.migrate import migrate

    db = Database(settings.database_url)
    try:
        migrate(db)
    except KakumeiError:
        raise
    except Exception as exc:
        db.close()
        raise ConfigError(f"cannot open database {redact(settings.database_url)}: {exc}".strip()) from None
    return db


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from kakumei.server.app import create_app
    from kakumei.store.db import redact

    settings = _apply(
        settings,
        host=args.host,
        port=args.port,
        database=args.database,
        local_worker=False if args.no_local_worker else None,
    )
    _open(settings).close()  # fail here, with a sentence, rather than inside uvicorn
    sock = None if args.fd is None else _inherited_socket(args.fd)
    if sock is not None:  # where it really listens, for this line and the A1111 cmd-flags
        host, port = sock.getsockname()[:2]
        settings = _apply(settings, host=host, port=port)
    worker = f"local worker with {settings.model}" if settings.local_worker else "no local worker"
    print(
        f"kakumei serving http://{settings.host}:{settings.port} "
        f"(database {redact(settings.database_url)}, {worker}); API docs at /docs",
        file=sys.stderr,
        flush=True,
    )
    if sock is None:
        uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level="warning")
        return 0
    server = uvicorn.Server(uvicorn.Config(create_app(settings), log_level="warning"))
    server.run(sockets=[sock])
    return 0 if server.started else 3  # uvicorn.run's exit status when startup fails


def _inherited_socket(fd: int) -> socket.socket:
    """The listening socket a supervisor (or a test) bound and handed over: no port to race for."""
    try:
        return socket.socket(fileno=fd)
    except OSError as exc:
        raise ConfigError(f"--fd {fd} is not an open socket: {exc.strerror}") from None


def cmd_users_add(args: argparse.Namespace, settings: Settings) -> int:
    from kakumei.store.users import UserExists, UserStore

    if args.weight is not None and args.weight <= 0:
        raise ConfigError(f"--weight must be above 0, got {args.weight}")
    db = _open(_apply(settings, database=args.database))
    try:
        user, key = UserStore(db).add(args.name, weight=args.weight, admin=args.admin)
    except (UserExists, ValueError) as exc:
        raise ConfigError(str(exc)) from None
    finally:
        db.close()
    print(key)
    print(f"added user {user.name!r}; give them this key, it is not shown again", file=sys.stderr)
    return 0


def cmd_users_list(args: argparse.Namespace, settings: Settings) -> int:
    from kakumei.store.users import UserStore

    db = _open(_apply(settings, database=args.database))
    try:
        users = UserStore(db).list()
    finally:
        db.close()
    print(f"{'name':<24} {'weight':>6} {'counter':>10} {'queued':>6}")
    for user in users:
        print(f"{user.name:<24} {user.weight:>6g} {user.virtual_counter:>10.2f} {user.queued_jobs:>6}")
    return 0
