"""What a hostile caller or server tries against meshlet, for real on 127.0.0.1: odd method paths that a lenient
app would route to a denied or rate-limited method, and certificates crafted under the trusted test CA (a SPIFFE ID
outside the URI SAN, two URI SANs, another trust domain, namespace or partition, a chain longer than the root
allows). Each is tried against both faces, an SDK server (``mesh.server()``) and a sidecar's L7 inbound listener,
whose handler (a catch-all that would serve any path, as a Go app before grpc-go 1.79.3 does) records every call
that reaches it. Last, a server that presents another service's leaf whose common name collides with the upstream's,
against an SDK channel and a sidecar's outbound."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from meshlet.config import load_config
from meshlet.endpoints import Endpoint, EndpointSet
from meshlet.errors import ErrorReason, error_info
from meshlet.inbound import InboundParts
from meshlet.mesh import Mesh
from meshlet.security.certs import channel_options, consul_service_cn, server_credentials
from meshlet.security.dev_ca import init_ca, issue
from meshlet.security.identity import SpiffeId
from meshlet.security.sources import FileSource
from meshlet.security.upstream_identity import VerifiedEndpoints
from meshlet.transport.raw import Built, RawMethods
from meshlet_sidecar.forward import ForwardToApp
from meshlet_sidecar.inbound_listener import InboundListener
from meshlet_sidecar.outbound_listener import OutboundListener
from meshlet_sidecar.routing import Routes
from meshlet_sidecar.splice import SpliceListener
from tests.support import crafted_certs
from tests.support.agents import Agent
from tests.support.crafted_certs import Issuer
from tests.support.processes import Processes, eventually, free_port
from tests.support.sidecars import start_sidecar

TRUST_DOMAIN = "meshlet.test"
FOREIGN_DOMAIN = "other.example"
GATEWAY = f"spiffe://{TRUST_DOMAIN}/ns/default/dc/dc1/svc/gateway"
DROP = "/shop.Admin/Drop"
CREATE = "/shop.Orders/CreateOrder"
WAIT_S = 5.0
NOT_CANONICAL = [
    "shop.Admin/Drop",
    "/shop.Admin/Drop/",
    "//shop.Admin/Drop",
    "/shop.Admin/Drop/x",
    "/shop.Admin//Drop",
    "/shop.Admin/Dr%6Fp",
    "/shop.Admin/Drop ",
]
# gateway may call anything on orders but Drop; CreateOrder once per caller (a burst of 1 that refills slowly).
AUTHZ = {
    "default": "deny",
    "rules": [
        {"from": "gateway", "to": "orders", "action": "allow"},
        {"from": "gateway", "to": "orders", "methods": [DROP], "action": "deny"},
    ],
}
RATE_LIMIT = {"per_method": {CREATE: {"rate_per_s": 0.001, "burst": 1}}}


@dataclass
class Handled:
    """The method paths that reached the app or servicer, in order."""

    paths: list[str] = field(default_factory=list)


class CatchAll(grpc.GenericRpcHandler):
    """Serves every path it is handed, echoing the request's bytes: an app that would route any path."""

    def __init__(self, handled: Handled) -> None:
        self._handled = handled

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        path: str = handler_call_details.method
        handled = self._handled

        async def echo(request: bytes, context: Any) -> bytes:
            handled.paths.append(path)
            return request

        return grpc.unary_unary_rpc_method_handler(echo)


Face = Callable[[Path, Handled], contextlib.AbstractAsyncContextManager[int]]


@contextlib.asynccontextmanager
async def sdk_server(folder: Path, handled: Handled) -> AsyncIterator[int]:
    """An SDK server for orders (intentions and rate limits as above) whose servicer is a CatchAll."""
    tls = {"source": "files", **{part: str(folder / name) for part, name in _ORDERS_FILES.items()}}
    config = load_config(
        None,
        env={},
        overrides={"service": {"name": "orders"}, "tls": tls, "authz": AUTHZ, "rate_limit": RATE_LIMIT},
    )
    mesh = Mesh(config)
    await mesh.start()
    server = mesh.server()
    server.add_generic_rpc_handlers((CatchAll(handled),))
    source = mesh.tls_source
    assert source is not None
    port = server.add_secure_port("127.0.0.1:0", server_credentials(source))
    await server.start()
    try:
        yield port
    finally:
        await server.stop(None)
        await mesh.close()


