"""Consul's KV API as clients see it: py-consul (sync and asyncio) for the everyday calls, raw HTTP for the
exact status codes, headers and bodies."""

from __future__ import annotations

import asyncio
import base64
import uuid
from collections.abc import Callable

import consul
import consul.aio
import pytest
import requests

from tests.contract.conftest import Agent

MAX_VALUE = 512 * 1024


def kv_url(agent: Agent, key: str) -> str:
    return f"{agent.url}/v1/kv/{key}"


# ------------------------------------------------------------------------------------------ reads and writes


def test_put_then_get_returns_the_value_flags_and_indexes(agent: Agent, unique: Callable[[str], str]) -> None:
    c = agent.client()
    key = unique("kv/roundtrip")
    assert c.kv.put(key, b"\x00binary\xff", flags=42) is True
    index, entry = c.kv.get(key)
    assert entry["Key"] == key
    assert entry["Value"] == b"\x00binary\xff"
    assert entry["Flags"] == 42
    assert entry["LockIndex"] == 0
    assert entry["CreateIndex"] == entry["ModifyIndex"]
    assert int(index) == entry["ModifyIndex"]


def test_single_key_is_a_one_element_array_of_dir_entries(agent: Agent, unique: Callable[[str], str]) -> None:
    key = unique("kv/raw-json")
    requests.put(kv_url(agent, key), data=b"bar", timeout=5).raise_for_status()
    response = requests.get(kv_url(agent, key), timeout=5)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/json")
    [entry] = response.json()
    assert set(entry) == {"LockIndex", "Key", "Flags", "Value", "CreateIndex", "ModifyIndex"}
    assert entry["Value"] == base64.b64encode(b"bar").decode()
    assert response.headers["X-Consul-Index"] == str(entry["ModifyIndex"])
    assert response.headers["X-Consul-KnownLeader"] == "true"


def test_missing_key_is_404_with_an_empty_body_and_an_index(agent: Agent, unique: Callable[[str], str]) -> None:
    response = requests.get(kv_url(agent, unique("kv/missing")), timeout=5)
    assert response.status_code == 404
    assert response.content == b""
    assert int(response.headers["X-Consul-Index"]) >= 1


def test_py_consul_reads_a_missing_key_as_none_with_an_index(agent: Agent, unique: Callable[[str], str]) -> None:
    index, entry = agent.client().kv.get(unique("kv/missing"))
    assert entry is None
    assert int(index) >= 1


def test_empty_value_reads_back_as_null(agent: Agent, unique: Callable[[str], str]) -> None:
    key = unique("kv/folder") + "/"
    assert agent.client().kv.put(key, None) is True
    [entry] = requests.get(kv_url(agent, key), timeout=5).json()
    assert entry["Value"] is None


def test_put_without_flags_resets_them(agent: Agent, unique: Callable[[str], str]) -> None:
    c = agent.client()
    key = unique("kv/flags")
    c.kv.put(key, "v", flags=7)
    c.kv.put(key, "v")
    _, entry = c.kv.get(key)
    assert entry["Flags"] == 0


def test_update_keeps_create_index_and_moves_modify_index(agent: Agent, unique: Callable[[str], str]) -> None:
    c = agent.client()
    key = unique("kv/update")
    c.kv.put(key, "one")
    _, first = c.kv.get(key)
    c.kv.put(key, "two")
    _, second = c.kv.get(key)
    assert second["CreateIndex"] == first["CreateIndex"]
    assert second["ModifyIndex"] > first["ModifyIndex"]


def test_identical_rewrite_does_not_move_modify_index(agent: Agent, unique: Callable[[str], str]) -> None:
    c = agent.client()
    key = unique("kv/same")
    c.kv.put(key, "same", flags=1)
    _, first = c.kv.get(key)
    assert c.kv.put(key, "same", flags=1) is True
    _, second = c.kv.get(key)
    assert second["ModifyIndex"] == first["ModifyIndex"]


