"""`kakumei serve`: share this machine, an HTTP API over a fair job queue."""

from __future__ import annotations

import argparse
import errno
import socket
import sys
from typing import Any

from kakumei.cli.common import open_database, refuse_inexact, setup_logging, with_overrides
from kakumei.config import Settings
from kakumei.errors import ConfigError


def register(subparsers: Any) -> None:
    """Add `serve` to the CLI's subparsers."""
    serve = subparsers.add_parser("serve", help="share this machine: HTTP API over a fair job queue")
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (default 7860)")
    serve.add_argument("--fd", type=int, metavar="N", help="serve on the listening socket inherited as file descriptor N, instead of --host/--port")
    serve.add_argument("--database", metavar="URL", help="sqlite:///FILE or postgresql://... (default: SQLite in the data dir)")
    serve.add_argument("--no-local-worker", action="store_true", help="do not generate in this process; only remote workers run jobs")
    serve.add_argument("--model", "-m", help="default model: hub id, diffusers folder or kakumei:tiny")
    serve.add_argument("--verbose", "-v", action="store_true", help="log every request and the model libraries' messages (default: one line per job)")
    serve.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from kakumei.server.app import create_app
    from kakumei.store.db import redact

    settings = with_overrides(
        settings,
        host=args.host,
        port=args.port,
        database=args.database,
        local_worker=False if args.no_local_worker else None,
    )
    if settings.local_worker:
        refuse_inexact(settings, "kakumei serve's local worker")
    open_database(settings).close()  # fail here, with a sentence, rather than inside uvicorn
    _raise_open_files_limit()
    # Bound before the banner: a busy port is one sentence, not a success line and an Errno.
    sock = _listening_socket(settings.host, settings.port) if args.fd is None else _inherited_socket(args.fd)
    if args.fd is not None or settings.port == 0:  # where it really listens, for this line and the A1111 cmd-flags
        host, port = sock.getsockname()[:2]
        settings = with_overrides(settings, host=host, port=port)
    setup_logging(args.verbose)
    if settings.local_worker:
        _warn_if_model_missing(settings)
        if not args.verbose:
            from kakumei.engine.devices import quiet_libraries

            quiet_libraries()  # the local worker's loads: no library bars or advisories in the log
    worker = f"local worker with {settings.model}" if settings.local_worker else "no local worker"
    print(
        f"kakumei serving http://{settings.host}:{settings.port} "
        f"(database {redact(settings.database_url)}, {worker}); API docs at /docs (OpenAPI at /openapi.json)",
        file=sys.stderr,
        flush=True,
    )
    # uvicorn would believe X-Forwarded-For from 127.0.0.1 by default; kakumei decides who is
    # calling itself (server/addresses.py, `trusted_proxies`).
    if settings.translator == "dictionary":
        from kakumei.translate import INSTALL_HINT, dictionary_installed

        if not dictionary_installed():
            print(f"note: Japanese prompts will be refused until the offline dictionary is installed: {INSTALL_HINT}", file=sys.stderr, flush=True)
    server = uvicorn.Server(uvicorn.Config(create_app(settings), log_level="info" if args.verbose else "warning", proxy_headers=False))
    server.run(sockets=[sock])
    return 0 if server.started else 3  # uvicorn.run's exit status when startup fails


def _raise_open_files_limit() -> None:
    """Each open event stream is a socket: the usual soft limit of 1,024 open files would
    refuse connections at about a thousand streams, so the soft limit goes up to the hard one
    (what the system lets this user have without privileges)."""
    try:
        import resource
    except ImportError:  # not a POSIX system
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        except (ValueError, OSError):  # a limit the system will not grant: keep the soft one
            pass


def _listening_socket(host: str, port: int) -> socket.socket:
    """A socket bound and listening on host:port, as uvicorn would make it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(
                f"port {port} on {host} is already in use (another kakumei serve?); stop that program or pick another --port"
            ) from None
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    return sock


def _warn_if_model_missing(settings: Settings) -> None:
    """Say at start that the local worker's default model is not on disk, rather than
    letting every job fail later (/healthz says the same)."""
    from kakumei.engine.models import missing_model, resolve_model
    from kakumei.errors import KakumeiError

    try:
        missing = missing_model(resolve_model(settings.model, settings.models_dir), settings.hf_offline)
    except KakumeiError as exc:
        missing = str(exc)
    if missing is not None:
        print(f"warning: {missing}", file=sys.stderr, flush=True)


def _inherited_socket(fd: int) -> socket.socket:
    """The listening socket a supervisor (or a test) bound and handed over: no port to race for."""
    try:
        return socket.socket(fileno=fd)
    except OSError as exc:
        raise ConfigError(f"--fd {fd} is not an open socket: {exc.strerror}") from None
