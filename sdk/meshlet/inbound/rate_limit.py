"""Stage: hold each caller to its rate limits; over a limit, RESOURCE_EXHAUSTED with the time to wait.

Below Authorize, so only calls that would be served spend tokens. The caller is its verified SPIFFE ID, or
without mTLS its address (the host, not the port, so reconnecting does not reset a limit). The refusal
carries ``grpc-retry-pushback-ms`` (gRPC A6): meshlet's client waits that long before it retries. It names
the method and this instance: to a meshlet caller, proof that this very call was not executed.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import Any

from meshlet.call import InboundCall, ServedInstance
from meshlet.errors import RateLimited
from meshlet.resilience.rate_limit import MethodRateLimits, RateLimiter


class RateLimitCaller:
    __slots__ = ("_instance", "_per_caller", "_per_method")

    def __init__(
        self,
        per_caller: RateLimiter | None,
        per_method: MethodRateLimits | None = None,
        instance: ServedInstance | None = None,
    ) -> None:
        self._per_caller = per_caller
        self._per_method = per_method
        self._instance = instance or ServedInstance()

    async def __call__(self, call: InboundCall, next: Callable[[InboundCall], Awaitable[Any]]) -> Any:
        caller = call.peer_uri or caller_address(call.peer_address)
        if self._per_method is not None:
            limiter = self._per_method.for_method(call.method)
            # Checked first: a call it refuses spends none of the caller's overall tokens.
            if limiter is not None and (wait_s := limiter.check((caller, call.method))) is not None:
                raise self._limited(call, caller, wait_s, limiter, call.method, "rate_limit.per_method")
        if self._per_caller is not None and (wait_s := self._per_caller.check(caller)) is not None:
            raise self._limited(call, caller, wait_s, self._per_caller, "all methods", "rate_limit.per_caller")
        return await next(call)

    def _limited(
        self, call: InboundCall, caller: str, wait_s: float, limiter: RateLimiter, scope: str, key: str
    ) -> RateLimited:
        pushback_ms = math.ceil(wait_s * 1000)
        info = {"caller": caller, "method": call.method, "rate_per_s": f"{limiter.rate_per_s:g}"}
        if self._instance.id:
            info["instance"] = self._instance.id
        return RateLimited(
            f"caller {caller} is over its rate limit for {scope} ({limiter.rate_per_s:g} calls/s, burst "
            f"{limiter.burst}): retry after {pushback_ms} ms ({_who_waits(call, wait_s)}) "
            f"or have {key} raised on the server",
            metadata=info,
            pushback_ms=pushback_ms,
        )


def _who_waits(call: InboundCall, wait_s: float) -> str:
    """Whether the caller can wait the pushback out: a meshlet client does, unless its deadline is nearer."""
    deadline = call.deadline
    if deadline is not None and (remaining_s := deadline.remaining()) < wait_s:
        return (
            f"longer than the {math.floor(remaining_s * 1000)} ms left before the call's deadline, so no client "
            "waits it out: give the call a longer deadline, or make fewer calls"
        )
    return "meshlet clients wait for this pushback by themselves"


def caller_address(peer_address: str) -> str:
    """``ipv4:10.0.0.7:53122`` -> ``ipv4:10.0.0.7``: a caller without an identity is its host."""
    if peer_address.startswith(("ipv4:", "ipv6:")):
        return peer_address.rpartition(":")[0]
    return peer_address
