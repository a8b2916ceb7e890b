"""Accounts in the store, on both databases: keys (many per user, revocation effective at
once), sign-up all or nothing, invites, guests turning into accounts, the hourly counts."""

from __future__ import annotations

import threading

import pytest

from kakumei.store.accounts import (
    ACCOUNT,
    FAILED_SIGN_IN,
    GUEST,
    AccountStore,
    InviteRefused,
    KeyUse,
    LastKey,
    NameTaken,
    NotAGuest,
    TooMany,
    TooManyKeys,
)
from tests.fixtures.db import FakeClock, Stores

HASH = "$argon2id$stored-by-the-server"


@pytest.fixture
def accounts(stores: Stores) -> AccountStore:
    return AccountStore(stores.db, clock=stores.clock)


def _sign_up(accounts: AccountStore, name: str, network: str = "198.51.100.0/24", **kw):
    return accounts.sign_up(name, HASH, network, per_hour=kw.pop("per_hour", 5), max_keys=kw.pop("max_keys", 20), **kw)


def _count(stores: Stores, sql: str, params: tuple = ()) -> int:
    with stores.db.transaction(write=False) as tx:
        return int(tx.scalar(sql, params))


def test_operator_users_keep_one_key_in_api_keys(stores: Stores, accounts: AccountStore) -> None:
    user, key = stores.users.add("alice")
    assert stores.users.by_key(key) == user
    (only,) = accounts.keys(user.id)
    assert only.label == "kakumei users add" and accounts.kind_of(user.id) == "operator"
    # Without a password, the last key is the only way in: it stays.
    with pytest.raises(LastKey):
        accounts.revoke_key(user.id, only.id)
    assert stores.users.by_key(key) == user
    _, spare = accounts.add_key(user.id, "spare", max_keys=5)
    assert accounts.revoke_key(user.id, only.id)
    assert stores.users.by_key(key) is None and stores.users.by_key(spare) == user
    assert not accounts.revoke_key(user.id, only.id)
    # A guest may end its session; an account can sign in again.
    guest, guest_key = accounts.add_guest("198.51.100.0/24", per_hour=5)
    assert accounts.revoke_key(guest.id, accounts.keys(guest.id)[0].id) and stores.users.by_key(guest_key) is None
    account, account_key = _sign_up(accounts, "lone")
    assert accounts.revoke_key(account.id, accounts.keys(account.id)[0].id) and stores.users.by_key(account_key) is None


def test_keys_are_minted_listed_and_revoked_each_on_its_own(stores: Stores, accounts: AccountStore) -> None:
    user, first = stores.users.add("alice")
    other, _ = stores.users.add("bob")
    made, second = accounts.add_key(user.id, "laptop", max_keys=3)
    assert stores.users.by_key(second) == user and second != first
    assert [k.label for k in accounts.keys(user.id)] == ["kakumei users add", "laptop"]
    assert not accounts.revoke_key(other.id, made.id), "a key is revoked only by its owner"
    assert accounts.revoke_key(user.id, made.id)
    assert stores.users.by_key(second) is None and stores.users.by_key(first) == user
    accounts.add_key(user.id, "a", max_keys=3)
    accounts.add_key(user.id, "b", max_keys=3)
    with pytest.raises(TooManyKeys):
        accounts.add_key(user.id, "c", max_keys=3)
    # Nothing half-made: the refused key is not there.
    assert len(accounts.keys(user.id)) == 3 == _count(stores, "SELECT COUNT(*) FROM api_keys WHERE user_id = ?", (user.id,)) - 1


def test_sign_up_makes_an_account_with_a_key_and_a_password(stores: Stores, accounts: AccountStore) -> None:
    user, key = _sign_up(accounts, "Carol")
    assert stores.users.by_key(key) == user and user.name == "Carol" and not user.is_anonymous
    assert accounts.kind_of(user.id) == ACCOUNT
    assert accounts.credentials("carol") == (user.id, HASH) == accounts.credentials("CAROL")
    assert accounts.credentials("nobody") is None
    with pytest.raises(NameTaken):
        _sign_up(accounts, "carol")
    stores.users.add("dave")
    with pytest.raises(NameTaken):
        _sign_up(accounts, "DAVE")
    assert accounts.credentials("dave") is None, "an operator's user has no password"


