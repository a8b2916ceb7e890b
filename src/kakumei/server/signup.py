"""Sign-up, sign-in, guests and a user's API keys: the decisions behind /api/v1/accounts,
/api/v1/sessions, /api/v1/guests and /api/v1/me/keys (routes/accounts.py parses and renders).

Call these from a worker thread (the routes are sync functions): passwords are hashed here.
Limits count per network group (fairness/groups.py), in the database, so every server
sharing it counts the same. A request turned down raises Refused with a sentence.
"""

from __future__ import annotations

import datetime
import math
import re

from kakumei.fairness.groups import network_of
from kakumei.server.admission import group_policy
from kakumei.server.deps import Caller
from kakumei.server.errors import Refused
from kakumei.server.models import KeyOut, NewAccount, NewKey, SessionKey
from kakumei.server.passwords import weakness
from kakumei.server.services import Services
from kakumei.store.accounts import (
    API_KEY,
    HORDE_KEY,
    ACCOUNT,
    FAILED_SIGN_IN,
    GUEST,
    GUEST_PREFIX,
    InviteRefused,
    LastKey,
    NameTaken,
    NotAGuest,
    TooMany,
    TooManyKeys,
)
from kakumei.store.users import ANONYMOUS

NAME = re.compile(r"[A-Za-z0-9._-]{3,32}")
NAME_RULE = (
    "a name is 3 to 32 characters: letters (a-z, A-Z), digits, '-', '_' and '.'; "
    f"not {ANONYMOUS!r} and not starting with {GUEST_PREFIX!r}"
)
SIGN_IN_FAILED = "wrong name or password"
SIGNUP_OFF = "this server does not take sign-ups; ask its operator for an account"

_INVITE_PROBLEMS = {
    "missing": "sign-ups on this server need an invite code: send it as \"invite\"; members get them from the operator",
    "unknown": "this invite code is not one of this server's; check it for typos",
    "used": "this invite code has been used up; ask for a new one",
}


def _wait(seconds: float) -> str:
    if seconds < 90:
        return f"{max(1, math.ceil(seconds))} seconds"
    return f"{math.ceil(seconds / 60)} minutes"


def _too_many(what: str, refused: TooMany) -> Refused:
    return Refused(
        429,
        f"too many {what} from your network (at most {refused.limit} an hour); try again in {_wait(refused.retry_after)}",
        {"Retry-After": str(math.ceil(refused.retry_after))},
    )


def _network(svc: Services, addr: str | None) -> str:
    """The network group the limits count `addr` in (an address that is none: on its own)."""
    return network_of(addr, group_policy(svc.settings)) or addr or "unknown"


def _not_banned(svc: Services, addr: str | None) -> None:
    ban = svc.moderation.ip_ban(addr)
    if ban is not None:
        raise Refused(403, f"your address is banned from this server: {ban.reason}")


def check_name(name: str) -> None:
    folded = name.casefold()
    if not NAME.fullmatch(name) or folded == ANONYMOUS or folded.startswith(GUEST_PREFIX):
        raise Refused(422, f"{name!r} cannot be a name here: {NAME_RULE}")


def sign_up(svc: Services, who: Caller, name: str, password: str, invite: str | None) -> NewAccount:
    """A new account, or the calling guest turned into one in place (same user: its jobs,
    images and settings stay), with a fresh key."""
    settings = svc.settings
    # 1. Is there sign-up, and who is asking.
    if settings.signup == "off":
        raise Refused(403, SIGNUP_OFF)
    guest_id = None
    if not who.user.is_anonymous:
        if svc.accounts.kind_of(who.user.id) != GUEST:
            raise Refused(
                409, f"you are signed in as {who.user.name!r} already; to make another account, sign up without a key"
            )
        guest_id = who.user.id
    # 2. The name and the password, before anything costs.
    check_name(name)
    problem = weakness(password, name, settings.min_password_length)
    if problem is not None:
        raise Refused(422, problem)
    _not_banned(svc, who.client_addr)
    network = _network(svc, who.client_addr)
    # 3. A flood stops here, before a hash is spent on it; the store counts again.
    try:
        svc.accounts.check_limit(ACCOUNT, network, settings.signups_per_network_per_hour)
        password_hash = svc.passwords.hash(password)
        user, key = svc.accounts.sign_up(
            name, password_hash, network,
            per_hour=settings.signups_per_network_per_hour, max_keys=settings.max_keys_per_user,
            invite=invite, need_invite=settings.signup == "invite", guest_id=guest_id,
        )
    except TooMany as refused:
        raise _too_many("sign-ups", refused) from None
    except NameTaken:
        raise Refused(409, f"the name {name!r} is taken (names are told apart without case); choose another") from None
    except InviteRefused as refused:
        if refused.problem == "expired" and refused.expires_at is not None:
            when = datetime.datetime.fromtimestamp(refused.expires_at, datetime.timezone.utc)
            raise Refused(403, f"this invite code expired at {when:%Y-%m-%d %H:%M} UTC; ask for a new one") from None
        raise Refused(403, _INVITE_PROBLEMS.get(refused.problem, "this invite code cannot be used")) from None
    except NotAGuest:
        raise Refused(409, "this key is no longer a guest's; it has an account already") from None
    except TooManyKeys as refused:
        raise Refused(409, f"{refused}; revoke one with DELETE /api/v1/me/keys/ID") from None
    return NewAccount(name=user.name, key=key)


