"""`kakumei users add|list|invite` (the server's users, API keys and invite codes) and
`kakumei users grant|weight|admin|ban|unban|ban-ip|unban-ip|pardon|audit`: the operator's tools
on the command line, the same actions as /api/v1/admin, audited as actor "cli"."""

from __future__ import annotations

import argparse
import datetime
import getpass
import sys
from typing import Any

from kakumei.cli.common import add_database_option, open_database, with_overrides
from kakumei.config import Settings
from kakumei.errors import ConfigError


def _actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except Exception:  # no user name in a bare container: still record where it came from
        return "cli"


def register(subparsers: Any) -> None:
    """Add `users` and its actions to the CLI's subparsers."""
    users = subparsers.add_parser("users", help="manage the server's users and API keys")
    users_sub = users.add_subparsers(dest="users_command", metavar="ACTION", required=True)
    add = users_sub.add_parser("add", help="add a user and print their API key (shown once)")
    add.add_argument("name")
    add.add_argument("--weight", type=float, help="fixed share of the machine relative to others (default: from merit)")
    add.add_argument("--admin", action="store_true", help="may use /api/v1/admin")
    add_database_option(add)
    add.set_defaults(func=cmd_users_add)
    listing = users_sub.add_parser("list", help="list users with their share and queue")
    add_database_option(listing)
    listing.set_defaults(func=cmd_users_list)
    invite = users_sub.add_parser("invite", help="print a new invite code for sign-up (shown once)")
    invite.add_argument("--uses", type=int, default=1, help="how many sign-ups it admits (default 1)")
    invite.add_argument("--hours", type=float, default=168.0, help="how long it is good for (default 168, a week; 0: no end)")
    add_database_option(invite)
    invite.set_defaults(func=cmd_users_invite)

    def sub(name: str, help: str, func: Any) -> argparse.ArgumentParser:
        parser = users_sub.add_parser(name, help=help)
        add_database_option(parser)
        parser.set_defaults(func=func)
        return parser

    def ban_options(parser: argparse.ArgumentParser, reason_help: str) -> None:
        parser.add_argument("--reason", required=True, help=reason_help)
        parser.add_argument("--hours", type=float, help="how long (default: until unbanned)")

    p = sub("grant", "give a user credit (negative: take it back)", cmd_grant)
    p.add_argument("name")
    p.add_argument("amount", type=float)
    p.add_argument("--note", default="", help="why, for the ledger and the audit log")
    p = sub("weight", "fix a user's weight, or 'auto' to let merit decide", cmd_weight)
    p.add_argument("name")
    p.add_argument("weight", help="a number above 0, or auto")
    p = sub("admin", "let a user use /api/v1/admin", cmd_admin)
    p.add_argument("name")
    p.add_argument("--revoke", action="store_true", help="take admin rights away")
    p = sub("ban", "ban a user", cmd_ban)
    p.add_argument("name")
    ban_options(p, "shown to the user with every refusal")
    p = sub("unban", "lift a user's ban", cmd_unban)
    p.add_argument("name")
    p = sub("ban-ip", "ban an address or range (CIDR, e.g. 203.0.113.0/24)", cmd_ban_ip)
    p.add_argument("range")
    ban_options(p, "shown with every refusal")
    p = sub("unban-ip", "lift the bans of an address or range", cmd_unban_ip)
    p.add_argument("range")
    p = sub("pardon", "forget the offences of an address or a user (by name) and end the timeout", cmd_pardon)
    p.add_argument("address")
    p = sub("audit", "show the audit log of admin actions, newest first", cmd_audit)
    p.add_argument("--limit", type=int, default=50, help="how many entries (default 50)")


# -- kakumei users add | list -------------------------------------------------------------


def cmd_users_add(args: argparse.Namespace, settings: Settings) -> int:
    from kakumei.store.users import UserExists, UserStore

    if args.weight is not None and args.weight <= 0:
        raise ConfigError(f"--weight must be above 0, got {args.weight}")
    db = open_database(with_overrides(settings, database=args.database))
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

    db = open_database(with_overrides(settings, database=args.database))
    try:
        store = UserStore(db)
        users, groups = store.list(), store.group_keys()
    finally:
        db.close()
    print(f"{'name':<24} {'kind':<9} {'group':<24} {'weight':>6} {'counter':>10} {'queued':>6}")
    for user in users:
        group = groups.get(user.id, "-")
        print(f"{user.name:<24} {user.kind:<9} {group:<24} {user.weight:>6g} {user.virtual_counter:>10.2f} {user.queued_jobs:>6}")
    return 0


