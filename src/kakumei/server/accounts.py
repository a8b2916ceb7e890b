"""Accounts as the API shows them and changes them: a caller's figures (/api/v1/me), the
terms they accept, and the admin's view of users, credit, weights and bans.

Each function decides and reads the stores; the routes in routes/me.py and routes/admin.py
only parse and render. A request turned down raises Refused with the status that says why.
"""

from __future__ import annotations

from kakumei.fairness.credits import current_share, weight_source
from kakumei.fairness.groups import is_network_group
from kakumei.server.admission import terms_version
from kakumei.server.deps import Caller
from kakumei.server.errors import Refused
from kakumei.server.models import FreeCapsOut, Group, Limits, Me, Standing, Terms, UserOut
from kakumei.server.services import Services
from kakumei.store.moderation import USER, Ban, parse_network
from kakumei.store.quotas import group_shares, totals
from kakumei.store.users import User


def _weight_source(user: User) -> str:
    return weight_source(is_anonymous=user.is_anonymous, override=user.weight_override)


# -- the caller -------------------------------------------------------------------------------


def me_out(svc: Services, who: Caller) -> Me:
    """The caller's balance, weight (and why), counter, current share, limits and terms."""
    user = svc.users.get(who.user.id) or who.user
    admission = svc.admission
    counts = admission.queue_state(user, who.client_addr)
    group_weight, other_groups, person_weight, others = group_shares(svc.db, user.id, counts.group_id)
    free = admission.free(user)
    caps = None if admission.exempt(user) else admission.caps_now(counts.total)
    refusal = admission.standing(user, who.client_addr)
    version = terms_version(svc.settings)
    addr = who.scope_addr
    earned, spent = totals(svc.db, user.id)
    return Me(
        name=user.name,
        kind=user.kind,
        anonymous=user.is_anonymous,
        admin=user.is_admin,
        balance=None if user.is_anonymous else user.balance,
        earned=None if user.is_anonymous else earned,
        spent=None if user.is_anonymous else spent,
        weight=user.weight,
        weight_source=_weight_source(user),
        virtual_counter=user.virtual_counter,
        # the group's share of the machine, times the person's share of the group
        share=current_share(group_weight, other_groups) * current_share(person_weight, others),
        free_tier=free,
        limits=Limits(
            max_queued_jobs=svc.settings.max_queued_jobs,
            queued_jobs=counts.own,
            queue_length=counts.total,
            free_caps=None if caps is None else FreeCapsOut(
                max_pixels=caps.max_pixels, max_steps=caps.max_steps, max_images=caps.max_images),
        ),
        standing=Standing(allowed=refusal is None, reason=refusal.message if refusal else None,
                          retry_after=refusal.retry_after if refusal else None),
        terms=Terms(
            required=version is not None,
            accepted=version is None or svc.moderation.accepted_terms(who.scope_id, addr, version),
            version=version,
            text=svc.settings.terms,
            url=svc.settings.terms_url,
        ),
        group=group_out(svc, who, user, len(others)),
    )


def group_out(svc: Services, who: Caller, user: User, others: int) -> Group:
    """Whom the caller shares with: their network's people without merit, or nobody."""
    key = svc.admission.group_key(user, who.client_addr)
    if is_network_group(key):
        network = key.split(":", 1)[1]
        if others:
            people = "person" if others == 1 else "people"
            sentence = f"You share this server's free time with {others} other {people} on your network {network}."
        else:
            sentence = (f"You share this server's free time with the other people on your network {network}; "
                        "none of them has jobs queued now.")
        return Group(kind="network", network=network, others=others, sentence=sentence)
    if not svc.settings.network_groups:
        sentence = "Everyone on this server has a share of their own, and so do you."
    elif user.is_admin or user.weight_override is not None:
        sentence = ("Your standing on this server (an admin's choice) gives you a share of your own: "
                    "you do not share it with others on your network.")
    elif user.balance > 0:
        sentence = ("Your workers' credit gives you a share of your own: "
                    "you do not share it with others on your network.")
    else:
        sentence = "Your address names no network, so your share is your own."
    return Group(kind="own", network=None, others=0, sentence=sentence)