def test_sign_ups_per_network_per_hour(stores: Stores, accounts: AccountStore) -> None:
    clock: FakeClock = stores.clock
    for i in range(3):
        _sign_up(accounts, f"user{i}", per_hour=3)
        clock.advance(60)
    with pytest.raises(TooMany) as refused:
        _sign_up(accounts, "user3", per_hour=3)
    assert refused.value.retry_after == 3600 - 180
    _sign_up(accounts, "other-net", network="203.0.113.0/24", per_hour=3)
    assert stores.users.by_name("user3") is None
    clock.advance(3600 - 180 + 1)
    _sign_up(accounts, "user3", per_hour=3)


def test_invites_are_spent_once_and_expire(stores: Stores, accounts: AccountStore) -> None:
    invite, code = accounts.add_invite(uses=2, hours=1, created_by="cli:op")
    assert code.startswith("kki_") and accounts.invite(code) == invite
    with stores.db.transaction(write=False) as tx:
        assert code not in str(tx.all("SELECT * FROM invites"))

    for problem, given in (("missing", None), ("missing", ""), ("unknown", code + "x")):
        with pytest.raises(InviteRefused) as refused:
            _sign_up(accounts, "erin", invite=given, need_invite=True)
        assert refused.value.problem == problem
    _sign_up(accounts, "erin", invite=code, need_invite=True)
    _sign_up(accounts, "frank", invite=code, need_invite=True)
    with pytest.raises(InviteRefused) as refused:
        _sign_up(accounts, "gina", invite=code, need_invite=True)
    assert refused.value.problem == "used"

    _, later = accounts.add_invite(uses=5, hours=1, created_by="cli:op")
    stores.clock.advance(3601)
    with pytest.raises(InviteRefused) as refused:
        _sign_up(accounts, "gina", invite=later, need_invite=True)
    assert refused.value.problem == "expired" and refused.value.expires_at is not None
    assert accounts.invite(later).uses_left == 5
    _, forever = accounts.add_invite(uses=1, hours=None, created_by="cli:op")
    stores.clock.advance(10 * 365 * 86400)
    _sign_up(accounts, "gina", invite=forever, need_invite=True)
    with pytest.raises(ValueError):
        accounts.add_invite(uses=0, hours=1, created_by="cli:op")


def test_a_refused_sign_up_leaves_nothing_behind(stores: Stores, accounts: AccountStore) -> None:
    _, code = accounts.add_invite(uses=1, hours=None, created_by="cli:op")
    _sign_up(accounts, "taken")
    users_before = _count(stores, "SELECT COUNT(*) FROM users")
    keys_before = _count(stores, "SELECT COUNT(*) FROM api_keys")
    events_before = _count(stores, "SELECT COUNT(*) FROM account_events")
    with pytest.raises(NameTaken):
        _sign_up(accounts, "TAKEN", invite=code, need_invite=True)
    assert accounts.invite(code).uses_left == 1, "the invite was not used"
    assert _count(stores, "SELECT COUNT(*) FROM users") == users_before
    assert _count(stores, "SELECT COUNT(*) FROM api_keys") == keys_before
    assert _count(stores, "SELECT COUNT(*) FROM account_events") == events_before
    _sign_up(accounts, "fresh", invite=code, need_invite=True)
    assert accounts.invite(code).uses_left == 0


def test_guests_are_users_of_their_own_and_turn_into_accounts_in_place(stores: Stores, accounts: AccountStore) -> None:
    one, one_key = accounts.add_guest("198.51.100.0/24", per_hour=30)
    two, two_key = accounts.add_guest("198.51.100.0/24", per_hour=30)
    assert one.id != two.id and one.name != two.name and one.name.startswith("guest-")
    assert not one.is_anonymous and accounts.kind_of(one.id) == GUEST
    assert stores.users.by_key(one_key) == one and stores.users.by_key(two_key) == two
    assert accounts.credentials(one.name) is None

    user, key = _sign_up(accounts, "harriet", guest_id=one.id)
    assert user.id == one.id and user.name == "harriet" and accounts.kind_of(one.id) == ACCOUNT
    assert stores.users.by_key(key) == user == stores.users.by_key(one_key), "the guest key keeps working"
    with pytest.raises(NotAGuest):
        _sign_up(accounts, "again", guest_id=one.id)
    assert stores.users.by_name("again") is None