def cmd_users_invite(args: argparse.Namespace, settings: Settings) -> int:
    from kakumei.store.accounts import AccountStore

    if args.uses < 1:
        raise ConfigError(f"--uses must be at least 1, got {args.uses}")
    if args.hours < 0:
        raise ConfigError(f"--hours must be 0 (no end) or more, got {args.hours}")
    settings = with_overrides(settings, database=args.database)
    db = open_database(settings)
    try:
        invite, code = AccountStore(db).add_invite(uses=args.uses, hours=args.hours or None, created_by=_actor())
    finally:
        db.close()
    print(code)
    until = "no end" if invite.expires_at is None else datetime.datetime.fromtimestamp(
        invite.expires_at, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    note = "" if settings.signup == "invite" else f"; sign-up is {settings.signup!r} here, set signup = \"invite\" to use it"
    print(f"invite for {invite.uses_left} sign-up(s), good until {until}; it is not shown again{note}", file=sys.stderr)
    return 0


# -- moderation: the same actions as /api/v1/admin ------------------------------------------


def _stores(args: argparse.Namespace, settings: Settings) -> Any:
    from kakumei.server.admission import merit_policy
    from kakumei.store.ledger import Ledger
    from kakumei.store.moderation import Moderation
    from kakumei.store.users import UserStore

    settings = with_overrides(settings, database=args.database)
    db = open_database(settings)
    return db, UserStore(db), Ledger(db, merit_policy(settings)), Moderation(db)


def _named(users: Any, name: str) -> Any:
    user = users.by_name(name)
    if user is None:
        raise ConfigError(f"no user named {name!r}; see kakumei users list")
    return user


def _run(args: argparse.Namespace, settings: Settings, action: Any) -> int:
    db, users, ledger, moderation = _stores(args, settings)
    try:
        message = action(users, ledger, moderation)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    finally:
        db.close()
    print(message)
    return 0


def cmd_grant(args: argparse.Namespace, settings: Settings) -> int:
    def act(users: Any, ledger: Any, moderation: Any) -> str:
        user = _named(users, args.name)
        if user.is_anonymous:
            raise ValueError("keyless callers have no account to hold credit; grant it to a registered user")
        moderation.grant(ledger, user.id, user.name, args.amount, args.note, _actor())
        return f"{user.name}: balance {ledger.balance(user.id):g}"
    return _run(args, settings, act)


def cmd_weight(args: argparse.Namespace, settings: Settings) -> int:
    def act(users: Any, ledger: Any, moderation: Any) -> str:
        user = _named(users, args.name)
        if args.weight == "auto":
            weight = None
        else:
            try:
                weight = float(args.weight)
            except ValueError:
                raise ValueError(f"weight must be a number above 0 or 'auto', got {args.weight!r}") from None
        moderation.set_weight(ledger, user.id, user.name, weight, _actor())
        return f"{user.name}: weight {_named(users, args.name).weight:g}"
    return _run(args, settings, act)


def cmd_admin(args: argparse.Namespace, settings: Settings) -> int:
    def act(users: Any, ledger: Any, moderation: Any) -> str:
        user = _named(users, args.name)
        if user.is_anonymous:
            raise ValueError("the anonymous account cannot be an admin")
        moderation.set_admin(user.id, user.name, not args.revoke, _actor())
        return f"{user.name}: {'no longer an admin' if args.revoke else 'admin'}"
    return _run(args, settings, act)


def _seconds(hours: float | None) -> float | None:
    if hours is not None and hours <= 0:
        raise ValueError(f"--hours must be above 0, got {hours}")
    return None if hours is None else hours * 3600


def cmd_ban(args: argparse.Namespace, settings: Settings) -> int:
    def act(users: Any, ledger: Any, moderation: Any) -> str:
        user = _named(users, args.name)
        if user.is_anonymous:
            raise ValueError("ban anonymous visitors by address: kakumei users ban-ip RANGE")
        moderation.ban("user", str(user.id), args.reason, _actor(), seconds=_seconds(args.hours))
        return f"banned {user.name}"
    return _run(args, settings, act)


def cmd_unban(args: argparse.Namespace, settings: Settings) -> int:
    def act(users: Any, ledger: Any, moderation: Any) -> str:
        user = _named(users, args.name)
        n = moderation.lift("user", str(user.id), _actor())
        return f"lifted {n} ban(s) of {user.name}"
    return _run(args, settings, act)


def cmd_ban_ip(args: argparse.Namespace, settings: Settings) -> int:
    def act(users: Any, ledger: Any, moderation: Any) -> str:
        ban = moderation.ban("ip", args.range, args.reason, _actor(), seconds=_seconds(args.hours))
        return f"banned {ban.target}"
    return _run(args, settings, act)


def cmd_unban_ip(args: argparse.Namespace, settings: Settings) -> int:
    def act(users: Any, ledger: Any, moderation: Any) -> str:
        return f"lifted {moderation.lift('ip', args.range, _actor())} ban(s) of {args.range}"
    return _run(args, settings, act)


def cmd_pardon(args: argparse.Namespace, settings: Settings) -> int:
    def act(users: Any, ledger: Any, moderation: Any) -> str:
        found = moderation.pardon(args.address, _actor())
        if not found and (user := users.by_name(args.address)) is not None:  # a registered offender
            found = moderation.pardon_user(user.id, user.name, _actor())
        return f"pardoned {args.address}" if found else f"no offences recorded for {args.address}"
    return _run(args, settings, act)


def cmd_audit(args: argparse.Namespace, settings: Settings) -> int:
    def act(users: Any, ledger: Any, moderation: Any) -> str:
        lines = []
        for e in moderation.audit_log(args.limit):
            when = datetime.datetime.fromtimestamp(e.created_at).isoformat(timespec="seconds")
            lines.append(f"{when}  {e.actor:<16} {e.action:<12} {e.target:<20} {e.detail}")
        return "\n".join(lines) or "no admin actions yet"
    return _run(args, settings, act)
