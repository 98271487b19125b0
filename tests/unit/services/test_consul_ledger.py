"""Payments' shared ledger, the parts without an agent: safe KV key names, records that read back, the address
read from CONSUL_HTTP_ADDR, and a ledger whose agent does not answer (nothing charged, say so)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from meshlet_shop.payments.consul_ledger import (
    KV_PREFIX,
    ConsulLedger,
    LedgerUnavailable,
    MemoryBook,
    consul_address,
    from_environment,
    kv_key,
)
from meshlet_shop.payments.idempotency import Charge
from tests.support.processes import free_port


@pytest.mark.parametrize("key", ["k", "../../etc", "a/b?cas=1", "x" * 10_000, "é ü", ""])
def test_any_idempotency_key_makes_one_safe_kv_key(key: str) -> None:
    name = kv_key(KV_PREFIX, key).removeprefix(KV_PREFIX + "/")
    assert name.isalnum()
    assert len(name) == 64
    assert kv_key(KV_PREFIX, key + "!") != kv_key(KV_PREFIX, key)


def test_a_charge_reads_back_from_its_record() -> None:
    charge = Charge("ch-1", "k/1", "ord-1", 500, "EUR")
    assert Charge.from_json(charge.to_json().encode()) == charge
    with pytest.raises(KeyError):
        Charge.from_json('{"charge_id": "ch-1"}')


def test_consul_address_forms() -> None:
    assert consul_address("127.0.0.1:8500") == ("http", "127.0.0.1", 8500)
    assert consul_address("https://consul.local") == ("https", "consul.local", 8501)
    assert consul_address("http://fd00:1::2:8500") == ("http", "fd00:1::2", 8500)  # $(HOST_IP) on an IPv6 node
    assert consul_address("http://[fd00:1::2]:8500") == ("http", "fd00:1::2", 8500)
    with pytest.raises(ValueError, match="CONSUL_HTTP_ADDR"):
        consul_address("ftp://x:1")


def test_without_an_agent_the_ledger_is_in_memory() -> None:
    assert isinstance(from_environment({}, "payments-1"), MemoryBook)


def test_an_agent_that_does_not_answer_makes_the_ledger_unavailable() -> None:
    async def charge() -> None:
        ledger = from_environment({"CONSUL_HTTP_ADDR": f"127.0.0.1:{free_port()}"}, "payments-1")
        try:
            await ledger.charge("k", "ord-1", 500, "EUR")
        finally:
            await ledger.close()

    with pytest.raises(LedgerUnavailable, match="did not answer"):
        asyncio.run(charge())


def test_the_ledger_logs_in_with_the_token_file_as_consuls_own_client_does(tmp_path: Path) -> None:
    """prod's payments pod reads its ACL token (its service identity and the ledger's KV role) from the file its
    consul-login init container writes; a non-empty file wins over CONSUL_HTTP_TOKEN."""
    token_file = tmp_path / "token"
    token_file.write_text("from-login\n")
    environ = {
        "CONSUL_HTTP_ADDR": "http://fd00:1::2:8500",
        "CONSUL_HTTP_TOKEN": "from-env",
        "CONSUL_HTTP_TOKEN_FILE": str(token_file),
    }

    async def build() -> tuple[str, str]:
        ledger = from_environment(environ, "payments-1")
        assert isinstance(ledger, ConsulLedger)
        try:
            return ledger.client.token, ledger.client.http.base_uri
        finally:
            await ledger.close()

    assert asyncio.run(build()) == ("from-login", "http://[fd00:1::2]:8500")


@pytest.mark.parametrize("retention", ["0", "-5", "a day"])
def test_a_retention_that_is_not_a_positive_number_of_seconds_is_refused(retention: str) -> None:
    environ = {"CONSUL_HTTP_ADDR": "127.0.0.1:8500", "SHOP_LEDGER_RETENTION_S": retention}
    with pytest.raises(ValueError, match="SHOP_LEDGER_RETENTION_S"):
        from_environment(environ, "payments-1")