@contextlib.asynccontextmanager
async def sidecar_inbound(folder: Path, handled: Handled) -> AsyncIterator[int]:
    """A sidecar's L7 inbound listener for orders (the same intentions and rate limits) before a CatchAll app."""
    config = load_config(
        None, env={}, overrides={"service": {"name": "orders"}, "authz": AUTHZ, "rate_limit": RATE_LIMIT}
    )
    parts = InboundParts.from_config(config, consul=lambda: None, clock=time.monotonic)
    parts = dataclasses.replace(parts, require_identity=True)  # as with tls on; the source is ours, not the config's
    source = FileSource(folder / "orders.crt", folder / "orders.key", folder / "ca.crt")
    await source.start()
    app = grpc.aio.server()
    app.add_generic_rpc_handlers((CatchAll(handled),))
    app_port = app.add_insecure_port("127.0.0.1:0")
    await app.start()
    forward = ForwardToApp(f"127.0.0.1:{app_port}")
    listener = InboundListener("127.0.0.1:0", source=source, parts=parts, forward=forward, clock=time.monotonic)
    try:
        yield await listener.start()
    finally:
        await listener.stop(None)
        await forward.close()
        await app.stop(None)
        await source.stop()


_ORDERS_FILES = {"cert": "orders.crt", "key": "orders.key", "ca": "ca.crt"}
FACES = {"sdk server": sdk_server, "sidecar inbound": sidecar_inbound}


@pytest.fixture
def ca(tmp_path: Path) -> Path:
    """The dev CA's folder; its ``ca.crt`` (the bundle every server and client trusts) also holds a second root, of
    trust domain other.example, written as ``foreign-ca.crt``/``.key`` too."""
    folder = tmp_path / "certs"
    init_ca(folder, TRUST_DOMAIN)
    for service in ("orders", "gateway"):
        issue(folder, service)
    foreign = crafted_certs.root_ca("another mesh's CA", FOREIGN_DOMAIN, path_length=None)
    (folder / "ca.crt").write_bytes((folder / "ca.crt").read_bytes() + foreign.pem)
    crafted_certs.write(folder, "foreign-ca", foreign.pem, crafted_certs.key_pem(foreign.key))
    return folder


@pytest.fixture(params=list(FACES))
async def served(request: pytest.FixtureRequest, ca: Path) -> AsyncIterator[tuple[int, Handled]]:
    """(port, what reached the handler) of orders behind one face."""
    handled = Handled()
    async with FACES[request.param](ca, handled) as port:
        yield port, handled


Caller = Callable[[str], Awaitable[bytes]]


@contextlib.asynccontextmanager
async def raw_caller(
    port: int, folder: Path, name: str = "gateway", chain: bytes | None = None
) -> AsyncIterator[Caller]:
    """Unary calls of raw bytes to any path, on a connection of its own presenting `name`'s certificate from
    `folder` (or `chain`, leaf first), trusting the CA there."""
    credentials = grpc.ssl_channel_credentials(
        root_certificates=(folder / "ca.crt").read_bytes(),
        private_key=(folder / f"{name}.key").read_bytes(),
        certificate_chain=chain or (folder / f"{name}.crt").read_bytes(),
    )
    options = (("grpc.use_local_subchannel_pool", 1), *channel_options("orders", "default", "dc1", TRUST_DOMAIN))
    async with grpc.aio.secure_channel(f"127.0.0.1:{port}", credentials, options=options) as channel:

        async def call(path: str) -> bytes:
            reply: bytes = await channel.unary_unary(path)(b"hello", timeout=WAIT_S)
            return reply

        yield call


async def refusal(call: Awaitable[Any]) -> tuple[grpc.StatusCode, str, str]:
    """The code, the ErrorInfo reason ('' without one) and the message of a call that must fail."""
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await call
    info = error_info(failed.value)
    return failed.value.code(), info.reason if info is not None else "", failed.value.details() or ""


# ------------------------------------------------------------------------------------------ method paths


@pytest.mark.parametrize("path", NOT_CANONICAL)
async def test_a_path_that_is_not_service_slash_method_is_refused_before_the_deny_and_never_reaches_the_app(
    served: tuple[int, Handled], ca: Path, path: str
) -> None:
    port, handled = served
    async with raw_caller(port, ca) as call:
        assert (await refusal(call(DROP)))[:2] == (grpc.StatusCode.PERMISSION_DENIED, ErrorReason.INTENTION_DENIED)
        code, reason, message = await refusal(call(path))
    assert (code, reason) == (grpc.StatusCode.UNIMPLEMENTED, ErrorReason.METHOD_PATH_INVALID)
    assert "/<package.Service>/<Method>" in message
    assert handled.paths == []