def sign_in(svc: Services, addr: str | None, name: str, password: str) -> SessionKey:
    """A new key for the account `name` if `password` is its password. A wrong name and a
    wrong password get the same answer, after the same work."""
    settings = svc.settings
    network = _network(svc, addr)
    try:
        svc.accounts.check_limit(FAILED_SIGN_IN, network, settings.failed_sign_ins_per_network_per_hour)
    except TooMany as refused:
        raise _too_many("wrong passwords", refused) from None
    found = svc.accounts.credentials(name)
    if not svc.passwords.verify(found[1] if found else None, password) or found is None:
        svc.accounts.failed_sign_in(network)
        raise Refused(401, SIGN_IN_FAILED)
    try:
        key = svc.accounts.sign_in(found[0], max_keys=settings.max_keys_per_user)
    except TooManyKeys as refused:
        raise Refused(409, f"{refused}; revoke one (DELETE /api/v1/me/keys/ID) with a key you hold") from None
    return SessionKey(key=key)


def add_guest(svc: Services, addr: str | None) -> NewAccount:
    """A guest: a user of its own with a key, so that its jobs and images are its own even
    behind an address it shares."""
    settings = svc.settings
    if not settings.allow_anonymous:
        hint = " or sign up" if settings.signup != "off" else ""
        raise Refused(403, f"this server takes no guests; use an account's API key{hint}")
    _not_banned(svc, addr)
    try:
        user, key = svc.accounts.add_guest(_network(svc, addr), per_hour=settings.guests_per_network_per_hour)
    except TooMany as refused:
        raise _too_many("guest sessions", refused) from None
    return NewAccount(name=user.name, key=key)


# -- the caller's keys --------------------------------------------------------------------------


def _holder(who: Caller) -> Caller:
    if who.user.is_anonymous:
        raise Refused(
            401, "API keys belong to a user: send 'Authorization: Bearer YOUR_KEY' (sign in or start a guest session for one)",
            {"WWW-Authenticate": "Bearer"},
        )
    return who


def list_keys(svc: Services, who: Caller) -> list[KeyOut]:
    keys = svc.accounts.keys(_holder(who).user.id)
    return [
        KeyOut(id=k.id, label=k.label, created_at=k.created_at, last_used_at=k.last_used_at, current=k.key_hash == who.key_hash,
               horde=k.kind == HORDE_KEY)
        for k in keys
    ]


def add_key(svc: Services, who: Caller, label: str, *, horde: bool = False) -> NewKey:
    try:
        made, key = svc.accounts.add_key(
            _holder(who).user.id, label, max_keys=svc.settings.max_keys_per_user, kind=HORDE_KEY if horde else API_KEY
        )
    except TooManyKeys as refused:
        raise Refused(409, f"{refused}; revoke one first (DELETE /api/v1/me/keys/ID)") from None
    return NewKey(id=made.id, label=made.label, key=key, horde=horde)


def revoke_key(svc: Services, who: Caller, key_id: int) -> None:
    try:
        revoked = svc.accounts.revoke_key(_holder(who).user.id, key_id)
    except LastKey as refused:
        raise Refused(409, f"{refused}; make another key first (POST /api/v1/me/keys)") from None
    if not revoked:
        raise Refused(404, f"no key {key_id} of yours")
