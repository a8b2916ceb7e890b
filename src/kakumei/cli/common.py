"""What every command group shares: exit codes, settings overrides from flags, the database."""

from __future__ import annotations

import argparse
import logging
from typing import Any

from kakumei.config import Settings
from kakumei.errors import ConfigError, KakumeiError

EXIT_ERROR = 2
EXIT_INTERRUPTED = 130


def setup_logging(verbose: bool) -> None:
    """One line per job and what goes wrong; `--verbose` adds every HTTP call and the model
    libraries' own messages. Quiet by default: an idle worker polls every second."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(asctime)s %(message)s",
                        datefmt="%H:%M:%S")
    for name in ("httpx", "httpcore", "urllib3", "filelock", "PIL"):
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.WARNING)


def with_overrides(settings: Settings, **overrides: Any) -> Settings:
    """`settings` with the flags that were given (None: not given), validated as settings are."""
    values = {k: v for k, v in overrides.items() if v is not None}
    try:
        return Settings.model_validate({**settings.model_dump(), **values})
    except ValueError as exc:
        raise ConfigError(f"invalid option: {exc}") from None


def open_database(settings: Settings) -> Any:
    """The migrated database, or a sentence saying why it cannot be opened."""
    # Imported here: `kakumei --help` and `kakumei generate` never touch the store.
    from kakumei.store.db import Database, redact, redact_text
    from kakumei.store.migrate import migrate

    db = Database(settings.database_url)
    try:
        migrate(db)
    except KakumeiError:
        raise
    except Exception as exc:
        db.close()
        # Drivers may repeat the URL or a part of it; the sentence never shows its password.
        reason = redact_text(str(exc), settings.database_url)
        raise ConfigError(f"cannot open database {redact(settings.database_url)}: {reason}".strip()) from None
    return db


def add_database_option(parser: argparse.ArgumentParser) -> None:
    """`--database URL` for the operator's commands, which work on the server's database."""
    parser.add_argument("--database", metavar="URL", help="as for serve")


def refuse_inexact(settings: Settings, command: str) -> None:
    """Servers and workers make images that are checked by exact re-runs (a server's own engine
    is a verifier; a worker's results are re-run elsewhere): an inexact speed-up there would
    quarantine honest workers or get this one quarantined, so it is for `kakumei generate`."""
    if settings.deepcache_interval:
        raise ConfigError(
            f"{command} makes images that are checked against exact re-runs, and deepcache_interval "
            f"{settings.deepcache_interval} changes them: set deepcache_interval to 0 here "
            "(it is for kakumei generate)"
        )