def test_guests_per_network_per_hour(stores: Stores, accounts: AccountStore) -> None:
    accounts.add_guest("198.51.100.0/24", per_hour=2)
    accounts.add_guest("198.51.100.0/24", per_hour=2)
    with pytest.raises(TooMany):
        accounts.add_guest("198.51.100.0/24", per_hour=2)
    accounts.add_guest("2001:db8::/56", per_hour=2)


def test_sign_in_keys_make_room_for_themselves(stores: Stores, accounts: AccountStore) -> None:
    user, first = _sign_up(accounts, "ivan", max_keys=3)
    keys = [accounts.sign_in(user.id, max_keys=3) for _ in range(2)]
    assert len(accounts.keys(user.id)) == 3
    newest = accounts.sign_in(user.id, max_keys=3)
    assert stores.users.by_key(keys[0]) is None, "the oldest sign-in key gave way"
    assert stores.users.by_key(first) == stores.users.by_key(newest) == user
    accounts.revoke_key(user.id, accounts.keys(user.id)[-1].id)
    accounts.add_key(user.id, "x", max_keys=3)
    for k in accounts.keys(user.id):
        if k.label == "sign-in":
            accounts.revoke_key(user.id, k.id)
    accounts.add_key(user.id, "y", max_keys=3)
    with pytest.raises(TooManyKeys):
        accounts.sign_in(user.id, max_keys=3)


def test_failed_sign_ins_are_counted_per_network(stores: Stores, accounts: AccountStore) -> None:
    for _ in range(3):
        accounts.check_limit(FAILED_SIGN_IN, "198.51.100.0/24", 3)
        accounts.failed_sign_in("198.51.100.0/24")
    with pytest.raises(TooMany):
        accounts.check_limit(FAILED_SIGN_IN, "198.51.100.0/24", 3)
    accounts.check_limit(FAILED_SIGN_IN, "203.0.113.0/24", 3)
    stores.clock.advance(3601)
    accounts.check_limit(FAILED_SIGN_IN, "198.51.100.0/24", 3)
    accounts.failed_sign_in("198.51.100.0/24")
    assert _count(stores, "SELECT COUNT(*) FROM account_events") == 1, "rows past the hour are deleted"


def test_last_use_of_keys_is_recorded(stores: Stores, accounts: AccountStore) -> None:
    user, key = stores.users.add("judy")
    (k,) = accounts.keys(user.id)
    assert k.last_used_at is None
    accounts.touch_keys({k.key_hash: 500.0})
    accounts.touch_keys({k.key_hash: 400.0})
    assert accounts.keys(user.id)[0].last_used_at == 500.0


def test_key_use_is_written_once_a_minute_at_most(stores: Stores, accounts: AccountStore) -> None:
    user, _ = stores.users.add("kim")
    (k,) = accounts.keys(user.id)
    use = KeyUse(accounts, every=60)
    use.note(k.key_hash)
    assert accounts.keys(user.id)[0].last_used_at is None, "not written on every call"
    stores.clock.advance(61)
    use.note(k.key_hash)
    assert accounts.keys(user.id)[0].last_used_at == stores.clock.now
    small = KeyUse(accounts, every=60, most=1)
    small.note("a" * 64)
    small.note(k.key_hash)
    assert small._pending == {"a" * 64: stores.clock.now}, "what is kept in memory is bounded"


def test_sign_ups_at_once_make_one_account_per_name_and_keep_the_limit(stores: Stores, database_url: str) -> None:
    """Threads with their own connections, as servers sharing a database: of the same name
    in any case one account is made, and a network's limit holds however many arrive at once."""
    accounts = AccountStore(stores.db, clock=stores.clock)
    results: list[str] = []
    lock = threading.Lock()

    def attempt(name: str, network: str) -> None:
        try:
            accounts.sign_up(name, HASH, network, per_hour=3, max_keys=20)
            outcome = "made"
        except NameTaken:
            outcome = "taken"
        except TooMany:
            outcome = "too many"
        with lock:
            results.append(outcome)

    threads = [threading.Thread(target=attempt, args=(name, f"198.51.{i}.0/24"))
               for i, name in enumerate(["zed", "Zed", "ZED", "zeD", "zEd", "ZeD"])]
    threads += [threading.Thread(target=attempt, args=(f"net{i}", "203.0.113.0/24")) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(results).count("made") == 1 + 3, results
    assert results.count("taken") == 5 and results.count("too many") == 5
    assert _count(stores, "SELECT COUNT(*) FROM users WHERE LOWER(name) = 'zed'") == 1
