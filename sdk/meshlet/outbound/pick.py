"""Stage (per attempt): choose the endpoint for this attempt from the upstream's current picker snapshot.

Per attempt, so a retry goes to another endpoint than the ones this call already tried. It never blocks, except
for the very first call to an upstream, which waits for discovery's first answer within its deadline (and is
refused if the wait left it less than the deadline floor). An endpoint whose breaker is half-open admits one
probe at a time; a pick that lands on a busy probe moves on.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from meshlet.call import Call
from meshlet.endpoints import Endpoint
from meshlet.errors import MeshError
from meshlet.outbound.deadline import too_short


class Picks(Protocol):
    def pick(self, avoid: Any = None) -> Endpoint | None: ...

    def __len__(self) -> int: ...


class Balancer(Protocol):
    """What PickEndpoint needs of an upstream."""

    @property
    def picker(self) -> Picks | None:
        """The current snapshot, or None until discovery has answered once."""

    async def wait_first_answer(self, timeout_s: float) -> None: ...

    def admits(self, endpoint: Endpoint, attempt: Call) -> bool:
        """Whether the endpoint's breaker lets this attempt through (half-open: as its one probe)."""

    async def no_endpoint_error(self, call: Call) -> MeshError:
        """The error that says why there is nothing to pick (none passing, all circuits open, no answer yet)."""


class PickEndpoint:
    __slots__ = ("_balancer", "_floor_s")

    def __init__(self, balancer: Balancer, floor_s: float) -> None:
        self._balancer = balancer
        self._floor_s = floor_s

    async def __call__(self, call: Call, next: Callable[[Call], Awaitable[Any]]) -> Any:
        balancer = self._balancer
        picker = balancer.picker
        if picker is None:
            assert call.deadline is not None
            await balancer.wait_first_answer(call.deadline.remaining())
            remaining = call.deadline.remaining()
            if remaining < self._floor_s:
                raise too_short(call, remaining, self._floor_s)
            picker = balancer.picker
        endpoint = picker.pick(call.tried) if picker is not None else None
        if endpoint is not None and not balancer.admits(endpoint, call):
            assert picker is not None
            endpoint = self._pick_admitted(picker, call, endpoint)
        if endpoint is None:
            raise await balancer.no_endpoint_error(call)
        call.endpoint = endpoint
        return await next(call)

    def _pick_admitted(self, picker: Picks, call: Call, refused: Endpoint) -> Endpoint | None:
        """The first pick landed on an endpoint that admits nothing right now (a half-open breaker whose one
        probe is out): look for another that admits, untried ones first, then those this call already tried."""
        refusing = {refused}
        tried = set(call.tried or ())
        for untried_only in (True, False):
            for _ in range(len(picker)):
                endpoint = picker.pick(refusing | tried if untried_only else refusing)
                if endpoint is None or endpoint in refusing or (untried_only and endpoint in tried):
                    break  # the picker fell back to an avoided endpoint: nothing else left at this level
                if self._balancer.admits(endpoint, call):
                    return endpoint
                refusing.add(endpoint)
        return None
