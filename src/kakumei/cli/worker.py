"""`kakumei worker` (lend this machine to a server) and `kakumei workers` (the operator's view
of worker keys and records)."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from kakumei.cli.common import (
    add_database_option,
    open_database,
    refuse_inexact,
    setup_logging,
    with_overrides,
)
from kakumei.config import Settings
from kakumei.errors import ConfigError

log = logging.getLogger(__name__)


def register(subparsers: Any) -> None:
    """Add `worker` and `workers` to the CLI's subparsers."""
    worker = subparsers.add_parser(
        "worker", help="lend this machine to a kakumei server: pull jobs over HTTP(S), earn credit"
    )
    worker.add_argument("--server", metavar="URL", help="the server, e.g. https://sd.example.org (or KAKUMEI_WORKER_SERVER)")
    worker.add_argument("--key", metavar="WORKER_KEY", help="this machine's worker key (better: KAKUMEI_WORKER_KEY); with --horde, its owner's API key")
    worker.add_argument("--horde", metavar="URL", help="lend this machine to an AI Horde instead (the public one, or a kakumei server's /api/v2), e.g. https://aihorde.net")
    worker.add_argument("--name", help="with --horde: this worker's name on the horde (default: the host name)")
    worker.add_argument("--model", "-m", action="append", dest="models", help="a model this worker runs; repeat for several (default: the configured model)")
    worker.add_argument("--max-pixels", type=int, metavar="N", help="take only jobs of at most N pixels (width x height)")
    worker.add_argument("--max-batch", type=int, metavar="N", help="take only jobs of at most N images")
    worker.add_argument("--batch-jobs", type=int, metavar="N",
                        help="run up to N compatible jobs of different users as one batch "
                             "(default: 4 on a GPU, where it pays, 1 on a CPU)")
    worker.add_argument("--verbose", "-v", action="store_true", help="log every HTTP call and the model libraries' messages (default: one line per job)")
    worker.add_argument("--device", choices=["auto", "cuda", "mps", "cpu"], help="as for generate")
    worker.add_argument("--dtype", choices=["auto", "float32", "float16", "bfloat16"], help="as for generate")
    worker.add_argument("--low-memory", action="store_true", default=None, help="as for generate")
    worker.set_defaults(func=cmd_worker)

    workers = subparsers.add_parser("workers", help="worker keys and each worker's record (operators)")
    sub = workers.add_subparsers(dest="workers_command", metavar="ACTION", required=True)
    add = sub.add_parser("add", help="create a worker key owned by a user, who earns its credits (key shown once)")
    add.add_argument("owner", help="the user who owns the machine")
    add.add_argument("name", help="a name for the machine, unique on this server")
    add_database_option(add)
    add.set_defaults(func=cmd_workers_add)
    listing = sub.add_parser("list", help="every worker: status, jobs, speed, checks")
    add_database_option(listing)
    listing.set_defaults(func=cmd_workers_list)
    status = sub.add_parser("status", help="set a worker's status: lift a quarantine, or trust a known machine")
    status.add_argument("name")
    status.add_argument("status", choices=["new", "trusted", "suspect", "quarantined"])
    add_database_option(status)
    status.set_defaults(func=cmd_workers_status)