def test_raw_read_returns_the_bytes_as_sandboxed_plain_text(agent: Agent, unique: Callable[[str], str]) -> None:
    key = unique("kv/raw")
    requests.put(kv_url(agent, key), data=b"<script>1</script>", timeout=5).raise_for_status()
    response = requests.get(kv_url(agent, key), params={"raw": ""}, timeout=5)
    assert response.status_code == 200
    assert response.content == b"<script>1</script>"
    assert response.headers["Content-Type"].startswith("text/plain")
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Content-Security-Policy"] == "sandbox"
    assert "X-Consul-Index" in response.headers


def test_value_of_exactly_512_kib_is_accepted_and_one_byte_more_is_413(
    agent: Agent, unique: Callable[[str], str]
) -> None:
    key = unique("kv/big")
    accepted = requests.put(kv_url(agent, key), data=b"x" * MAX_VALUE, timeout=10)
    assert accepted.status_code == 200
    refused = requests.put(kv_url(agent, key), data=b"x" * (MAX_VALUE + 1), timeout=10)
    assert refused.status_code == 413
    assert "too large" in refused.text
    assert len(agent.client().kv.get(key)[1]["Value"]) == MAX_VALUE


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_empty_key_without_recurse_is_400_missing_key_name(agent: Agent, method: str) -> None:
    response = requests.request(method, f"{agent.url}/v1/kv/", timeout=5)
    assert response.status_code == 400
    assert response.text.strip() == "Missing key name"


def test_unparseable_flags_are_a_500_with_gos_parse_error(agent: Agent, unique: Callable[[str], str]) -> None:
    response = requests.put(kv_url(agent, unique("kv/badflags")), params={"flags": "x"}, data=b"v", timeout=5)
    assert response.status_code == 500
    assert response.text.strip() == 'strconv.ParseUint: parsing "x": invalid syntax'


def test_key_with_trailing_space_is_refused(agent: Agent, unique: Callable[[str], str]) -> None:
    """Consul validates key names since CVE-2025-11392: no traversal, no leading or trailing spaces."""
    response = requests.put(kv_url(agent, unique("kv/space") + "%20"), data=b"v", timeout=5)
    assert response.status_code == 400


# ------------------------------------------------------------------------------------------ listings


def test_recurse_lists_every_entry_under_the_prefix_in_key_order(agent: Agent, unique: Callable[[str], str]) -> None:
    c = agent.client()
    prefix = unique("kv/tree") + "/"
    for key in ("b", "a/2", "a/1"):
        c.kv.put(prefix + key, key)
    c.kv.put(prefix.rstrip("/") + "-sibling", "not under the prefix")
    index, entries = c.kv.get(prefix, recurse=True)
    assert [entry["Key"] for entry in entries] == [prefix + "a/1", prefix + "a/2", prefix + "b"]
    assert [entry["Value"] for entry in entries] == [b"a/1", b"a/2", b"b"]
    assert int(index) == max(entry["ModifyIndex"] for entry in entries)


def test_recurse_on_an_empty_prefix_is_404_with_an_index(agent: Agent, unique: Callable[[str], str]) -> None:
    response = requests.get(kv_url(agent, unique("kv/none") + "/"), params={"recurse": ""}, timeout=5)
    assert response.status_code == 404
    assert "X-Consul-Index" in response.headers
    assert agent.client().kv.get(unique("kv/none") + "/", recurse=True)[1] is None


def test_keys_roll_up_at_the_separator(agent: Agent, unique: Callable[[str], str]) -> None:
    c = agent.client()
    prefix = unique("kv/keys") + "/"
    for key in ("base/a", "base/b", "foo", "deep/er/x"):
        c.kv.put(prefix + key, "v")
    _, keys = c.kv.get(prefix, keys=True)
    assert keys == [prefix + "base/a", prefix + "base/b", prefix + "deep/er/x", prefix + "foo"]
    _, rolled = c.kv.get(prefix, keys=True, separator="/")
    assert rolled == [prefix + "base/", prefix + "deep/", prefix + "foo"]