async def test_an_odd_path_to_a_rate_limited_method_spends_no_token_and_is_not_served(
    served: tuple[int, Handled], ca: Path
) -> None:
    port, handled = served
    async with raw_caller(port, ca) as call:
        for path in (f"{CREATE}/", CREATE[1:], f"/{CREATE}"):
            assert (await refusal(call(path)))[1] == ErrorReason.METHOD_PATH_INVALID
        assert await call(CREATE) == b"hello"  # the one token was still there
        assert (await refusal(call(f"{CREATE}/")))[1] == ErrorReason.METHOD_PATH_INVALID
        assert (await refusal(call(CREATE)))[1] == ErrorReason.RATE_LIMITED
    assert handled.paths == [CREATE]


async def test_a_large_client_stream_to_an_odd_path_reads_the_refusal_not_a_transport_error(
    served: tuple[int, Handled], ca: Path
) -> None:
    port, handled = served
    chunk = bytes(64 * 1024)

    async def upload() -> AsyncIterator[bytes]:  # under REFUSAL_READ_BYTES, which a refusal reads to the end
        for _ in range(56):  # 3.5 MiB in many writes: some are pending when a refusal that does not read ends it
            yield chunk

    credentials = grpc.ssl_channel_credentials(
        (ca / "ca.crt").read_bytes(), (ca / "gateway.key").read_bytes(), (ca / "gateway.crt").read_bytes()
    )
    options = (("grpc.use_local_subchannel_pool", 1), *channel_options("orders", "default", "dc1", TRUST_DOMAIN))
    async with grpc.aio.secure_channel(f"127.0.0.1:{port}", credentials, options=options) as channel:
        call = channel.stream_stream(f"{DROP}/")(upload(), timeout=WAIT_S)
        code, reason, _ = await refusal(_drain(call))
    assert (code, reason) == (grpc.StatusCode.UNIMPLEMENTED, ErrorReason.METHOD_PATH_INVALID)
    assert handled.paths == []


async def _drain(call: Any) -> None:
    async for _ in call:
        pass


async def test_the_outbound_listener_refuses_an_odd_path_from_the_app_before_routing_it() -> None:
    def upstream(name: str) -> Any:
        raise AssertionError(f"no upstream may be built for an odd path (asked for {name})")

    routes = Routes(by_port={}, by_service={"shop.Admin": "admin"})
    listener = OutboundListener(
        "127.0.0.1:0", routes=routes, upstream=upstream, is_idempotent=lambda *_: False, replay_limit_bytes=lambda _: 0
    )
    port = await listener.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            for path in NOT_CANONICAL:
                code, reason, _ = await refusal(channel.unary_unary(path)(b"hello", timeout=WAIT_S))
                assert (code, reason) == (grpc.StatusCode.UNIMPLEMENTED, ErrorReason.METHOD_PATH_INVALID), path
    finally:
        await listener.stop(None)
    assert listener.unrouted_calls == 0


def test_raw_methods_never_asks_its_listener_for_an_odd_path() -> None:
    asked: list[str] = []

    def make(path: str) -> Built:
        asked.append(path)
        return grpc.unary_unary_rpc_method_handler(lambda request, context: request), None, False

    methods = RawMethods(make)
    for path in [*NOT_CANONICAL, DROP]:
        methods.service(_Details(path))
    assert asked == [DROP]


@dataclass
class _Details:
    method: str
    invocation_metadata: tuple[tuple[str, str], ...] = ()


# ------------------------------------------------------------------------------------------ who the caller is


def craft(folder: Path, name: str, **names: Any) -> str:
    """A leaf `name` signed by the dev CA in `folder` with exactly the names given (see crafted_certs.leaf)."""
    crafted_certs.write(folder, name, *crafted_certs.leaf(Issuer.load(folder), **names))
    return name


NOT_ONE_URI_SAN = {
    "SPIFFE ID only in the common name": {"common_name": GATEWAY},
    "SPIFFE ID only in a DNS SAN": {"dns": (GATEWAY,)},
    "SPIFFE ID only in an e-mail SAN": {"emails": (GATEWAY,)},
    "two URI SANs": {"uris": (GATEWAY, GATEWAY.replace("gateway", "web"))},
}


