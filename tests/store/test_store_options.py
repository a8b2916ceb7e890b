"""Callers' A1111 options in the database, on both backends: merged per (user, scope), and
anonymous visitors' rows bounded, the least recently set going first."""

from __future__ import annotations

from kakumei.store import options as options_module
from kakumei.store.options import OptionStore


def test_options_merge_per_user_and_scope(stores) -> None:
    store = OptionStore(stores.db, clock=stores.clock)
    alice, _ = stores.users.add("alice")
    assert store.get(alice.id, "") == {}
    assert store.update(alice.id, "", {"CLIP_stop_at_last_layers": 2}) == {"CLIP_stop_at_last_layers": 2}
    assert store.update(alice.id, "", {"samples_format": "png"}) == {"CLIP_stop_at_last_layers": 2, "samples_format": "png"}
    anon = stores.users.anonymous()
    store.update(anon.id, "10.0.0.1", {"CLIP_stop_at_last_layers": 3}, bounded=True)
    assert store.get(anon.id, "10.0.0.2") == {}
    assert store.get(anon.id, "10.0.0.1") == {"CLIP_stop_at_last_layers": 3}
    assert OptionStore(stores.db).get(alice.id, "")["CLIP_stop_at_last_layers"] == 2


def test_anonymous_rows_are_bounded_oldest_first(stores, monkeypatch) -> None:
    monkeypatch.setattr(options_module, "MAX_ANONYMOUS_ROWS", 3)
    store = OptionStore(stores.db, clock=stores.clock)
    anon = stores.users.anonymous()
    for i in range(5):
        stores.clock.advance(1)
        store.update(anon.id, f"10.0.0.{i}", {"CLIP_stop_at_last_layers": 2}, bounded=True)
        if i == 2:
            stores.clock.advance(1)
            store.update(anon.id, "10.0.0.0", {"samples_format": "png"}, bounded=True)  # set again: newest
    kept = [f"10.0.0.{i}" for i in range(5) if store.get(anon.id, f"10.0.0.{i}")]
    assert kept == ["10.0.0.0", "10.0.0.3", "10.0.0.4"]
