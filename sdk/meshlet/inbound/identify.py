"""Stage: refuse a call on an mTLS port that carries no verified service identity.

The TLS handshake has already verified the caller's certificate chain against the trust bundle, and the
transport has judged the certificate (meshlet.security.peers: exactly one URI SAN naming a service, a trusted
trust domain, the chain's shape) and put the caller's SPIFFE ID on the call as `peer_uri`, or why there is none as
`peer_refusal`. This stage refuses a call without one, so authorization and rate limits below can rely on it.
It is in the list only when mTLS is on: with ``tls.source: off`` callers have no identity to check.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from meshlet.call import InboundCall
from meshlet.errors import Unauthenticated
from meshlet.security.identity import FORMAT, InvalidSpiffeId, SpiffeId

ISSUE_HINT = "present a client certificate issued by the mesh CA (meshlet certs issue DIR SERVICE, or Consul Connect)"


class IdentifyPeer:
    __slots__ = ()

    async def __call__(self, call: InboundCall, next: Callable[[InboundCall], Awaitable[Any]]) -> Any:
        uri = call.peer_uri
        if uri is None and call.peer_refusal is not None:
            raise Unauthenticated(
                f"{call.method} needs a client certificate that names one service of this mesh, and the one from "
                f"{call.peer_address or 'an unknown address'} is refused: {call.peer_refusal}; {ISSUE_HINT}",
                metadata={"method": call.method, "peer_address": call.peer_address},
            )
        if uri is None:
            raise Unauthenticated(
                f"{call.method} needs a verified client certificate (mTLS) and the call from "
                f"{call.peer_address or 'an unknown address'} had none: {ISSUE_HINT}",
                metadata={"method": call.method, "peer_address": call.peer_address},
            )
        try:
            SpiffeId.parse(uri)  # cached: a connection presents the same URI on every call
        except InvalidSpiffeId as exc:
            raise Unauthenticated(
                f"the client certificate does not name a service: {exc}; {ISSUE_HINT} (its URI SAN must be {FORMAT})",
                metadata={"method": call.method, "peer_uri": uri[:256], "peer_address": call.peer_address},
            ) from None
        return await next(call)
