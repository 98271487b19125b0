"""Outbound, with URI-only leaves: an upstream's endpoint is used only once it has shown the upstream's SPIFFE ID in
its URI SAN.

grpcio's client matches a server only against DNS SANs, or the common name when there is none
(``grpc.ssl_target_name_override``; see certs.channel_options). Leaves that meshlet's CAs issue carry the identity
DNS SAN, which grpc matches on every connection (and handshake_failures explains). A real Consul's leaves carry only
the URI SAN, and its common names collide (``led-ger``, ``LEDGER`` and ``ledger`` share one), so grpcio alone would
accept another service's leaf. So there, before discovery hands an endpoint to the balancer, `VerifiedEndpoints`
connects to it with Python's ssl (handshake_failures.probe, verifying with our trust bundle), reads the leaf it
presents and checks that its SPIFFE ID names the upstream's service, namespace, partition and trust domain (any
datacenter: Consul fails over across them). An endpoint that fails is left out and its reason is kept for the
NO_HEALTHY_ENDPOINT message.

What it does not cover: grpc makes its own connections after the check; a process that later takes over a verified
endpoint's address and port is caught only by grpc's name check (above) until the endpoint leaves discovery and
comes back. Each endpoint costs one probe (two handshakes without a client certificate), once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping

from meshlet.endpoints import Endpoint, EndpointSet
from meshlet.security.certs import CertificateSource
from meshlet.security.handshake_failures import Probed, probe
from meshlet.security.identity import InvalidSpiffeId, SpiffeId

log = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT_S = 5.0
RECHECK_S = 1.0  # an endpoint that could not be reached is checked again this often while discovery lists it
_UNREACHABLE = "it could not be reached to check its identity"


def _refusal(expected: SpiffeId, probed: Probed) -> str | None:
    """Why the endpoint `probed` is not an instance of `expected`'s service, or None when it is."""
    if not probed.speaks_tls:
        return "it does not speak TLS"
    if probed.untrusted is not None:
        return f"its certificate is not trusted here ({probed.untrusted})"
    identity = probed.presented.identity if probed.presented is not None else None
    if identity is None:
        return "it presented no readable certificate"
    try:
        presented = SpiffeId.parse(identity)
    except InvalidSpiffeId:
        return f"it presented {identity}, which is not one service's SPIFFE ID"
    return identity_mismatch(expected, presented)


def identity_mismatch(expected: SpiffeId, presented: SpiffeId) -> str | None:
    """Why `presented` is not the upstream `expected` names (its datacenter aside), or None when it is."""
    ours = (expected.trust_domain, expected.partition, expected.namespace, expected.service)
    theirs = (presented.trust_domain, presented.partition, presented.namespace, presented.service)
    if ours == theirs:
        return None
    return f"it presented {presented}, not the identity of {expected.service} ({expected})"


class VerifiedEndpoints:
    """Stands between discovery and one upstream: each endpoint in a new set is checked once (concurrently) and only
    those presenting `expected` reach `deliver`; `refused` holds why the others were left out."""

    def __init__(
        self,
        expected: Callable[[], SpiffeId],
        source: CertificateSource,
        deliver: Callable[[EndpointSet], None],
        *,
        timeout_s: float = HANDSHAKE_TIMEOUT_S,
    ) -> None:
        self._expected = expected
        self._source = source
        self._deliver = deliver
        self._timeout_s = timeout_s
        self._verdicts: dict[Endpoint, str | None] = {}  # endpoint -> why it is refused, None when verified
        self._latest = EndpointSet()
        self._checking: set[asyncio.Task[None]] = set()

    @property
    def refused(self) -> Mapping[Endpoint, str]:
        return {endpoint: why for endpoint, why in self._verdicts.items() if why is not None}

    def update(self, endpoints: EndpointSet) -> None:
        """Discovery's new set: deliver it now if every endpoint was checked before, else once the new ones are."""
        self._latest = endpoints
        for gone in [endpoint for endpoint in self._verdicts if endpoint not in endpoints]:
            del self._verdicts[gone]  # one that comes back is checked again
        unknown = [endpoint for endpoint in endpoints if endpoint not in self._verdicts]
        if not unknown:
            self._pass_on()
            return
        task = asyncio.get_running_loop().create_task(self._check(unknown))
        self._checking.add(task)
        task.add_done_callback(self._checking.discard)

    async def _check(self, endpoints: list[Endpoint]) -> None:
        while endpoints:
            verdicts = await asyncio.gather(*(self._verdict(endpoint) for endpoint in endpoints))
            for endpoint, verdict in zip(endpoints, verdicts, strict=True):
                if endpoint in self._latest:
                    self._verdicts[endpoint] = verdict
            self._pass_on()
            endpoints = [e for e in endpoints if e in self._latest and self._verdicts.get(e) == _UNREACHABLE]
            if endpoints:
                await asyncio.sleep(RECHECK_S)

    async def _verdict(self, endpoint: Endpoint) -> str | None:
        expected = self._expected()
        probed = await probe(endpoint, self._source.current().trust_bundle_pem, self._timeout_s)
        if probed is None:  # no connection, or closed mid-handshake: not up yet, or gone; held back, checked again
            return _UNREACHABLE
        why = _refusal(expected, probed)
        if why is not None:
            log.warning(
                "refusing %s as an instance of %s: %s", endpoint, expected.service, why, extra={"event": "impostor"}
            )
        return why

    def _pass_on(self) -> None:
        verified = EndpointSet(e for e in self._latest if e in self._verdicts and self._verdicts[e] is None)
        self._deliver(verified)

    async def close(self) -> None:
        for task in list(self._checking):
            task.cancel()
        await asyncio.gather(*self._checking, return_exceptions=True)
