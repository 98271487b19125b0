"""Registration: this process's instance in Consul, kept honest by a TTL check heart-beaten from its real health.

The check starts critical, so callers see the instance only after its first heartbeat says SERVING. While the
process runs, every third of the TTL it reports its grpc.health.v1 status (SERVING -> pass, anything else ->
fail with the status as the check's output). If the process dies, the TTL expires and Consul marks it critical,
then reaps it after `deregister_after_s`. If the agent forgets it (restart without state, reaped), the next
heartbeat gets a 404 and registers again. On shutdown, `deregister` runs before the server drains.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping

from consul.exceptions import ACLDisabled, ACLPermissionDenied, BadRequest, ClientError

from meshlet.discovery.consul_client import ConsulClient, ConsulFactory, go_duration

log = logging.getLogger(__name__)

SERVING = "SERVING"
REQUEST_TIMEOUT_S = 5.0
HEALTH_POLL_S = 0.25  # how often the local health is read between heartbeats: a change is reported at once


WILDCARDS = ("0.0.0.0", "::", "")


def registered_address(bind_host: str, configured: str | None) -> str:
    """The address to register for a listener on `bind_host`: ``service.address`` when set (a pod IP; or a NAT's
    address that reaches this port), else the one the listener serves: its own host, or 127.0.0.1 behind a
    wildcard (Consul refuses 0.0.0.0, and loopback is the one address a wildcard surely serves)."""
    if configured:
        return configured
    host = bind_host.strip("[]")
    return "127.0.0.1" if host in WILDCARDS else host


class RegistrationRefused(Exception):
    """The agent answered and said no (bad definition, ACL token without service:write): fix the config."""


class Registration:
    """One service instance registered with the local Consul agent and its TTL heartbeat task.

    `health` returns the grpc.health.v1 status name of the service (``"SERVING"``, ``"NOT_SERVING"``, ...);
    `describe` turns it into the check's Output, which operators read in Consul: it says what was probed.
    Nothing here raises once registered: an unreachable agent is logged once and retried on the next beat.
    """

    def __init__(
        self,
        consul: ConsulFactory | ConsulClient,
        *,
        name: str,
        service_id: str,
        address: str,
        port: int,
        tags: Iterable[str] = (),
        meta: Mapping[str, str] | None = None,
        weight: int = 1,
        check_ttl_s: float = 10.0,
        deregister_after_s: float = 60.0,
        health: Callable[[], str],
        describe: Callable[[str], str] = lambda status: f"grpc.health.v1 status: {status}",
        notes: str = "meshlet heart-beats this check from the service's grpc.health.v1 status",
    ) -> None:
        self.name = name
        self.service_id = service_id
        self.check_id = f"service:{service_id}"  # the id Consul itself gives a service's only check
        self.address = address
        self.port = port
        self.tags = tuple(tags)
        self.meta = dict(meta or {})
        self.weight = weight
        self.check_ttl_s = check_ttl_s
        self.deregister_after_s = deregister_after_s
        self.last_status: str | None = None  # the status the agent last accepted
        self._beaten: str | None = None  # the status the last heartbeat tried to report
        self._health = health
        self._describe = describe  # the check's Output for a status: what was probed, and what it answered
        self._notes = notes
        self._source = consul
        self._client: ConsulClient | None = None
        self._owns_client = False
        self._heartbeat: asyncio.Task[None] | None = None
        self._unreachable = False

    async def register(self) -> bool:
        """Register with a critical TTL check and start heart-beating. True if the agent took the registration
        now; False if it could not be reached, in which case the heartbeat keeps trying.

        Raises RegistrationRefused when the agent rejects the definition or the token: retrying cannot help.
        """
        if self._client is None:
            self._owns_client = callable(self._source)
            self._client = self._source() if self._owns_client else self._source
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                registered = await self._register()
        except _REFUSALS as exc:
            raise RegistrationRefused(
                f"Consul refused to register {self.service_id} ({self.name}): {exc}; check the service "
                "definition (address, tags, meta) and that the token may write this service"
            ) from exc
        except Exception as exc:
            log.warning("Consul agent unreachable for %s, will keep trying: %s: %s", self.service_id, _name(exc), exc)
            self._unreachable, registered = True, False
        if self._heartbeat is None:
            self._heartbeat = asyncio.create_task(self._beat_forever(), name=f"consul-heartbeat:{self.service_id}")
        return registered

    async def deregister(self) -> bool:
        """Stop heart-beating and remove the instance. True if the agent confirmed; never raises."""
        task, self._heartbeat = self._heartbeat, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        client = self._client
        if client is None:
            return False
        done = await self._attempt(lambda: client.agent.service.deregister(self.service_id))
        self._client = None
        if self._owns_client:
            with contextlib.suppress(Exception):
                await client.close()
        return done

    async def set_maintenance(self, enable: bool, reason: str = "") -> bool:
        """Switch Consul's maintenance mode for this instance (a critical check that heartbeats do not clear).
        True if the agent took it; never raises."""
        client = self._client
        if client is None:
            return False
        word = "true" if enable else "false"
        return await self._attempt(lambda: client.agent.service.maintenance(self.service_id, word, reason or None))

    async def _register(self) -> bool:
        assert self._client is not None
        check = {
            "CheckID": self.check_id,
            "Name": f"Service '{self.name}' TTL heartbeat",
            "Notes": self._notes,
            "TTL": go_duration(self.check_ttl_s),
            "Status": "critical",
            "DeregisterCriticalServiceAfter": go_duration(self.deregister_after_s),
        }
        registered: bool = await self._client.agent.service.register(
            self.name,
            service_id=self.service_id,
            address=self.address,
            port=self.port,
            tags=list(self.tags),
            meta=self.meta,
            weights={"Passing": self.weight, "Warning": 1},
            check=check,
            replace_existing_checks=True,
        )
        self.last_status = None
        return registered

    async def _beat_forever(self) -> None:
        while True:
            await self._beat()
            await self._sleep_until_due_or_changed(self.check_ttl_s / 3)

    async def _sleep_until_due_or_changed(self, due_s: float) -> None:
        """Wait for the next heartbeat, or less when the health it would report changed: an instance that became
        ready is passing in Consul at once, not up to a third of the TTL later (a caller that waited for /ready
        would find no passing instance), and one that stopped serving leaves the passing set as soon."""
        loop = asyncio.get_running_loop()
        due = loop.time() + due_s
        while (left := due - loop.time()) > 0:
            await asyncio.sleep(min(left, HEALTH_POLL_S))
            if self._status() != self._beaten:
                return

    async def _beat(self) -> None:
        """Report the current health once; re-register first if the agent no longer knows the check."""
        status = self._beaten = self._status()
        if not await self._attempt(lambda: self._report(status)) and not self._unreachable:
            log.warning("Consul agent does not know %s any more; registering it again", self.check_id)
            if await self._attempt(self._register):
                await self._attempt(lambda: self._report(status))

    async def _report(self, status: str) -> bool:
        assert self._client is not None
        try:
            note = self._describe(status)
        except Exception:
            log.exception("describing the health of %s failed; reporting the bare status", self.service_id)
            note = status
        if status == SERVING:
            accepted: bool = await self._client.agent.check.ttl_pass(self.check_id, notes=note)
        else:
            accepted = await self._client.agent.check.ttl_fail(self.check_id, notes=note)
        if accepted:
            self.last_status = status
        return accepted

    def _status(self) -> str:
        try:
            return self._health()
        except Exception as exc:
            log.exception("health callback for %s failed; reporting NOT_SERVING", self.service_id)
            return f"NOT_SERVING ({_name(exc)})"

    async def _attempt(self, request: Callable[[], Awaitable[object]]) -> bool:
        """Run one agent request; False if it answered no (404) or failed. Logs changes of state only."""
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT_S):
                answer = bool(await request())
        except Exception as exc:
            if not self._unreachable:
                log.warning("Consul agent request for %s failed: %s: %s", self.service_id, _name(exc), exc)
            self._unreachable = True
            return False
        if self._unreachable:
            log.info("Consul agent reachable again for %s", self.service_id)
            self._unreachable = False
        return answer

    def __repr__(self) -> str:
        return (
            f"<Registration {self.service_id} ({self.name}) at {self.address}:{self.port}, "
            f"ttl {go_duration(self.check_ttl_s)}, last reported {self.last_status or 'nothing yet'}>"
        )


_REFUSALS = (BadRequest, ACLPermissionDenied, ACLDisabled, ClientError)


def _name(exc: BaseException) -> str:
    return type(exc).__name__
