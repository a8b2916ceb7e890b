"""The command line: `kakumei generate | info | models | serve | users | worker | workers`.

One module per command group registers its subcommands here. Every command turns a
KakumeiError into one sentence on stderr and a non-zero exit; a traceback appears only with
--debug. Command modules import torch, the server and the store inside their command
functions, so that `kakumei --help` stays fast.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Sequence
from typing import Any

from kakumei import __version__
from kakumei.cli import generate, models, serve, users, worker
from kakumei.cli.common import EXIT_ERROR, EXIT_INTERRUPTED
from kakumei.config import load_settings
from kakumei.errors import KakumeiError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kakumei", description="Stable Diffusion for everyone.")
    parser.add_argument("--version", action="version", version=f"kakumei {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for group in (generate, models, serve, users, worker):
        group.register(sub)
    _debug_everywhere(sub)
    return parser


def _debug_everywhere(sub: argparse._SubParsersAction) -> None:
    """`--debug` after the command as well (`kakumei generate x --debug`); SUPPRESS keeps a
    subcommand from resetting the one given before it."""
    for parser in set(sub.choices.values()):
        parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks for errors")
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                _debug_everywhere(action)


def _settings_overrides(args: argparse.Namespace) -> dict[str, Any]:
    keys = ("model", "device", "dtype", "low_memory")
    values = {k: getattr(args, k, None) for k in keys}
    if getattr(args, "out", None) is not None:
        values["output_dir"] = args.out
    return values


# OpenMP's default lets a compute thread spin for a while after each parallel region, waiting
# for the next one. Between a UNet's ~1500 ops (Python runs in between) that spinning was two
# thirds of a CPU run's CPU time (SD 1.5 at 256x256 on a busy 2-core machine: 5.1 s of CPU per
# step with it, 1.6 s without, wall time 12-16 s against 5-6 s), and it takes the cores from
# the work itself and from other processes. Read once, when
# torch loads OpenMP, so it is set before any command imports torch; a value the user set wins.
THREAD_WAIT_POLICY = ("OMP_WAIT_POLICY", "PASSIVE")


# Set by main for the process entry point (`run`): the command asked to skip teardown.
_exit_without_teardown = False


def main(argv: Sequence[str] | None = None) -> int:
    global _exit_without_teardown
    os.environ.setdefault(*THREAD_WAIT_POLICY)
    parser = build_parser()
    args = parser.parse_args(argv)
    _exit_without_teardown = bool(getattr(args, "exit_without_teardown", False))
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_ERROR
    try:
        settings = load_settings(_settings_overrides(args))
        return int(args.func(args, settings) or 0)
    except KakumeiError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `kakumei info x.png | head`: the reader left, nothing to report
        return 0


def run() -> None:
    """The process entry point (`kakumei`, `python -m kakumei.cli`). `kakumei generate` ends
    with `os._exit` once its images are written and its output flushed: the interpreter's
    teardown would free a loaded model's tensors and thousands of modules one by one (about
    1.5 s of a 4-step SD 1.5 run on 2 cores) for a process that is about to end anyway. It
    keeps no atexit work; every file it writes is closed before it returns."""
    code = main()
    if _exit_without_teardown:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)

