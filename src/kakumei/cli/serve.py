"""`kakumei serve`: share this machine, an HTTP API over a fair job queue."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from kakumei.cli.common import open_database, with_overrides
from kakumei.config import Settings


def register(subparsers: Any) -> None:
    """Add `serve` to the CLI's subparsers."""
    serve = subparsers.add_parser("serve", help="share this machine: HTTP API over a fair job queue")
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (default 7860)")
    serve.add_argument("--database", metavar="URL", help="sqlite:///FILE or postgresql://... (default: SQLite in the data dir)")
    serve.add_argument("--no-local-worker", action="store_true", help="do not generate in this process; only remote workers run jobs")
    serve.add_argument("--model", "-m", help="default model: hub id, diffusers folder or kakumei:tiny")
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
    open_database(settings).close()  # fail here, with a sentence, rather than inside uvicorn
    worker = f"local worker with {settings.model}" if settings.local_worker else "no local worker"
    print(
        f"kakumei serving http://{settings.host}:{settings.port} "
        f"(database {redact(settings.database_url)}, {worker}); API docs at /docs",
        file=sys.stderr,
        flush=True,
    )
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level="warning")
    return 0
