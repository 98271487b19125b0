"""Why a connection failed its handshake, judged from what the endpoint does when meshlet connects to it itself
(real loopback servers, certificates from a throwaway dev CA), never from grpc's words."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import grpc
import pytest

from meshlet.endpoints import Endpoint
from meshlet.errors import ErrorReason, error_info
from meshlet.security.dev_ca import init_ca, issue
from meshlet.security.handshake_failures import (
    PROBE_EVERY_S,
    Expectation,
    Handshake,
    HandshakeFailures,
    Presented,
    Probed,
    judge,
    probe,
)
from meshlet.transport.channels import NotConnected

DOMAIN = "11111111-2222-3333-4444-555555555555.consul"
ORDERS = f"spiffe://{DOMAIN}/ns/default/dc/dc1/svc/orders"
OTHER = f"spiffe://{DOMAIN}/ns/default/dc/dc1/svc/other"
SECURE = Expectation("orders", ORDERS, DOMAIN, f"spiffe://{DOMAIN}/ns/default/dc/dc1/svc/web", b"(bundle)")
PLAINTEXT = Expectation("orders")
NOT_CONNECTED = NotConnected(grpc.StatusCode.UNAVAILABLE, "could not connect to 127.0.0.1:1 (TRANSIENT_FAILURE)")


def shown(identity: str) -> Presented:
    return Presented(identity, "CN=meshlet dev CA")


@pytest.mark.parametrize(
    ("expect", "probed", "judged"),
    [
        (SECURE, None, None),  # no TCP connection, or nothing said: not a TLS failure
        (SECURE, Probed(speaks_tls=False), Handshake.SERVER_NOT_TLS),
        (SECURE, Probed(True, shown(ORDERS), "unable to get local issuer certificate"), Handshake.SERVER_NOT_TRUSTED),
        (SECURE, Probed(True, shown(OTHER), "unable to get local issuer certificate"), Handshake.SERVER_NOT_TRUSTED),
        (SECURE, Probed(True, shown(OTHER)), Handshake.WRONG_SERVER),
        (SECURE, Probed(True, shown(ORDERS)), Handshake.CLIENT_REFUSED),
        (SECURE, Probed(True, None), None),  # a certificate it could not read: nothing proven
        (PLAINTEXT, None, None),
        (PLAINTEXT, Probed(speaks_tls=False), None),  # plaintext both sides: the failure is not TLS's
        (PLAINTEXT, Probed(True, shown(ORDERS)), Handshake.PLAINTEXT_TO_TLS),
    ],
)
def test_what_the_endpoint_did_names_the_handshake_failure(
    expect: Expectation, probed: Probed | None, judged: Handshake | None
) -> None:
    assert judge(expect, probed) is judged


# ------------------------------------------------------------------------------------------ probing real servers


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("ca")
    init_ca(folder, DOMAIN)
    issue(folder, "orders")
    return folder


Serve = Callable[[Path, str], Awaitable[Endpoint]]


@pytest.fixture
async def tls_server() -> AsyncIterator[Serve]:
    """``await tls_server(ca_folder, service)``: a loopback TLS server presenting `service`'s certificate."""
    servers: list[asyncio.Server] = []

    async def serve(folder: Path, service: str) -> Endpoint:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(folder / f"{service}.crt", folder / f"{service}.key")

        async def answer(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.close()

        server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=context)
        servers.append(server)
        return Endpoint("127.0.0.1", server.sockets[0].getsockname()[1])

    yield serve
    for server in servers:
        server.close()
        await server.wait_closed()


