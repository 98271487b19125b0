"""The NO_HEALTHY_ENDPOINT message's account of a service's instances: what it says, and that calls failing
together, or one after another, ask Consul at most once every few seconds."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from meshlet.discovery.instances import REPORT_EVERY_S, InstanceReport, summarize


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def instance(service_id: str, port: int, *checks: tuple[str, str]) -> dict[str, Any]:
    return {
        "Node": {"Node": "n1", "Address": "10.0.0.9"},
        "Service": {"ID": service_id, "Service": "ledger", "Address": "", "Port": port, "Tags": []},
        "Checks": [
            {"Name": f"check {i}", "Status": status, "Output": output} for i, (status, output) in enumerate(checks)
        ],
    }


def test_each_instance_is_named_with_its_failing_checks_and_their_output() -> None:
    text = summarize(
        "ledger",
        [
            instance(
                "ledger-1", 7101, ("passing", "Agent alive"), ("critical", "grpc.health.v1 status:\n NOT_SERVING")
            ),
            instance("ledger-2", 7102, ("warning", "")),
        ],
    )
    assert text == (
        "Consul knows 2 instances of ledger: ledger-1 at 10.0.0.9:7101 critical (check 1: grpc.health.v1 status: "
        "NOT_SERVING); ledger-2 at 10.0.0.9:7102 warning (check 0: no output)"
    )


def test_no_instance_at_all_asks_whether_the_service_runs_under_that_name() -> None:
    assert (
        summarize("ledger", []) == "Consul knows no instance of ledger: is it running and registered under that name?"
    )


def test_many_instances_are_counted_not_listed() -> None:
    text = summarize("ledger", [instance(f"ledger-{i}", 7100 + i, ("critical", "down")) for i in range(5)])
    assert text.endswith("; and 2 more")
    assert "ledger-3" not in text


async def test_consul_is_asked_once_for_calls_failing_together_and_again_only_after_a_few_seconds() -> None:
    asked: list[str] = []
    answer = asyncio.Event()

    async def fetch(service: str) -> list[Mapping[str, Any]]:
        asked.append(service)
        await answer.wait()
        return [instance("ledger-1", 7101, ("critical", "down"))]

    clock = FakeClock()
    report = InstanceReport("ledger", fetch, clock=clock)
    together = [asyncio.ensure_future(report.summary()) for _ in range(10)]
    await asyncio.sleep(0)
    answer.set()
    summaries = await asyncio.gather(*together)
    assert len(set(summaries)) == 1
    assert "ledger-1" in (summaries[0] or "")

    clock.now += REPORT_EVERY_S - 0.1
    assert await report.summary() == summaries[0]
    assert asked == ["ledger"]

    clock.now += 0.2
    await report.summary()
    assert asked == ["ledger", "ledger"]


async def test_a_consul_that_does_not_answer_leaves_the_message_without_the_list() -> None:
    async def fetch(service: str) -> list[Mapping[str, Any]]:
        raise ConnectionError("agent away")

    assert await InstanceReport("ledger", fetch).summary() is None