# -- kakumei worker -----------------------------------------------------------------------


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    from kakumei.worker.loop import batch_jobs_for, engine_device_type
    from kakumei.worker.remote import HttpJobSource, WorkerRefused

    settings = with_overrides(
        settings, worker_server=args.server, worker_key=args.key, device=args.device, dtype=args.dtype,
        low_memory=args.low_memory,
    )
    refuse_inexact(settings, "kakumei worker")
    if args.horde:
        return _horde_worker(args, settings)
    if not settings.worker_server or not settings.worker_key:
        raise ConfigError("a worker needs --server URL and --key WORKER_KEY (or KAKUMEI_WORKER_SERVER and KAKUMEI_WORKER_KEY)")
    if not settings.worker_server.startswith(("http://", "https://")):
        raise ConfigError(f"--server must be an http:// or https:// URL, got {settings.worker_server!r}")
    for flag, value in (("--max-pixels", args.max_pixels), ("--max-batch", args.max_batch), ("--batch-jobs", args.batch_jobs)):
        if value is not None and value < 1:
            raise ConfigError(f"{flag} must be at least 1, got {value}")
    setup_logging(args.verbose)
    models = tuple(args.models or [settings.model])
    source = HttpJobSource(settings.worker_server, settings.worker_key)
    stop = threading.Event()
    running: list[Any] = []  # the worker, once made: Ctrl-C says whether a job goes back
    _on_ctrl_c(stop, lambda: bool(running) and running[0].busy, source.stopping)
    try:
        info = source.hello()
        print(
            f"worker {info['name']!r} of {info['owner']} ({info['status']}) working for {settings.worker_server}; "
            f"models: {', '.join(models)}; Ctrl-C hands back the running job and stops",
            file=sys.stderr,
            flush=True,
        )
        from kakumei.engine.devices import quiet_libraries
        from kakumei.engine.pipeline import Engine

        if not args.verbose:
            quiet_libraries()
        engine = Engine(settings)
        batch_jobs = batch_jobs_for(engine_device_type(engine), args.batch_jobs)
        _work(source, engine, info["name"], _capabilities(args, models, engine), batch_jobs, stop, running)
    except WorkerRefused as exc:
        raise ConfigError(str(exc)) from None
    finally:
        source.close()
    print("worker stopped", file=sys.stderr)
    return 0


def _horde_worker(args: argparse.Namespace, settings: Settings) -> int:
    """`kakumei worker --horde URL --key KEY`: pop the horde's jobs, run them on this engine."""
    import socket

    from kakumei.worker.horde import HordeJobSource, HordeRefused

    if args.server:
        raise ConfigError("use either --server (a kakumei server's worker protocol) or --horde (the AI Horde's), not both")
    if not args.horde.startswith(("http://", "https://")):
        raise ConfigError(f"--horde must be an http:// or https:// URL, got {args.horde!r}")
    if not settings.worker_key:
        raise ConfigError("a horde worker needs --key: its owner's API key on the horde (or KAKUMEI_WORKER_KEY)")
    setup_logging(args.verbose)
    name = args.name or socket.gethostname()
    models = tuple(args.models or [settings.model])
    source = HordeJobSource(args.horde, settings.worker_key, name)
    stop = threading.Event()
    running: list[Any] = []
    _on_ctrl_c(stop, lambda: bool(running) and running[0].busy, source.stopping)
    try:
        from kakumei.engine.devices import quiet_libraries
        from kakumei.engine.pipeline import Engine

        if not args.verbose:
            quiet_libraries()
        engine = Engine(settings)
        caps = _capabilities(args, models, engine)
        print(f"worker {name!r} working for the horde at {args.horde}; models: {', '.join(models)}; "
              "Ctrl-C gives the running job back and stops", file=sys.stderr, flush=True)
        _work(source, engine, name, caps, 1, stop, running)
    except HordeRefused as exc:
        raise ConfigError(str(exc)) from None
    finally:
        source.close()
    print("worker stopped", file=sys.stderr)
    return 0


def _capabilities(args: argparse.Namespace, models: tuple[str, ...], engine: Any) -> Any:
    """What this worker can run; the protocol's limits, checked here rather than refused by
    the server."""
    from kakumei.protocol import Capabilities
    from kakumei.worker.loop import engine_device_type

    try:
        return Capabilities(models=models, max_pixels=args.max_pixels, max_images=args.max_batch,
                            device=engine_device_type(engine))
    except ValueError as exc:
        raise ConfigError(f"invalid worker capabilities: {exc}") from None