@pytest.fixture
def alerting_server(ca: Path) -> Iterator[Endpoint]:
    """A TLS server that answers every ClientHello with an alert: TLS 1.2 with an RSA key exchange only, and an
    EC key, so no cipher is shared (a blocking server: OpenSSL writes its alert before the socket closes)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(ca / "orders.crt", ca / "orders.key")
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers("AES128-GCM-SHA256")
    listener = socket.create_server(("127.0.0.1", 0))

    def refuse_each() -> None:
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:
                return  # closed: the test is over
            with connection, contextlib.suppress(ssl.SSLError, OSError):
                context.wrap_socket(connection, server_side=True)

    thread = threading.Thread(target=refuse_each, daemon=True)
    thread.start()
    yield Endpoint("127.0.0.1", listener.getsockname()[1])
    listener.shutdown(socket.SHUT_RDWR)
    listener.close()
    thread.join()


@pytest.fixture
async def plaintext_grpc_server() -> AsyncIterator[Endpoint]:
    server = grpc.aio.server()
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield Endpoint("127.0.0.1", port)
    await server.stop(None)


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_an_endpoint_that_refuses_tcp_says_nothing() -> None:
    assert await probe(Endpoint("127.0.0.1", unused_port()), None, 1.0) is None


async def test_a_plaintext_grpc_port_does_not_speak_tls(plaintext_grpc_server: Endpoint) -> None:
    assert await probe(plaintext_grpc_server, None, 1.0) == Probed(speaks_tls=False)


async def test_a_tls_server_that_refuses_our_handshake_with_an_alert_says_nothing(alerting_server: Endpoint) -> None:
    """An alert is TLS: nothing is proven, least of all that the server does not speak TLS."""
    assert await probe(alerting_server, None, 1.0) is None


async def test_a_tls_server_shows_its_identity_and_our_bundle_verifies_it(ca: Path, tls_server: Serve) -> None:
    endpoint = await tls_server(ca, "orders")

    probed = await probe(endpoint, (ca / "ca.crt").read_bytes(), 1.0)

    assert probed is not None
    assert probed.presented is not None
    assert (probed.speaks_tls, probed.presented.identity, probed.untrusted) == (True, ORDERS, None)


async def test_a_certificate_from_a_ca_outside_our_bundle_is_not_trusted(
    ca: Path, tls_server: Serve, tmp_path: Path
) -> None:
    init_ca(tmp_path, DOMAIN)  # another CA, same trust domain
    endpoint = await tls_server(ca, "orders")

    probed = await probe(endpoint, (tmp_path / "ca.crt").read_bytes(), 1.0)

    assert probed is not None
    assert probed.presented is not None
    assert probed.presented.identity == ORDERS
    assert probed.untrusted == "unable to get local issuer certificate"


# ------------------------------------------------------------------------------------------ explaining


class CountedProbe:
    """The real probe, counted."""

    def __init__(self) -> None:
        self.probed: list[Endpoint] = []

    async def __call__(self, endpoint: Endpoint, bundle: bytes | None, timeout_s: float) -> Probed | None:
        self.probed.append(endpoint)
        return await probe(endpoint, bundle, timeout_s)


async def test_an_attempt_that_could_not_connect_to_a_tls_port_as_plaintext_is_told_to_turn_tls_on(
    ca: Path, tls_server: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    endpoint = await tls_server(ca, "orders")
    failures = HandshakeFailures(lambda: PLAINTEXT)

    explained = await failures.explain(NOT_CONNECTED, endpoint, 5.0)

    assert explained is not None
    assert explained.code() is grpc.StatusCode.UNAVAILABLE
    info = error_info(explained)
    assert info is not None
    assert info.reason == ErrorReason.TLS_HANDSHAKE_FAILED
    assert dict(info.metadata) == {
        "upstream": "orders",
        "peer": str(endpoint),
        "failure": "plaintext_client",
        "presented_identity": ORDERS,
        "presented_trust_domain": DOMAIN,
    }
    assert "set tls.source to consul or files" in (explained.details() or "")
    assert [record.getMessage() for record in caplog.records] == [explained.details()]


async def test_an_endpoint_that_refuses_tcp_is_left_not_connected() -> None:
    failures = HandshakeFailures(lambda: SECURE)

    assert await failures.explain(NOT_CONNECTED, Endpoint("127.0.0.1", unused_port()), 5.0) is None


async def test_a_failing_endpoint_is_probed_once_every_few_seconds_and_logged_as_often(
    ca: Path, tls_server: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    endpoint = await tls_server(ca, "orders")
    now = [100.0]
    counted = CountedProbe()
    failures = HandshakeFailures(lambda: PLAINTEXT, probe=counted, clock=lambda: now[0])

    together = await asyncio.gather(*(failures.explain(NOT_CONNECTED, endpoint, 5.0) for _ in range(5)))
    later = await failures.explain(NOT_CONNECTED, endpoint, 5.0)
    now[0] += PROBE_EVERY_S
    after_a_while = await failures.explain(NOT_CONNECTED, endpoint, 5.0)

    assert all(explained is not None for explained in [*together, later, after_a_while])
    assert counted.probed == [endpoint, endpoint]
    assert len(caplog.records) == 2


async def test_a_deadline_passed_while_connecting_is_not_probed() -> None:
    counted = CountedProbe()
    failures = HandshakeFailures(lambda: SECURE, probe=counted)
    late = NotConnected(grpc.StatusCode.DEADLINE_EXCEEDED, "the deadline passed while connecting")

    assert await failures.explain(late, Endpoint("127.0.0.1", 1), 5.0) is None
    assert counted.probed == []
