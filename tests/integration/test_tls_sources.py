"""Real mTLS handshakes between a grpc.aio server and clients on 127.0.0.1, with certificates from the dev CA
(files) and from the dev agent's Connect CA: who gets in, who is refused, and rotation without a restart."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import ssl
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from meshlet.config import load_config
from meshlet.discovery.consul_client import consul_factory
from meshlet.errors import ConfigError
from meshlet.security.certs import (
    CertificateSource,
    TlsConfigError,
    TlsMaterial,
    channel_credentials,
    channel_options,
    colon_hex,
    consul_service_cn,
    peer_spiffe_id,
    server_credentials,
)
from meshlet.security.dev_ca import init_ca, issue
from meshlet.security.identity import SpiffeId
from meshlet.security.sources import ConsulConnectSource, FileSource, make_source
from tests.support.agents import start_dev_agent
from tests.support.processes import Processes, free_port

TRUST_DOMAIN = "meshlet.test"
WHO = "/meshlet.test.Who/AmI"


async def _who_am_i(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
    return (peer_spiffe_id(context.auth_context()) or "anonymous").encode()


@contextlib.asynccontextmanager
async def mtls_server(source: CertificateSource) -> AsyncIterator[int]:
    """A grpc.aio server answering WHO with the caller's SPIFFE ID, on a free loopback port."""
    server = grpc.aio.server()
    handlers = {"AmI": grpc.unary_unary_rpc_method_handler(_who_am_i)}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("meshlet.test.Who", handlers),))
    port = server.add_secure_port("127.0.0.1:0", server_credentials(source))
    await server.start()
    try:
        yield port
    finally:
        await server.stop(None)


async def ask(port: int, credentials: grpc.ChannelCredentials, options: Sequence[tuple[str, Any]] = ()) -> str:
    """One call on a new connection (a channel of its own, not sharing grpc's global subchannel pool)."""
    options = (*options, ("grpc.use_local_subchannel_pool", 1))
    async with grpc.aio.secure_channel(f"127.0.0.1:{port}", credentials, options=options) as channel:
        reply: bytes = await channel.unary_unary(WHO)(b"", timeout=10)
    return reply.decode()


def expecting(service: str) -> tuple[tuple[str, str], ...]:
    return channel_options(service, "default", "dc1", TRUST_DOMAIN)


@pytest.fixture
def ca(tmp_path: Path) -> Path:
    folder = tmp_path / "certs"
    init_ca(folder, TRUST_DOMAIN)
    for service in ("orders", "gateway", "payments"):
        issue(folder, service)
    return folder


def files(folder: Path, service: str, ca_file: str = "ca.crt") -> FileSource:
    return FileSource(folder / f"{service}.crt", folder / f"{service}.key", folder / ca_file, poll_interval_s=0.02)


def read_material(folder: Path, service: str) -> TlsMaterial:
    return TlsMaterial.from_pem(
        *((folder / name).read_bytes() for name in (f"{service}.crt", f"{service}.key", "ca.crt"))
    )


@contextlib.asynccontextmanager
async def started(source: CertificateSource) -> AsyncIterator[CertificateSource]:
    await source.start()
    try:
        yield source
    finally:
        await source.stop()


async def served_serial(port: int, folder: Path, client: str, server_name: str) -> str:
    """The serial of the certificate the server presents to a brand-new TLS connection (Python's ssl)."""
    context = ssl.create_default_context(cafile=folder / "ca.crt")
    context.load_cert_chain(folder / f"{client}.crt", folder / f"{client}.key")
    context.set_alpn_protocols(["h2"])
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname=server_name)
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await writer.wait_closed()
    return colon_hex(x509.load_der_x509_certificate(der).serial_number)


# ------------------------------------------------------------------------------------------ handshakes


async def test_caller_with_a_mesh_certificate_is_served_and_identified(ca: Path) -> None:
    async with started(files(ca, "orders")) as source, mtls_server(source) as port:
        caller = await ask(port, channel_credentials(read_material(ca, "gateway")), expecting("orders"))
    assert SpiffeId.parse(caller) == SpiffeId.for_service("gateway", trust_domain=TRUST_DOMAIN)