def _work(source: Any, engine: Any, name: str, caps: Any, batch_jobs: int, stop: threading.Event, running: list[Any]) -> None:
    """Run jobs from `source` until `stop`; the worker goes into `running` for Ctrl-C to ask."""
    from kakumei.worker.loop import Worker

    worker = Worker(source, engine, name, capabilities=caps, lease_seconds=source.lease_seconds, poll_seconds=1.0,
                    max_batch_jobs=batch_jobs)
    running.append(worker)
    while not stop.is_set():
        if not worker.run_one(stop):
            stop.wait(worker.poll_seconds)


def _on_ctrl_c(stop: threading.Event, busy: Callable[[], bool], *also: threading.Event) -> None:
    """First Ctrl-C (or SIGTERM): stop at the engine's next step and hand the job back.
    Second: quit at once (the lease running out hands the job back)."""

    def handler(signum: int, frame: Any) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        for event in also:
            event.set()
        doing = "handing back the running job" if busy() else "no job is running"
        print(f"stopping: {doing} (Ctrl-C again to quit now)", file=sys.stderr, flush=True)

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


# -- kakumei workers ----------------------------------------------------------------------


def _open(settings: Settings, database: str | None) -> Any:
    return open_database(with_overrides(settings, database=database))


def cmd_workers_add(args: argparse.Namespace, settings: Settings) -> int:
    from kakumei.store.users import UserStore
    from kakumei.store.workers import WorkerExists, WorkerStore

    db = _open(settings, args.database)
    try:
        owner = UserStore(db).by_name(args.owner)
        if owner is None or owner.is_anonymous:
            raise ConfigError(f"no user named {args.owner!r}; add one with 'kakumei users add {args.owner}'")
        try:
            record, key = WorkerStore(db).add(owner.id, args.name)
        except (WorkerExists, ValueError) as exc:
            raise ConfigError(str(exc)) from None
    finally:
        db.close()
    print(key)
    print(f"added worker {record.name!r} for {owner.name}; run: kakumei worker --server URL --key KEY "
          "(the key is not shown again)", file=sys.stderr)
    return 0


def cmd_workers_list(args: argparse.Namespace, settings: Settings) -> int:
    from kakumei.store.workers import WorkerStore

    db = _open(settings, args.database)
    try:
        store = WorkerStore(db)
        rows = [(w, store.verification_counts(w.id), store.pending_credit(w.id)) for w in store.list()]
    finally:
        db.close()
    # "held" is credit waiting in escrow, "paid" what the owner has been paid; "queued" the
    # re-run checks still to come.
    print(f"{'name':<20} {'owner':<16} {'status':<12} {'jobs':>6} {'failed':>6} {'units':>8} {'units/s':>8} "
          f"{'held':>8} {'paid':>8} {'checked':>7} {'bad':>4} {'queued':>6} {'last seen':>10}")
    now = time.time()
    for w, checks, held in rows:
        speed = f"{w.units_per_second:.3f}" if w.units_per_second is not None else "-"
        seen = f"{now - w.last_seen_at:.0f}s ago" if w.last_seen_at else "never"
        print(f"{w.name:<20} {w.owner:<16} {w.status.value:<12} {w.jobs_done:>6} {w.jobs_failed:>6} "
              f"{w.units_done:>8.2f} {speed:>8} {held:>8.2f} {w.units_paid:>8.2f} "
              f"{checks.get('passed', 0) + checks.get('failed', 0):>7} "
              f"{checks.get('failed', 0) + w.results_refused:>4} {checks.get('pending', 0):>6} {seen:>10}")
    return 0


def cmd_workers_status(args: argparse.Namespace, settings: Settings) -> int:
    from kakumei.store.workers import WorkerStatus, WorkerStore

    db = _open(settings, args.database)
    try:
        if not WorkerStore(db).set_status(args.name, WorkerStatus(args.status)):
            raise ConfigError(f"no worker named {args.name!r}; see 'kakumei workers list'")
    finally:
        db.close()
    print(f"worker {args.name!r} is now {args.status}", file=sys.stderr)
    return 0