@pytest.mark.parametrize("names", list(NOT_ONE_URI_SAN.values()), ids=list(NOT_ONE_URI_SAN))
async def test_a_certificate_without_exactly_one_uri_san_is_unauthenticated_and_never_served(
    served: tuple[int, Handled], ca: Path, names: dict[str, Any]
) -> None:
    port, handled = served
    async with raw_caller(port, ca, craft(ca, "crafted", **names)) as call:
        code, reason, message = await refusal(call(CREATE))
    assert (code, reason) == (grpc.StatusCode.UNAUTHENTICATED, ErrorReason.UNAUTHENTICATED)
    assert "exactly one" in message
    assert handled.paths == []


async def test_a_caller_of_another_trust_domain_is_unauthenticated_though_its_ca_is_in_the_bundle(
    served: tuple[int, Handled], ca: Path
) -> None:
    port, handled = served
    foreign = Issuer.load_named(ca, "foreign-ca")
    uri = f"spiffe://{FOREIGN_DOMAIN}/ns/default/dc/dc1/svc/gateway"
    crafted_certs.write(ca, "foreign-gateway", *crafted_certs.leaf(foreign, uris=(uri,)))
    async with raw_caller(port, ca, "foreign-gateway") as call:
        code, reason, message = await refusal(call(CREATE))
    assert (code, reason) == (grpc.StatusCode.UNAUTHENTICATED, ErrorReason.UNAUTHENTICATED)
    assert "tls.trusted_domains" in message
    assert handled.paths == []


@pytest.mark.parametrize(
    "uri",
    [GATEWAY.replace("/ns/default/", "/ns/sandbox/"), GATEWAY.replace("/ns/", "/ap/evil/ns/")],
    ids=["another namespace", "another partition"],
)
async def test_a_gateway_of_another_namespace_or_partition_is_not_the_gateway_the_intentions_allow(
    served: tuple[int, Handled], ca: Path, uri: str
) -> None:
    port, handled = served
    async with raw_caller(port, ca, craft(ca, "elsewhere", uris=(uri,))) as call:
        code, reason, message = await refusal(call(CREATE))
    assert (code, reason) == (grpc.StatusCode.PERMISSION_DENIED, ErrorReason.INTENTION_DENIED)
    assert "/gateway" in message  # the remedy names the source as sandbox/gateway or evil/default/gateway
    assert handled.paths == []
    async with raw_caller(port, ca) as call:  # the real gateway still is
        assert await call(CREATE) == b"hello"


async def test_a_chain_through_an_intermediate_under_a_root_with_path_length_zero_is_refused(
    served: tuple[int, Handled], ca: Path
) -> None:
    port, handled = served
    chain = intermediate_chain(ca)
    async with raw_caller(port, ca, "via-intermediate", chain=chain) as call:
        code, reason, message = await refusal(call(CREATE))
    assert (code, reason) == (grpc.StatusCode.UNAUTHENTICATED, ErrorReason.UNAUTHENTICATED)
    assert "pathLenConstraint allows 0" in message
    assert handled.paths == []


def intermediate_chain(folder: Path) -> bytes:
    """``via-intermediate``: gateway's identity in a leaf signed by an intermediate of the dev CA (whose
    pathLenConstraint is 0); returns its chain, leaf first."""
    middle = crafted_certs.intermediate(Issuer.load(folder))
    cert, key = crafted_certs.leaf(middle, uris=(GATEWAY,))
    crafted_certs.write(folder, "via-intermediate", cert, key)
    return cert + middle.pem


# ------------------------------------------------------------------------------------------ the L4 path


@contextlib.asynccontextmanager
async def l4_inbound(folder: Path, handled: Handled) -> AsyncIterator[int]:
    """A sidecar's L4 inbound listener for orders (intentions by identity only) before a CatchAll app."""
    authz = {"default": "deny", "rules": [{"from": "gateway", "to": "orders", "action": "allow"}]}
    config = load_config(None, env={}, overrides={"service": {"name": "orders"}, "authz": authz})
    parts = InboundParts.from_config(config, consul=lambda: None, clock=time.monotonic)
    parts = dataclasses.replace(parts, require_identity=True)  # as with tls on; the source is ours, not the config's
    source = FileSource(folder / "orders.crt", folder / "orders.key", folder / "ca.crt")
    await source.start()
    app = grpc.aio.server()
    app.add_generic_rpc_handlers((CatchAll(handled),))
    app_port = app.add_insecure_port("127.0.0.1:0")
    await app.start()
    listener = SpliceListener(
        f"127.0.0.1:{free_port()}",
        source=source,
        parts=parts,
        app_address=f"127.0.0.1:{app_port}",
        clock=time.monotonic,
    )
    try:
        yield await listener.start()
    finally:
        await listener.stop(None)
        await app.stop(None)
        await source.stop()