def test_misspelt_seperator_is_honoured_too(agent: Agent, unique: Callable[[str], str]) -> None:
    c = agent.client()
    prefix = unique("kv/sep") + "/"
    c.kv.put(prefix + "dir/x", "v")
    c.kv.put(prefix + "file", "v")
    response = requests.get(kv_url(agent, prefix), params={"keys": "", "seperator": "/"}, timeout=5)
    assert response.json() == [prefix + "dir/", prefix + "file"]


def test_keys_of_a_missing_prefix_are_404_but_the_root_is_a_list(agent: Agent, unique: Callable[[str], str]) -> None:
    missing = requests.get(kv_url(agent, unique("kv/nokeys") + "/"), params={"keys": ""}, timeout=5)
    assert missing.status_code == 404
    assert "X-Consul-Index" in missing.headers
    root = requests.get(f"{agent.url}/v1/kv/", params={"keys": ""}, timeout=5)
    assert root.status_code == 200
    assert isinstance(root.json(), list)


# ------------------------------------------------------------------------------------------ check-and-set, delete


def test_cas_zero_creates_only_when_absent(agent: Agent, unique: Callable[[str], str]) -> None:
    c = agent.client()
    key = unique("kv/cas0")
    assert c.kv.put(key, "first", cas=0) is True
    assert c.kv.put(key, "second", cas=0) is False
    assert c.kv.get(key)[1]["Value"] == b"first"


def test_cas_writes_only_at_the_current_modify_index(agent: Agent, unique: Callable[[str], str]) -> None:
    c = agent.client()
    key = unique("kv/cas")
    c.kv.put(key, "one")
    _, entry = c.kv.get(key)
    assert c.kv.put(key, "stale", cas=entry["ModifyIndex"] + 1000) is False
    assert c.kv.put(key, "two", cas=entry["ModifyIndex"]) is True
    assert c.kv.get(key)[1]["Value"] == b"two"


def test_conflicting_write_flags_are_400(agent: Agent, unique: Callable[[str], str]) -> None:
    response = requests.put(
        kv_url(agent, unique("kv/conflict")), params={"cas": "0", "acquire": str(uuid.uuid4())}, timeout=5
    )
    assert response.status_code == 400
    assert response.text.startswith("Conflicting flags: ")


def test_acquire_with_an_unknown_session_is_500_invalid_session(agent: Agent, unique: Callable[[str], str]) -> None:
    session = str(uuid.uuid4())
    response = requests.put(kv_url(agent, unique("kv/lock")), params={"acquire": session}, data=b"v", timeout=5)
    assert response.status_code == 500
    assert response.text.strip() == f'invalid session "{session}"'


def test_release_by_a_session_that_holds_no_lock_is_false(agent: Agent, unique: Callable[[str], str]) -> None:
    key = unique("kv/unlock")
    requests.put(kv_url(agent, key), data=b"v", timeout=5).raise_for_status()
    response = requests.put(kv_url(agent, key), params={"release": str(uuid.uuid4())}, timeout=5)
    assert response.status_code == 200
    assert response.json() is False


def test_delete_removes_the_key_and_a_missing_key_deletes_fine(agent: Agent, unique: Callable[[str], str]) -> None:
    c = agent.client()
    key = unique("kv/delete")
    c.kv.put(key, "v")
    assert c.kv.delete(key) is True
    assert c.kv.get(key)[1] is None
    assert c.kv.delete(key) is True


def test_delete_with_cas_needs_the_current_modify_index(agent: Agent, unique: Callable[[str], str]) -> None:
    c = agent.client()
    key = unique("kv/delcas")
    c.kv.put(key, "v")
    _, entry = c.kv.get(key)
    assert c.kv.delete(key, cas=0) is False
    assert c.kv.delete(key, cas=entry["ModifyIndex"] + 1000) is False
    assert c.kv.delete(key, cas=entry["ModifyIndex"]) is True
    assert c.kv.get(key)[1] is None


def test_recursive_delete_removes_only_the_prefix(agent: Agent, unique: Callable[[str], str]) -> None:
    c = agent.client()
    prefix = unique("kv/deltree") + "/"
    c.kv.put(prefix + "a", "v")
    c.kv.put(prefix + "b/c", "v")
    survivor = prefix.rstrip("/") + "-kept"
    c.kv.put(survivor, "v")
    assert c.kv.delete(prefix, recurse=True) is True
    assert c.kv.get(prefix, recurse=True)[1] is None
    assert c.kv.get(survivor)[1]["Value"] == b"v"


