"""payments' charge records in a real agent's KV (the dev agent): kept for the retention, then swept away, with
what is younger, foreign or of unknown age left alone."""

from __future__ import annotations

import consul.aio

from meshlet_shop.payments.consul_ledger import KV_PREFIX, ConsulLedger, kv_key
from tests.support.agents import start_dev_agent
from tests.support.processes import Processes

DAY_S = 24 * 3600.0


async def test_records_older_than_the_retention_are_swept_and_the_rest_kept(procs: Processes) -> None:
    agent = start_dev_agent(procs)
    now = [1_000_000.0]
    ledger = ConsulLedger(
        consul.aio.Consul(host=agent.host, port=agent.port),
        where=agent.url,
        retention_s=DAY_S,
        clock=lambda: now[0],
    )
    try:
        old, _ = await ledger.charge("key-old", "ord-1", 500, "EUR")
        now[0] += DAY_S / 2
        young, _ = await ledger.charge("key-young", "ord-2", 700, "EUR")
        await ledger.client.kv.put(f"{KV_PREFIX}/not-a-charge", "hello")
        await ledger.client.kv.put(
            kv_key(KV_PREFIX, "legacy"),
            '{"charge_id": "ch-0", "idempotency_key": "legacy", "order_id": "o", "amount_cents": 1, "currency": "EUR"}',
        )
        assert await ledger.sweep() == 0, "nothing is a day old yet"

        now[0] += DAY_S / 2 + 1
        assert await ledger.sweep() == 1
        _, gone = await ledger.client.kv.get(kv_key(KV_PREFIX, "key-old"))
        assert gone is None
        again, replayed = await ledger.charge("key-young", "ord-2", 700, "EUR")
        assert (again, replayed) == (young, True), "a record within the retention still replays"
        _, keys = await ledger.client.kv.get(f"{KV_PREFIX}/", keys=True)
        assert f"{KV_PREFIX}/not-a-charge" in keys
        assert kv_key(KV_PREFIX, "legacy") in keys, "a record of unknown age is kept"

        retried, replayed = await ledger.charge("key-old", "ord-1", 500, "EUR")
        assert not replayed, "after the retention the key is new again"
        assert retried.charge_id != old.charge_id
    finally:
        await ledger.close()