async def test_the_l4_path_refuses_the_same_impostors_as_the_l7_path(ca: Path) -> None:
    handled = Handled()
    foreign = Issuer.load_named(ca, "foreign-ca")
    crafted_certs.write(
        ca, "foreign-gateway", *crafted_certs.leaf(foreign, uris=(GATEWAY.replace(TRUST_DOMAIN, FOREIGN_DOMAIN),))
    )
    craft(ca, "sandbox-gateway", uris=(GATEWAY.replace("/ns/default/", "/ns/sandbox/"),))
    craft(ca, "evil-gateway", uris=(GATEWAY.replace("/ns/", "/ap/evil/ns/"),))
    craft(ca, "dns-gateway", dns=(GATEWAY,))
    chain = intermediate_chain(ca)
    async with l4_inbound(ca, handled) as port:
        async with raw_caller(port, ca) as call:
            assert await call(CREATE) == b"hello"
        expected = {
            "foreign-gateway": ErrorReason.UNAUTHENTICATED,
            "dns-gateway": ErrorReason.UNAUTHENTICATED,
            "sandbox-gateway": ErrorReason.INTENTION_DENIED,
            "evil-gateway": ErrorReason.INTENTION_DENIED,
        }
        for name, reason in expected.items():
            async with raw_caller(port, ca, name) as call:
                assert (await refusal(call(CREATE)))[1] == reason, name
        async with raw_caller(port, ca, "via-intermediate", chain=chain) as call:
            code, _, _ = await refusal(call(CREATE))  # OpenSSL fails the handshake: the connection is closed
        assert code == grpc.StatusCode.UNAVAILABLE
    assert handled.paths == [CREATE]


# ------------------------------------------------------------------------------------------ who the server is


@contextlib.asynccontextmanager
async def sdk_client(procs: Processes, folder: Path, agent: Agent) -> AsyncIterator[Callable[[], Awaitable[bytes]]]:
    """Calls to ledger through an SDK channel presenting gateway's leaf."""
    overrides = {"tls": {"source": "files", **_files(folder, "gateway")}}
    async with Mesh(load_config(None, env={"CONSUL_HTTP_ADDR": agent.url}, overrides=overrides)) as mesh:
        call = mesh.channel("ledger").unary_unary(CREATE)
        yield lambda: call(b"hello", timeout=WAIT_S)


@contextlib.asynccontextmanager
async def sidecar_client(procs: Processes, folder: Path, agent: Agent) -> AsyncIterator[Callable[[], Awaitable[bytes]]]:
    """Calls to ledger through an outbound-only sidecar process presenting gateway's leaf."""
    config = {
        "service": {"name": "gateway"},
        "consul": {"address": agent.url},
        "tls": {"source": "files", **_files(folder, "gateway")},
        "sidecar": {"routes": {"shop.Orders": "ledger"}},
    }
    sidecar = await asyncio.to_thread(start_sidecar, procs, folder, "gateway", config)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{sidecar.outbound_port}") as channel:
        call = channel.unary_unary(CREATE)
        yield lambda: call(b"hello", timeout=WAIT_S)


