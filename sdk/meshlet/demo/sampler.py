"""What the demo watches while the traffic runs: each second, which instances Consul reports passing, and the
breakers of their caller (orders' metrics page); at the end, the last word of every metrics page.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from meshlet.demo import scrape, timeline
from meshlet.demo.probes import Probes
from meshlet.demo.timeline import Snapshot
from meshlet.demo.topology import Topology

SAMPLE_EVERY_S = 1.0
WATCHED = ("inventory", "payments")  # the services whose instances the timeline follows


class Sampler:
    """Each second: which instances pass in Consul, and their breaker states as orders (their caller) sees them."""

    def __init__(self, topology: Topology, probes: Probes) -> None:
        self.topology = topology
        self.probes = probes
        self.snapshots: list[Snapshot] = []
        self._names = {i.endpoint: i.name for i in topology.instances if i.service in WATCHED}
        self._orders = topology.instance("orders").metrics_url

    async def run(self, elapsed: Callable[[], float]) -> None:
        while True:
            await self.sample(elapsed())
            await asyncio.sleep(SAMPLE_EVERY_S)

    async def sample(self, t: float) -> None:
        passing_sets = await asyncio.gather(*(self.probes.passing(service) for service in WATCHED))
        text = await self.probes.metrics(self._orders) if self._orders else None
        passing: frozenset[str] | None = frozenset()
        for found in passing_sets:
            passing = None if found is None or passing is None else passing | found
        samples = scrape.parse(text) if text is not None else []
        breakers: dict[str, int] = {}
        entered: dict[tuple[str, str], float] = {}
        for service in WATCHED:
            breakers.update(timeline.normalise_breakers(scrape.breaker_states(samples, service), self._names))
            entered.update(timeline.normalise_transitions(scrape.breaker_transitions(samples, service), self._names))
        self.snapshots.append(Snapshot(t, passing, breakers, entered))


async def scrape_all(topology: Topology, probes: Probes) -> dict[str, list[scrape.Sample]]:
    """The last word of every metrics page: the SDK services' metrics ports and the sidecars' admin pages."""
    urls = {i.name: i.metrics_url for i in topology.instances if i.metrics_url}
    texts = await asyncio.gather(*(probes.metrics(url) for url in urls.values()))
    return {name: scrape.parse(text) for name, text in zip(urls, texts, strict=True) if text}