def accept_terms(svc: Services, who: Caller, accepted: bool, version: str) -> Me:
    """Record the caller's acceptance of the current terms (once; anonymous visitors accept
    per address)."""
    current = terms_version(svc.settings)
    if current is None:
        raise Refused(400, "this server asks no terms; there is nothing to accept")
    if not accepted:
        raise Refused(400, "send {\"accepted\": true} to accept the terms; without them you cannot submit jobs")
    if version != current:
        raise Refused(409, f"the terms changed (now version {current}); read them again at GET /api/v1/me")
    svc.moderation.accept_terms(who.scope_id, who.scope_addr, current)
    return me_out(svc, who)


# -- the admin's view and changes (every change is audited with the admin's name) ---------------


def user_named(svc: Services, name: str) -> User:
    user = svc.users.by_name(name)
    if user is None:
        raise Refused(404, f"no user named {name!r}")
    return user


def user_out(svc: Services, user: User) -> UserOut:
    ban = None if user.is_anonymous else svc.moderation.user_ban(user.id)
    return UserOut(
        id=user.id, name=user.name, anonymous=user.is_anonymous, admin=user.is_admin, balance=user.balance,
        weight=user.weight, weight_source=_weight_source(user),
        virtual_counter=user.virtual_counter, queued_jobs=user.queued_jobs, banned=ban.reason if ban else None,
    )


def all_users(svc: Services) -> list[UserOut]:
    return [user_out(svc, u) for u in svc.users.list()]


def grant(svc: Services, admin: User, name: str, amount: float, note: str) -> UserOut:
    """Give credit (a negative amount takes it back); the user as they are afterwards."""
    user = user_named(svc, name)
    if user.is_anonymous:
        raise Refused(400, "keyless callers have no account to hold credit; grant it to a registered user")
    svc.moderation.grant(svc.ledger, user.id, user.name, amount, note, admin.name)
    return user_out(svc, user_named(svc, name))


def set_weight(svc: Services, admin: User, name: str, weight: float | None) -> UserOut:
    """Set a weight, or (None) let merit decide again; the user as they are afterwards."""
    user = user_named(svc, name)
    svc.moderation.set_weight(svc.ledger, user.id, user.name, weight, admin.name)
    return user_out(svc, user_named(svc, name))


def ban_target(svc: Services, kind: str, target: str) -> str:
    """What a ban names: a user's id (given their name), or an address range in CIDR form."""
    if kind == USER:
        return str(user_named(svc, target).id)
    try:
        return str(parse_network(target))
    except ValueError as exc:
        raise Refused(400, str(exc)) from None


def ban(svc: Services, admin: User, kind: str, target: str, reason: str, hours: float | None) -> Ban:
    """Ban a user by name, or an address or range; `hours` None: until lifted."""
    named = ban_target(svc, kind, target)
    if kind == USER and named == str(admin.id):
        raise Refused(400, "you cannot ban yourself")
    seconds = None if hours is None else hours * 3600
    return svc.moderation.ban(kind, named, reason, admin.name, seconds=seconds)


def lift_bans(svc: Services, admin: User, kind: str, target: str) -> int:
    """Lift the active bans of a user (by name) or an address range; how many."""
    lifted = svc.moderation.lift(kind, ban_target(svc, kind, target), admin.name)
    if not lifted:
        raise Refused(404, f"no active ban of {kind} {target!r}")
    return lifted


def pardon(svc: Services, admin: User, addr: str) -> None:
    """Forget the offences of an address (keyless callers) or of a user by name, ending the
    timeout."""
    if svc.moderation.pardon(addr, admin.name):
        return
    user = svc.users.by_name(addr)
    if user is None or not svc.moderation.pardon_user(user.id, user.name, admin.name):
        raise Refused(404, f"no offences recorded for {addr!r}")