@pytest.mark.parametrize("client", [sdk_client, sidecar_client], ids=["sdk channel", "sidecar outbound"])
async def test_a_client_calling_ledger_refuses_a_server_that_presents_the_colliding_led_ger_leaf(
    tmp_path: Path, procs: Processes, agent: Agent, client: Any
) -> None:
    """URI-only leaves, as a real Consul issues: led-ger's common name is ledger's, so grpc's own check passes."""
    folder = tmp_path / "certs"
    init_ca(folder, TRUST_DOMAIN)
    dev_ca = Issuer.load(folder)
    for service in ("gateway", "led-ger", "ledger"):
        cert, key = crafted_certs.leaf(
            dev_ca,
            common_name=consul_service_cn(service, "default", TRUST_DOMAIN),
            uris=(f"spiffe://{TRUST_DOMAIN}/ns/default/dc/dc1/svc/{service}",),
        )
        crafted_certs.write(folder, service, cert, key)
    assert consul_service_cn("led-ger", "default", TRUST_DOMAIN) == consul_service_cn("ledger", "default", TRUST_DOMAIN)
    impostor, real = Handled(), Handled()
    async with registered_server(agent, folder, "led-ger", impostor) as port, client(procs, folder, agent) as call:
        code, _, message = await refusal(call())
        assert code == grpc.StatusCode.UNAVAILABLE
        assert f"127.0.0.1:{port}: it presented spiffe://{TRUST_DOMAIN}/ns/default/dc/dc1/svc/led-ger" in message
        assert "not the identity of ledger" in message
        async with registered_server(agent, folder, "ledger", real):
            await eventually_served(call)
    assert impostor.paths == []
    assert real.paths


def _files(folder: Path, service: str) -> dict[str, str]:
    return {"cert": str(folder / f"{service}.crt"), "key": str(folder / f"{service}.key"), "ca": str(folder / "ca.crt")}


@contextlib.asynccontextmanager
async def registered_server(agent: Agent, folder: Path, presents: str, handled: Handled) -> AsyncIterator[int]:
    """A CatchAll server presenting `presents`' leaf, registered in `agent` as ledger (passing) while the block runs."""
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((CatchAll(handled),))
    credentials = grpc.ssl_server_credentials(
        [((folder / f"{presents}.key").read_bytes(), (folder / f"{presents}.crt").read_bytes())],
        root_certificates=(folder / "ca.crt").read_bytes(),
        require_client_auth=True,
    )
    port = server.add_secure_port("127.0.0.1:0", credentials)
    await server.start()
    client = agent.client()
    service_id = f"ledger-{port}"
    client.agent.service.register("ledger", service_id=service_id, address="127.0.0.1", port=port)
    try:
        yield port
    finally:
        client.agent.service.deregister(service_id)
        await server.stop(None)


async def eventually_served(call: Callable[[], Awaitable[bytes]]) -> None:
    """Call until one is served (discovery and the identity check take a moment)."""
    failures: list[str] = []

    async def served() -> bool:
        try:
            return await call() == b"hello"
        except grpc.aio.AioRpcError as error:
            failures.append(error.details() or "")
            return False

    await eventually(served, "a call to be served")


async def test_an_endpoint_not_up_yet_is_held_back_and_used_once_it_proves_its_identity(tmp_path: Path) -> None:
    folder = tmp_path / "certs"
    init_ca(folder, TRUST_DOMAIN)
    dev_ca = Issuer.load(folder)
    for service in ("gateway", "ledger"):
        uri = f"spiffe://{TRUST_DOMAIN}/ns/default/dc/dc1/svc/{service}"
        crafted_certs.write(folder, service, *crafted_certs.leaf(dev_ca, uris=(uri,)))
    source = FileSource(folder / "gateway.crt", folder / "gateway.key", folder / "ca.crt")
    await source.start()
    delivered: list[EndpointSet] = []
    expected = SpiffeId(TRUST_DOMAIN, "default", "dc1", "ledger")
    verified = VerifiedEndpoints(lambda: expected, source, delivered.append)
    port = free_port()
    endpoint = Endpoint("127.0.0.1", port)
    try:
        verified.update(EndpointSet([endpoint]))
        await eventually(lambda: bool(delivered), "a first delivery")
        assert endpoint not in delivered[-1]
        assert "could not be reached" in verified.refused[endpoint]
        async with registered_at(folder, "ledger", port):
            await eventually(lambda: endpoint in delivered[-1], "the endpoint to be delivered once it is up")
        assert endpoint not in verified.refused
    finally:
        await verified.close()
        await source.stop()


@contextlib.asynccontextmanager
async def registered_at(folder: Path, presents: str, port: int) -> AsyncIterator[None]:
    """A server presenting `presents`' leaf on `port` while the block runs."""
    server = grpc.aio.server()
    credentials = grpc.ssl_server_credentials(
        [((folder / f"{presents}.key").read_bytes(), (folder / f"{presents}.crt").read_bytes())],
        root_certificates=(folder / "ca.crt").read_bytes(),
        require_client_auth=True,
    )
    server.add_secure_port(f"127.0.0.1:{port}", credentials)
    await server.start()
    try:
        yield
    finally:
        await server.stop(None)