async def test_caller_without_a_certificate_fails_the_handshake(ca: Path) -> None:
    anonymous = grpc.ssl_channel_credentials(root_certificates=(ca / "ca.crt").read_bytes())
    async with started(files(ca, "orders")) as source, mtls_server(source) as port:
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await ask(port, anonymous, expecting("orders"))
    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_caller_with_a_certificate_from_another_ca_fails_the_handshake(ca: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    init_ca(other, TRUST_DOMAIN)
    issue(other, "gateway")
    # Built by hand: TlsMaterial would refuse a leaf that does not chain to the bundle it is given.
    credentials = grpc.ssl_channel_credentials(
        root_certificates=(ca / "ca.crt").read_bytes(),
        private_key=(other / "gateway.key").read_bytes(),
        certificate_chain=(other / "gateway.crt").read_bytes(),
    )
    async with started(files(ca, "orders")) as source, mtls_server(source) as port:
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await ask(port, credentials, expecting("orders"))
    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_server_presenting_another_services_identity_is_refused(ca: Path) -> None:
    client = channel_credentials(read_material(ca, "gateway"))
    async with started(files(ca, "payments")) as source, mtls_server(source) as port:
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await ask(port, client, expecting("orders"))
        assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
        assert await ask(port, client, expecting("payments"))  # the same server, expected as what it is


async def test_uri_only_leaf_like_a_real_consuls_is_verified_by_its_common_name(ca: Path) -> None:
    trust_domain = "11111111-2222-3333-4444-555555555555.consul"
    write_consul_style_leaf(ca, "orders", trust_domain)
    write_consul_style_leaf(ca, "gateway", trust_domain)
    async with started(files(ca, "orders")) as source, mtls_server(source) as port:
        assert source.current().identity_dns_name is None
        client = channel_credentials(read_material(ca, "gateway"))
        by_cn = channel_options("orders", "default", "dc1", trust_domain, by_common_name=True)
        assert (await ask(port, client, by_cn)).endswith("/svc/gateway")
        wrong = channel_options("payments", "default", "dc1", trust_domain, by_common_name=True)
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await ask(port, client, wrong)
    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE


# ------------------------------------------------------------------------------------------ files rotate


async def test_new_connections_get_the_rotated_certificate_while_the_server_keeps_running(ca: Path) -> None:
    server_name = SpiffeId.for_service("orders", trust_domain=TRUST_DOMAIN).dns_name
    async with started(files(ca, "orders")) as source, mtls_server(source) as port:
        first = source.current().serial
        assert await served_serial(port, ca, "gateway", server_name) == first
        rotated: asyncio.Queue[TlsMaterial] = asyncio.Queue()
        source.subscribe(rotated.put_nowait)

        issue(ca, "orders")  # replaces orders.key, then orders.crt, each atomically
        new = await asyncio.wait_for(rotated.get(), 10)

        assert new.serial != first
        assert await served_serial(port, ca, "gateway", server_name) == new.serial
        assert (await ask(port, channel_credentials(read_material(ca, "gateway")), expecting("orders"))).endswith(
            "/svc/gateway"
        )


async def test_kubernetes_secret_mount_swap_is_picked_up(ca: Path, tmp_path: Path) -> None:
    """kubelet writes a new timestamped directory and renames a ``..data`` symlink over the old one."""
    mount = tmp_path / "mount"
    mount.mkdir()

    def project(version: str) -> None:
        folder = mount / f"..{version}"
        folder.mkdir()
        for name, source in (("tls.crt", "orders.crt"), ("tls.key", "orders.key"), ("ca.crt", "ca.crt")):
            (folder / name).write_bytes((ca / source).read_bytes())
        os.symlink(folder.name, mount / "..data_tmp")
        os.replace(mount / "..data_tmp", mount / "..data")

    project("2030_01_01_v1")
    for name in ("tls.crt", "tls.key", "ca.crt"):
        os.symlink(f"..data/{name}", mount / name)
    source = FileSource(mount / "tls.crt", mount / "tls.key", mount / "ca.crt", poll_interval_s=3600)
    async with started(source):
        first = source.current().serial
        assert source.poll() is False
        issue(ca, "orders")
        project("2030_01_02_v2")
        assert source.poll() is True
        assert source.current().serial != first
        assert source.current().serial == read_material(ca, "orders").serial


async def test_half_written_rotation_keeps_the_old_certificate_with_one_warning(
    ca: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """cert-manager-style in-place rewrites: a new certificate next to the old key is ignored until the key
    arrives."""
    live = tmp_path / "live"
    live.mkdir()
    for name in ("orders.crt", "orders.key", "ca.crt"):
        (live / name).write_bytes((ca / name).read_bytes())
    source = files(live, "orders")
    source.poll_interval_s = 3600
    async with started(source):
        first = source.current()
        issue(ca, "orders")
        (live / "orders.crt").write_bytes((ca / "orders.crt").read_bytes())
        with caplog.at_level(logging.WARNING, logger="meshlet.security.sources"):
            assert source.poll() is False
            assert source.poll() is False
        assert source.current() is first
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1
        assert "does not match" in warnings[0].getMessage()
        assert first.serial in warnings[0].getMessage()

        (live / "orders.key").write_bytes((ca / "orders.key").read_bytes())
        assert source.poll() is True
        assert source.current().serial == read_material(ca, "orders").serial


async def test_touched_files_with_the_same_content_publish_nothing(ca: Path) -> None:
    source = files(ca, "orders")
    async with started(source):
        told: list[TlsMaterial] = []
        source.subscribe(told.append)
        (ca / "orders.crt").write_bytes((ca / "orders.crt").read_bytes())
        assert source.poll() is False
    assert told == []


async def test_unusable_files_fail_at_start_naming_the_file(ca: Path) -> None:
    with pytest.raises(TlsConfigError, match=r"tls.key .*missing.key cannot be read"):
        await FileSource(ca / "orders.crt", ca / "missing.key", ca / "ca.crt").start()
    with pytest.raises(TlsConfigError, match=r"gateway.key does not match the certificate in .*orders.crt"):
        await FileSource(ca / "orders.crt", ca / "gateway.key", ca / "ca.crt").start()
    with pytest.raises(TlsConfigError, match=r"not tls\.trust_domain 'elsewhere\.test'"):
        await FileSource(ca / "orders.crt", ca / "orders.key", ca / "ca.crt", trust_domain="elsewhere.test").start()


# ------------------------------------------------------------------------------------------ Consul Connect CA


async def test_connect_ca_material_serves_mtls_and_publishes_each_renewal(procs: Processes) -> None:
    agent = start_dev_agent(procs, "--leaf-cert-ttl", "4s")
    factory = consul_factory(agent.url)
    orders = ConsulConnectSource(factory, "orders", rng=random.Random(1))
    gateway = ConsulConnectSource(factory, "gateway", rng=random.Random(2))
    async with started(orders), started(gateway), mtls_server(orders) as port:
        first = orders.current()
        identity = first.identity
        assert identity.service == "orders"
        assert first.identity_dns_name == identity.dns_name  # the dev agent's leaves carry the DNS SAN
        options = channel_options("orders", identity.namespace, identity.datacenter, identity.trust_domain)
        assert (await ask(port, channel_credentials(gateway.current()), options)).endswith("/svc/gateway")

        renewed: asyncio.Queue[TlsMaterial] = asyncio.Queue()
        orders.subscribe(renewed.put_nowait)
        second = await asyncio.wait_for(renewed.get(), 15)

        assert second.serial != first.serial
        assert second.not_after > first.not_after
        assert (await ask(port, channel_credentials(gateway.current()), options)).endswith("/svc/gateway")


async def test_connect_ca_source_fails_at_start_when_no_agent_answers() -> None:
    port = free_port()
    source = ConsulConnectSource(
        consul_factory(f"127.0.0.1:{port}"), "orders", rng=random.Random(0), start_timeout_s=0.3
    )
    with pytest.raises(TlsConfigError, match=rf"Consul agent at http://127\.0\.0\.1:{port} .* tls\.source to files"):
        await source.start()
    await source.stop()


# ------------------------------------------------------------------------------------------ configuration


async def test_tls_off_means_no_source_and_a_plaintext_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="meshlet.security.sources"):
        assert make_source(load_config(None, env={}), consul_factory(), "orders") is None
    assert "plaintext" in caplog.text


async def test_tls_source_from_configuration(ca: Path) -> None:
    tls = {"tls": {"source": "files", "cert": str(ca / "orders.crt"), "key": str(ca / "orders.key"),
                   "ca": str(ca / "ca.crt")}}  # fmt: skip
    assert isinstance(make_source(load_config(None, env={}, overrides=tls), consul_factory(), "orders"), FileSource)
    consul = load_config(None, env={}, overrides={"tls": {"source": "consul"}})
    assert isinstance(make_source(consul, consul_factory(), "orders"), ConsulConnectSource)
    with pytest.raises(ConfigError, match=r"service\.name"):
        make_source(consul, consul_factory(), None)


# ------------------------------------------------------------------------------------------ helpers


def write_consul_style_leaf(folder: Path, service: str, trust_domain: str) -> None:
    """A leaf as a real Consul issues it: URI SAN only, Consul's ServiceCN, signed by `folder`'s CA."""
    ca_cert = x509.load_pem_x509_certificate((folder / "ca.crt").read_bytes())
    ca_key = serialization.load_pem_private_key((folder / "ca.key").read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    uri = SpiffeId.for_service(service, trust_domain=trust_domain).uri
    cert = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, consul_service_cn(service, "default", trust_domain))])
        )
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    (folder / f"{service}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / f"{service}.key").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