def test_recursive_delete_with_cas_is_400(agent: Agent, unique: Callable[[str], str]) -> None:
    response = requests.delete(kv_url(agent, unique("kv/x")), params={"recurse": "", "cas": "1"}, timeout=5)
    assert response.status_code == 400
    assert response.text.startswith("Conflicting flags: ")


# ------------------------------------------------------------------------------------------ blocking queries


def test_blocking_read_times_out_returning_the_same_index(agent: Agent, unique: Callable[[str], str]) -> None:
    c = agent.client()
    key = unique("kv/idle")
    c.kv.put(key, "v")
    index, _ = c.kv.get(key)
    again, entry = c.kv.get(key, index=index, wait="1s")
    assert again == index
    assert entry["Value"] == b"v"


async def test_blocking_read_wakes_when_the_key_changes(agent: Agent, unique: Callable[[str], str]) -> None:
    key = unique("kv/watch")
    c = consul.aio.Consul(host=agent.host, port=agent.port)
    try:
        await c.kv.put(key, "one")
        index, _ = await c.kv.get(key)
        watch = asyncio.create_task(c.kv.get(key, index=index, wait="60s"))
        await asyncio.sleep(0.3)
        assert not watch.done(), "the read should block until the key changes"
        await c.kv.put(key, "two")
        new_index, entry = await asyncio.wait_for(watch, 30)
        assert entry["Value"] == b"two"
        assert int(new_index) > int(index)
    finally:
        await c.close()


async def test_blocking_read_of_a_missing_key_returns_when_it_appears(
    agent: Agent, unique: Callable[[str], str]
) -> None:
    key = unique("kv/later")
    c = consul.aio.Consul(host=agent.host, port=agent.port)
    try:
        index, entry = await c.kv.get(key)
        assert entry is None
        watch = asyncio.create_task(c.kv.get(key, index=index, wait="60s"))
        await asyncio.sleep(0.3)
        assert not watch.done()
        await c.kv.put(key, "here")
        _, entry = await asyncio.wait_for(watch, 30)
        assert entry["Value"] == b"here"
    finally:
        await c.close()


async def test_deleting_a_key_wakes_a_watcher_of_its_prefix(agent: Agent, unique: Callable[[str], str]) -> None:
    prefix = unique("kv/prefixwatch") + "/"
    c = consul.aio.Consul(host=agent.host, port=agent.port)
    try:
        await c.kv.put(prefix + "stays", "v")
        await c.kv.put(prefix + "goes", "v")
        index, _ = await c.kv.get(prefix, recurse=True)
        watch = asyncio.create_task(c.kv.get(prefix, recurse=True, index=index, wait="60s"))
        await asyncio.sleep(0.3)
        assert not watch.done()
        await c.kv.delete(prefix + "goes")
        new_index, entries = await asyncio.wait_for(watch, 30)
        assert [entry["Key"] for entry in entries] == [prefix + "stays"]
        assert int(new_index) > int(index)
    finally:
        await c.close()


async def test_writes_elsewhere_do_not_wake_a_prefix_watcher(agent: Agent, unique: Callable[[str], str]) -> None:
    prefix = unique("kv/quiet") + "/"
    c = consul.aio.Consul(host=agent.host, port=agent.port)
    try:
        await c.kv.put(prefix + "a", "v")
        index, _ = await c.kv.get(prefix, keys=True)
        watch = asyncio.create_task(c.kv.get(prefix, keys=True, index=index, wait="60s"))
        await c.kv.put(unique("kv/elsewhere"), "v")
        await asyncio.sleep(0.3)
        assert not watch.done(), "a write outside the prefix must not end the blocking read"
        await c.kv.put(prefix + "b", "v")
        _, keys = await asyncio.wait_for(watch, 30)
        assert keys == [prefix + "a", prefix + "b"]
    finally:
        await c.close()
