"""The KV store's rules as Consul's state store has them: indexes, check-and-set, tombstones, key listings."""

from __future__ import annotations

import json

from meshlet.devagent.api.common import QueryOptions
from meshlet.devagent.api.kv import until_key_changes
from meshlet.devagent.kv import DirEntry, KVStore
from meshlet.devagent.raft import RaftIndex


class Writes:
    """Counts the announcements of the Raft index, i.e. how often blocking queries would be woken."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> None:
        self.count += 1


def make_store() -> tuple[KVStore, RaftIndex, Writes]:
    writes = Writes()
    index = RaftIndex(on_advance=writes)
    return KVStore(index), index, writes


def entry_of(store: KVStore, key: str) -> DirEntry:
    entry = store.get(key)
    assert entry is not None, f"{key} should exist"
    return entry


def test_new_key_is_created_and_modified_at_the_write_index() -> None:
    store, index, _ = make_store()
    assert store.set("a", b"1", flags=7)
    entry = store.get("a")
    assert entry == DirEntry(key="a", value=b"1", flags=7, create_index=index.value, modify_index=index.value)


def test_update_keeps_create_index_and_moves_modify_index() -> None:
    store, _, _ = make_store()
    store.set("a", b"1")
    created = entry_of(store, "a")
    store.set("a", b"2")
    updated = entry_of(store, "a")
    assert updated.create_index == created.create_index
    assert updated.modify_index > created.modify_index


def test_identical_rewrite_changes_nothing_and_wakes_nobody() -> None:
    store, index, writes = make_store()
    store.set("a", b"1", flags=3)
    before, woken = index.value, writes.count
    assert store.set("a", b"1", flags=3)
    assert index.value == before
    assert writes.count == woken
    assert entry_of(store, "a").modify_index == before


def test_changing_only_the_flags_is_a_write() -> None:
    store, _, _ = make_store()
    store.set("a", b"1", flags=0)
    first = entry_of(store, "a")
    store.set("a", b"1", flags=1)
    assert entry_of(store, "a").modify_index > first.modify_index


def test_empty_value_is_stored_as_null() -> None:
    store, _, _ = make_store()
    store.set("dir/", b"")
    entry = entry_of(store, "dir/")
    assert entry.value is None
    assert entry.to_json()["Value"] is None


def test_entry_renders_with_consuls_field_names_order_and_base64_value() -> None:
    entry = DirEntry(key="k", value=b"bar", flags=2, create_index=5, modify_index=6)
    assert list(entry.to_json().items()) == [
        ("LockIndex", 0),
        ("Key", "k"),
        ("Flags", 2),
        ("Value", "YmFy"),
        ("CreateIndex", 5),
        ("ModifyIndex", 6),
    ]


def test_cas_zero_sets_only_a_missing_key() -> None:
    store, _, _ = make_store()
    assert store.check_and_set("a", b"1", 0, modify_index=0)
    assert not store.check_and_set("a", b"2", 0, modify_index=0)
    assert entry_of(store, "a").value == b"1"


def test_cas_sets_only_at_the_current_modify_index() -> None:
    store, _, _ = make_store()
    store.set("a", b"1")
    entry = entry_of(store, "a")
    assert not store.check_and_set("a", b"2", 0, modify_index=entry.modify_index + 1)
    assert store.check_and_set("a", b"2", 0, modify_index=entry.modify_index)
    assert not store.check_and_set("missing", b"x", 0, modify_index=entry.modify_index)
    assert store.get("missing") is None


def test_deleting_a_missing_key_succeeds_without_a_write() -> None:
    store, index, _ = make_store()
    before = index.value
    assert store.delete("nothing")
    assert index.value == before


def test_cas_delete_needs_the_current_modify_index_and_counts_a_missing_key_as_deleted() -> None:
    store, _, _ = make_store()
    store.set("a", b"1")
    entry = entry_of(store, "a")
    assert not store.check_and_delete("a", 0)
    assert not store.check_and_delete("a", entry.modify_index + 1)
    assert store.check_and_delete("a", entry.modify_index)
    assert store.get("a") is None
    assert store.check_and_delete("a", 12345)


def test_delete_tree_removes_only_the_prefix_in_one_write() -> None:
    store, index, writes = make_store()
    for key in ("app/a", "app/b/c", "apple", "other"):
        store.set(key, b"v")
    before, woken = index.value, writes.count
    assert store.delete_tree("app/")
    assert index.value == before + 1
    assert writes.count == woken + 1
    assert [entry.key for entry in store.entries("")] == ["apple", "other"]


def test_delete_tree_of_the_empty_prefix_removes_everything() -> None:
    store, _, _ = make_store()
    store.set("a", b"1")
    store.set("b/c", b"2")
    store.delete_tree("")
    assert store.entries("") == []


def test_entries_are_listed_in_key_order() -> None:
    store, _, _ = make_store()
    for key in ("b", "a/2", "a/1", "a.b", "c"):
        store.set(key, b"v")
    assert [entry.key for entry in store.entries("a")] == ["a.b", "a/1", "a/2"]


def test_keys_roll_up_at_the_separator_after_the_prefix() -> None:
    store, _, _ = make_store()
    for key in ("base/base/a", "base/base/b", "base/foo", "other/x"):
        store.set(key, b"v")
    assert store.keys("base/", "/") == ["base/base/", "base/foo"]
    assert store.keys("base/") == ["base/base/a", "base/base/b", "base/foo"]
    assert store.keys("", "/") == ["base/", "other/"]


def test_single_key_reads_at_its_modify_index_and_a_missing_key_at_the_last_kv_write() -> None:
    store, _, _ = make_store()
    store.set("a", b"1")
    first = store.key_index("a")
    store.set("b", b"2")
    assert store.key_index("a") == first
    assert store.key_index("missing") == store.table_index() > first


def test_deleting_under_a_prefix_moves_its_index() -> None:
    """A tombstone keeps the prefix index moving forward, so a watcher of the prefix sees the delete."""
    store, index, _ = make_store()
    store.set("svc/a", b"1")
    store.set("svc/b", b"2")
    before = store.prefix_index("svc/")
    store.delete("svc/b")
    assert store.prefix_index("svc/") == index.value > before


def test_prefix_index_ignores_writes_elsewhere() -> None:
    store, _, _ = make_store()
    store.set("svc/a", b"1")
    watched = store.prefix_index("svc/")
    store.set("elsewhere", b"x")
    store.delete("elsewhere")
    assert store.prefix_index("svc/") == watched


def test_empty_prefix_reads_at_the_last_kv_write() -> None:
    store, _, _ = make_store()
    store.set("a", b"1")
    store.delete("a")
    assert store.prefix_index("") == store.table_index()
    assert store.prefix_index("never/") == store.table_index()


def test_missing_key_watch_is_not_woken_by_other_keys_but_is_by_the_key_appearing() -> None:
    store, _, _ = make_store()
    store.set("other", b"1")
    options = QueryOptions(index=store.key_index("watched"), wait_s=10, filter="", datacenter="dc1")
    index_of = until_key_changes(store, "watched", options)
    assert index_of() <= options.index
    store.set("other", b"2")
    assert index_of() <= options.index
    store.set("watched", b"now")
    assert index_of() > options.index


def test_deleting_a_watched_key_wakes_its_watch() -> None:
    store, _, _ = make_store()
    store.set("watched", b"1")
    options = QueryOptions(index=store.key_index("watched"), wait_s=10, filter="", datacenter="dc1")
    index_of = until_key_changes(store, "watched", options)
    assert index_of() <= options.index
    store.delete("watched")
    assert index_of() > options.index


def test_snapshot_round_trips_through_json() -> None:
    store, index, _ = make_store()
    store.set("a", b"\x00\xffbinary", flags=9)
    store.set("b/", b"")
    store.set("gone", b"x")
    store.delete("gone")
    snapshot = json.loads(json.dumps(store.snapshot()))

    restored = KVStore(RaftIndex(start=index.value))
    restored.restore(snapshot)
    assert restored.entries("") == store.entries("")
    assert restored.table_index() == store.table_index()
    assert restored.prefix_index("gone") == store.prefix_index("gone")
    restored.set("c", b"new")
    assert restored.keys("") == ["a", "b/", "c"]
