"""The sidecar's inbound side, for real on 127.0.0.1: clients with mesh certificates call a plain grpcio app (no
meshlet inside) through an InboundListener and ForwardToApp, and see what the app answered, whatever the RPC
kind: messages, metadata both ways, trailers, errors with their details, deadlines and cancellation. Callers
the mesh refuses (no certificate, another CA, an intention denying) never reach the app."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from meshlet.errors import CannotListen, ErrorReason, error_info
from meshlet.inbound import InboundParts
from meshlet.security.certs import channel_options
from meshlet.security.dev_ca import init_ca, issue
from meshlet.security.intentions import Intention, Intentions, IntentionsAuthorizer
from meshlet.security.sources import FileSource
from meshlet_api.echo.v1 import echo_pb2, echo_pb2_grpc
from meshlet_sidecar.forward import ForwardToApp
from meshlet_sidecar.inbound_listener import InboundListener
from tests.support import echo_calls
from tests.support.echo_calls import ECHO_METADATA, EVERY_KIND, WAIT_S, Invoke, request, requests
from tests.support.plain_app import MAX_MESSAGE_BYTES, PlainEchoApp, plain_app
from tests.support.processes import eventually, free_port

TRUST_DOMAIN = "meshlet.test"
MESH = InboundParts(service="orders", require_identity=True)


def only_gateway() -> InboundParts:
    """Inbound parts whose intentions let gateway, and nobody else, call orders."""
    rules = Intentions([Intention("gateway", "orders", ("*",), "allow")], default="deny")
    return InboundParts(service="orders", require_identity=True, authorizer=IntentionsAuthorizer(rules))


@pytest.fixture
def ca(tmp_path: Path) -> Path:
    folder = tmp_path / "certs"
    init_ca(folder, TRUST_DOMAIN)
    for service in ("orders", "gateway", "billing"):
        issue(folder, service)
    return folder


@pytest.fixture
async def source(ca: Path) -> AsyncIterator[FileSource]:
    files = FileSource(ca / "orders.crt", ca / "orders.key", ca / "ca.crt")
    await files.start()
    yield files
    await files.stop()


@pytest.fixture
async def app() -> AsyncIterator[PlainEchoApp]:
    async with plain_app() as served:
        yield served


@contextlib.asynccontextmanager
async def sidecar(source: FileSource, app_address: str, parts: InboundParts = MESH) -> AsyncIterator[InboundListener]:
    """An inbound listener on a free port, forwarding to the app at `app_address`."""
    forward = ForwardToApp(app_address)
    listener = InboundListener("127.0.0.1:0", source=source, parts=parts, forward=forward, clock=time.monotonic)
    await listener.start()
    try:
        yield listener
    finally:
        await listener.stop(None)
        await forward.close()


@pytest.fixture
async def inbound(source: FileSource, app: PlainEchoApp) -> AsyncIterator[InboundListener]:
    async with sidecar(source, f"127.0.0.1:{app.port}") as listener:
        yield listener


def credentials(folder: Path, service: str, trusted: Path | None = None) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=(trusted or folder / "ca.crt").read_bytes(),
        private_key=(folder / f"{service}.key").read_bytes(),
        certificate_chain=(folder / f"{service}.crt").read_bytes(),
    )


@contextlib.asynccontextmanager
async def client(port: int, creds: grpc.ChannelCredentials | None) -> AsyncIterator[echo_pb2_grpc.EchoStub]:
    """A stub on a connection of its own (mTLS with `creds`, or plaintext when None)."""
    options = (
        *channel_options("orders", "default", "dc1", TRUST_DOMAIN),
        ("grpc.use_local_subchannel_pool", 1),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    )
    target = f"127.0.0.1:{port}"
    channel = (
        grpc.aio.secure_channel(target, creds, options=options)
        if creds is not None
        else grpc.aio.insecure_channel(target, options=options)
    )
    async with channel:
        yield echo_pb2_grpc.EchoStub(channel)


@pytest.fixture
async def gateway(ca: Path, inbound: InboundListener) -> AsyncIterator[echo_pb2_grpc.EchoStub]:
    async with client(inbound.port, credentials(ca, "gateway")) as stub:
        yield stub


# ------------------------------------------------------------------------------------------ four kinds


async def test_unary_call_reaches_the_app_and_its_metadata_comes_back(
    gateway: echo_pb2_grpc.EchoStub, app: PlainEchoApp
) -> None:
    await echo_calls.assert_unary_relayed(gateway, app)


async def test_server_stream_relays_every_message_and_the_metadata(gateway: echo_pb2_grpc.EchoStub) -> None:
    await echo_calls.assert_server_stream_relayed(gateway)


async def test_client_stream_delivers_every_request_to_the_app(gateway: echo_pb2_grpc.EchoStub) -> None:
    await echo_calls.assert_client_stream_relayed(gateway)


async def test_bidi_stream_answers_each_request_as_it_arrives(gateway: echo_pb2_grpc.EchoStub) -> None:
    await echo_calls.assert_bidi_stream_relayed(gateway)


async def test_large_messages_pass_whole(gateway: echo_pb2_grpc.EchoStub) -> None:
    payload = bytes(range(256)) * 20_000  # 5 MB: past grpc's default 4 MB receive limit
    reply = await gateway.Echo(echo_pb2.EchoRequest(message="big", payload=payload), timeout=WAIT_S)
    assert reply.payload == payload


# ------------------------------------------------------------------------------------------ errors


@pytest.mark.parametrize("invoke", EVERY_KIND.values(), ids=EVERY_KIND.keys())
async def test_app_error_reaches_the_caller_with_its_status_trailers_and_rich_details(
    gateway: echo_pb2_grpc.EchoStub, invoke: Invoke
) -> None:
    await echo_calls.assert_app_error_relayed(invoke, gateway)


async def test_initial_metadata_sent_before_an_error_still_reaches_the_caller(
    gateway: echo_pb2_grpc.EchoStub,
) -> None:
    call = gateway.ServerStream(request("x"), metadata=(*ECHO_METADATA, ("x-echo-fail", "ABORTED")), timeout=WAIT_S)
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await call.read()
    assert failed.value.code() == grpc.StatusCode.ABORTED
    assert dict(await call.initial_metadata())["initial-x-tenant"] == "acme"


async def test_app_that_is_down_is_unavailable_naming_its_address(ca: Path, source: FileSource) -> None:
    nobody = f"127.0.0.1:{free_port()}"
    async with sidecar(source, nobody) as listener, client(listener.port, credentials(ca, "gateway")) as stub:
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await stub.Echo(request("anyone?"), timeout=WAIT_S)
    error = failed.value
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert nobody in (error.details() or "")
    assert "check that the app is running" in (error.details() or "")
    info = error_info(error)
    assert info is not None
    assert (info.reason, info.metadata["app"]) == (ErrorReason.NO_HEALTHY_ENDPOINT, nobody)
    assert info.metadata["method"] == "/meshlet_api.echo.v1.Echo/Echo"  # this very call never reached the app


async def test_app_that_comes_back_is_reached_again(ca: Path, source: FileSource) -> None:
    port = free_port()
    async with (
        sidecar(source, f"127.0.0.1:{port}") as listener,
        client(listener.port, credentials(ca, "gateway")) as stub,
    ):
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.Echo(request("early"), timeout=WAIT_S)
        async with plain_app(port):
            answered: list[str] = []

            async def try_once() -> None:
                with contextlib.suppress(grpc.aio.AioRpcError):
                    answered.append((await stub.Echo(request("back"), timeout=WAIT_S)).message)

            async def until_answered() -> None:
                while not answered:
                    await try_once()
                    await asyncio.sleep(0.05)

            await asyncio.wait_for(until_answered(), WAIT_S)
    assert answered == ["back"]


async def test_apps_ending_calls_while_requests_still_flow_keep_their_own_status(
    gateway: echo_pb2_grpc.EchoStub,
) -> None:
    """grpc.aio can turn such a status into INTERNAL "Internal error from Core" (forward.CORE_WRITE_RACE)."""

    async def fails_early() -> grpc.StatusCode:
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await gateway.ClientStream(requests(*"abcdef"), metadata=(("x-echo-fail", "ABORTED"),), timeout=WAIT_S)
        code: grpc.StatusCode = failed.value.code()
        return code

    async def ends_early() -> grpc.StatusCode:
        call = gateway.BidiStream(requests(*"abcdefgh"), metadata=(("x-echo-end-after", "2"),), timeout=WAIT_S)
        assert [reply.message async for reply in call] == ["a", "b"]
        code: grpc.StatusCode = await call.code()
        return code

    codes = await asyncio.gather(*(check() for _ in range(100) for check in (fails_early, ends_early)))
    assert collections.Counter(codes) == {grpc.StatusCode.ABORTED: 100, grpc.StatusCode.OK: 100}


# ------------------------------------------------------------------------------------------ deadlines and cancellation


async def test_app_sees_a_deadline_no_longer_than_the_callers(
    gateway: echo_pb2_grpc.EchoStub, app: PlainEchoApp
) -> None:
    await gateway.Echo(request("when?"), timeout=5.0)
    remaining = app.seen[-1].time_remaining
    assert remaining is not None
    assert 0 < remaining <= 5.0


async def test_call_without_a_deadline_reaches_the_app_without_one(
    gateway: echo_pb2_grpc.EchoStub, app: PlainEchoApp
) -> None:
    await gateway.Echo(request("whenever"))
    assert app.seen[-1].time_remaining is None


async def test_caller_deadline_expiring_cancels_the_apps_call(
    gateway: echo_pb2_grpc.EchoStub, app: PlainEchoApp
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await gateway.Echo(request("slow"), metadata=(("x-echo-hang", "1"),), timeout=0.5)
    assert failed.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    await asyncio.wait_for(app.cancellation.wait(), WAIT_S)
    assert app.cancelled == ["Echo"]


async def test_caller_cancelling_a_stream_cancels_the_apps_call(
    gateway: echo_pb2_grpc.EchoStub, app: PlainEchoApp, inbound: InboundListener
) -> None:
    call = gateway.BidiStream(metadata=(("x-echo-hang", "1"),))
    await call.write(request("first"))
    await eventually(lambda: bool(app.seen), "the app to receive the call")
    call.cancel()
    await asyncio.wait_for(app.cancellation.wait(), WAIT_S)
    assert app.cancelled == ["BidiStream"]
    await eventually(lambda: inbound.in_flight == 0, "the listener to let go of the call")


async def test_app_ending_a_stream_early_ends_the_callers(gateway: echo_pb2_grpc.EchoStub) -> None:
    call = gateway.BidiStream(metadata=(("x-echo-end-after", "1"),), timeout=WAIT_S)
    await call.write(request("only one"))
    assert (await call.read()).message == "only one"
    assert await call.read() is grpc.aio.EOF  # the caller never half-closed: the app's OK ended the call
    assert await call.code() == grpc.StatusCode.OK


# ------------------------------------------------------------------------------------------ who gets in


async def test_caller_an_intention_denies_gets_permission_denied_and_never_reaches_the_app(
    ca: Path, source: FileSource, app: PlainEchoApp
) -> None:
    async with sidecar(source, f"127.0.0.1:{app.port}", only_gateway()) as listener:
        async with client(listener.port, credentials(ca, "gateway")) as allowed:
            assert (await allowed.Echo(request("let me in"), timeout=WAIT_S)).message == "let me in"
        async with client(listener.port, credentials(ca, "billing")) as denied:
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await denied.ClientStream(requests("a", "b"), timeout=WAIT_S)
    error = failed.value
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "'billing'" in (error.details() or "")
    info = error_info(error)
    assert info is not None
    assert info.reason == ErrorReason.INTENTION_DENIED
    assert [seen.method for seen in app.seen] == ["Echo"]


async def test_headers_that_claim_a_client_identity_never_reach_the_app(
    gateway: echo_pb2_grpc.EchoStub, app: PlainEchoApp
) -> None:
    forged = [
        ("x-forwarded-client-cert", "By=spiffe://meshlet.test/ns/default/dc/dc1/svc/orders;URI=spiffe://x/svc/admin"),
        ("client-cert", ":MIIB:"),
        ("x-ssl-client-verify", "SUCCESS"),
        ("x-ssl-client-s-dn", "CN=admin"),
        ("x-spiffe-id", "spiffe://meshlet.test/ns/default/dc/dc1/svc/admin"),
    ]
    await gateway.Echo(request("who am I"), metadata=[*forged, ("x-kept", "yes")], timeout=WAIT_S)
    (seen,) = app.seen
    assert seen.metadata["x-kept"] == "yes"
    assert not {key for key, _ in forged} & set(seen.metadata)


async def test_plaintext_client_is_refused(inbound: InboundListener, app: PlainEchoApp) -> None:
    async with client(inbound.port, None) as plaintext:
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await plaintext.Echo(request("hi"), timeout=WAIT_S)
    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
    assert app.seen == []


async def test_client_with_a_certificate_from_another_ca_is_refused(
    tmp_path: Path, ca: Path, inbound: InboundListener, app: PlainEchoApp
) -> None:
    other = tmp_path / "other"
    init_ca(other, TRUST_DOMAIN)
    issue(other, "gateway")
    async with client(inbound.port, credentials(other, "gateway", trusted=ca / "ca.crt")) as foreign:
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await foreign.Echo(request("hi"), timeout=WAIT_S)
    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
    assert app.seen == []


# ------------------------------------------------------------------------------------------ robustness and drain


async def test_client_vanishing_mid_stream_leaves_the_listener_serving(
    ca: Path, inbound: InboundListener, app: PlainEchoApp, gateway: echo_pb2_grpc.EchoStub
) -> None:
    async with client(inbound.port, credentials(ca, "gateway")) as leaving:
        call = leaving.BidiStream(timeout=WAIT_S)
        await call.write(request("one"))
        assert (await call.read()).message == "one"
        # the channel closes under the open stream: no half-close, no status read
    await eventually(lambda: inbound.in_flight == 0, "the abandoned call to end")
    assert (await gateway.Echo(request("still there?"), timeout=WAIT_S)).message == "still there?"


async def test_garbage_from_a_client_leaves_the_listener_serving(
    ca: Path, inbound: InboundListener, gateway: echo_pb2_grpc.EchoStub
) -> None:
    # Not TLS at all.
    _, writer = await asyncio.open_connection("127.0.0.1", inbound.port)
    writer.write(b"GET / HTTP/1.1\r\nHost: nobody\r\n\r\n" + bytes(range(256)) * 16)
    await writer.drain()
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()
    # A verified client speaking nonsense after the handshake: a bad HTTP/2 preface, then hangs up.
    context = ssl.create_default_context(cafile=ca / "ca.crt")
    context.load_cert_chain(ca / "gateway.crt", ca / "gateway.key")
    context.check_hostname = False
    context.set_alpn_protocols(["h2"])
    _, writer = await asyncio.open_connection("127.0.0.1", inbound.port, ssl=context)
    writer.write(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x04\x08\x00\x00\x00\x00\x01garbage" * 64)
    await writer.drain()
    writer.close()
    with contextlib.suppress(ConnectionError, ssl.SSLError):
        await writer.wait_closed()
    assert (await gateway.Echo(request("still there?"), timeout=WAIT_S)).message == "still there?"


async def test_stop_drains_calls_in_flight_and_refuses_new_ones(
    ca: Path, inbound: InboundListener, app: PlainEchoApp, gateway: echo_pb2_grpc.EchoStub
) -> None:
    in_flight = asyncio.ensure_future(gateway.Echo(request("finishing"), metadata=(("x-echo-hold", "1"),)))
    await eventually(lambda: bool(app.seen), "the app to receive the call")
    assert inbound.in_flight == 1
    stopping = asyncio.ensure_future(inbound.stop(WAIT_S))
    await eventually(lambda: inbound.in_flight == 1 and not stopping.done(), "the drain to begin")
    async with client(inbound.port, credentials(ca, "gateway")) as newcomer:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await newcomer.Echo(request("too late"), timeout=WAIT_S)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    app.release.set()
    assert (await in_flight).message == "finishing"
    await stopping
    assert inbound.in_flight == 0


async def test_second_listener_on_a_taken_port_fails_to_start_naming_it(
    source: FileSource, inbound: InboundListener
) -> None:
    taken = f"127.0.0.1:{inbound.port}"
    forward = ForwardToApp("127.0.0.1:1")
    second = InboundListener(taken, source=source, parts=MESH, forward=forward, clock=time.monotonic)
    with pytest.raises(CannotListen, match=rf"{taken} \(Address already in use"):
        await second.start()
    await forward.close()


async def test_repr_names_the_address_security_app_and_load(source: FileSource) -> None:
    listener = InboundListener(
        "0.0.0.0:15006", source=source, parts=MESH, forward=ForwardToApp("127.0.0.1:50051"), clock=time.monotonic
    )
    assert repr(listener) == "<InboundListener 0.0.0.0:15006 mTLS -> app 127.0.0.1:50051: 0 in flight>"
