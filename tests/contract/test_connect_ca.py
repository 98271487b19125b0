"""Connect CA roots and agent leaf certificates, as py-consul and raw HTTP see them: leaves chain to the
root, carry the service's SPIFFE ID, complete a mutual TLS handshake, are cached, and renew themselves
before they expire."""

from __future__ import annotations

import asyncio
import signal
import ssl
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import consul
import consul.aio
import grpc
import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from meshlet.devagent.connect_ca import identity_dns_name
from tests.support.agents import Agent, start_dev_agent
from tests.support.processes import Processes


def load(pem: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem.encode())


def assert_signed_by(leaf: x509.Certificate, root: x509.Certificate) -> None:
    """The leaf's signature checks out with the root's public key (raises otherwise)."""
    key = root.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    assert leaf.signature_hash_algorithm is not None
    key.verify(leaf.signature, leaf.tbs_certificate_bytes, ec.ECDSA(leaf.signature_hash_algorithm))
    assert leaf.issuer == root.subject


def uri_sans(cert: x509.Certificate) -> list[str]:
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.UniformResourceIdentifier
    )


def rfc3339(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def root_pem(agent: Agent) -> str:
    body = requests.get(f"{agent.url}/v1/agent/connect/ca/roots", timeout=5).json()
    return str(next(r["RootCert"] for r in body["Roots"] if r["ID"] == body["ActiveRootID"]))


def get_leaf(agent: Agent, service: str, **params: str) -> requests.Response:
    response = requests.get(f"{agent.url}/v1/agent/connect/ca/leaf/{service}", params=params, timeout=60)
    assert response.status_code == 200, response.text
    return response


# ------------------------------------------------------------------------------------------ roots


def test_roots_name_the_active_root_and_the_trust_domain(agent: Agent) -> None:
    response = requests.get(f"{agent.url}/v1/agent/connect/ca/roots", timeout=5)
    assert response.status_code == 200
    assert int(response.headers["X-Consul-Index"]) >= 1
    body = response.json()
    assert body == agent.client().agent.connect.ca.roots()
    (root,) = [r for r in body["Roots"] if r["Active"]]
    cert = load(root["RootCert"])
    fingerprint = ":".join(f"{b:02x}" for b in cert.fingerprint(hashes.SHA1()))
    assert body["ActiveRootID"] == root["ID"] == fingerprint
    trust_domain = body["TrustDomain"]
    assert trust_domain == root["ExternalTrustDomain"] + ".consul"
    assert uri_sans(cert) == [f"spiffe://{trust_domain}"]
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    assert "Consul CA" in root["Name"]
    assert (root["PrivateKeyType"], root["PrivateKeyBits"]) == ("ec", 256)
    assert rfc3339(root["NotBefore"]) <= datetime.now(UTC) < rfc3339(root["NotAfter"])
    assert root["IntermediateCerts"] is None
    assert "SigningKey" not in root


async def test_roots_through_the_asyncio_client(agent: Agent) -> None:
    client = consul.aio.Consul(host=agent.host, port=agent.port)
    try:
        roots = await client.agent.connect.ca.roots()
    finally:
        await client.close()
    assert roots["ActiveRootID"] == roots["Roots"][0]["ID"]


def test_server_roots_match_the_agents_and_can_answer_pem(agent: Agent) -> None:
    c = agent.client()
    agent_roots = c.agent.connect.ca.roots()
    assert c.connect.ca.roots()["ActiveRootID"] == agent_roots["ActiveRootID"]
    pem = requests.get(f"{agent.url}/v1/connect/ca/roots", params={"pem": "true"}, timeout=5)
    assert pem.headers["Content-Type"].startswith("application/pem-certificate-chain")
    assert pem.text == agent_roots["Roots"][0]["RootCert"]
    bad = requests.get(f"{agent.url}/v1/connect/ca/roots", params={"pem": "maybe"}, timeout=5)
    assert (bad.status_code, bad.text) == (400, "The 'pem' query parameter must be a boolean value")


def test_a_roots_query_blocked_on_the_current_index_returns_it_unchanged(agent: Agent) -> None:
    first = requests.get(f"{agent.url}/v1/agent/connect/ca/roots", timeout=5)
    index = first.headers["X-Consul-Index"]
    again = requests.get(f"{agent.url}/v1/agent/connect/ca/roots", params={"index": index, "wait": "200ms"}, timeout=30)
    assert again.headers["X-Consul-Index"] == index
    assert again.json()["ActiveRootID"] == first.json()["ActiveRootID"]


# ------------------------------------------------------------------------------------------ leaves


def test_a_leaf_for_any_service_name_chains_to_the_root(agent: Agent, unique: Callable[[str], str]) -> None:
    """The service need not be registered: the leaf is for a name."""
    name = unique("billing")
    c = agent.client()
    roots = c.agent.connect.ca.roots()
    issued = c.agent.connect.ca.leaf(name)
    cert = load(issued["CertPEM"])
    assert_signed_by(cert, load(roots["Roots"][0]["RootCert"]))
    uri = f"spiffe://{roots['TrustDomain']}/ns/default/dc/dc1/svc/{name}"
    assert issued["Service"] == name
    assert issued["ServiceURI"] == uri
    assert uri_sans(cert) == [uri]
    assert issued["SerialNumber"] == ":".join(f"{b:02x}" for b in cert.serial_number.to_bytes(20, "big").lstrip(b"\0"))
    assert rfc3339(issued["ValidAfter"]) == cert.not_valid_before_utc
    assert rfc3339(issued["ValidBefore"]) == cert.not_valid_after_utc
    assert cert.not_valid_before_utc <= datetime.now(UTC) < cert.not_valid_after_utc
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH} <= set(eku)
    key = serialization.load_pem_private_key(issued["PrivateKeyPEM"].encode(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key.public_key() == cert.public_key()
    assert issued["CreateIndex"] <= issued["ModifyIndex"]


def test_the_leaf_is_cached_and_a_blocked_query_returns_it_unchanged(
    agent: Agent, unique: Callable[[str], str]
) -> None:
    name = unique("cached")
    first = get_leaf(agent, name)
    again = get_leaf(agent, name)
    assert again.json()["SerialNumber"] == first.json()["SerialNumber"]
    index = first.headers["X-Consul-Index"]
    assert index == str(first.json()["ModifyIndex"])
    blocked = get_leaf(agent, name, index=index, wait="300ms")
    assert blocked.headers["X-Consul-Index"] == index
    assert blocked.json()["SerialNumber"] == first.json()["SerialNumber"]


async def test_two_leaves_complete_a_mutual_tls_handshake_verified_by_the_root(
    agent: Agent, unique: Callable[[str], str], tmp_path: Path
) -> None:
    """Each side checks the other's chain against the root and reads its SPIFFE ID from the URI SAN."""
    c = agent.client()
    trust = root_pem(agent)
    server_leaf, client_leaf = c.agent.connect.ca.leaf(unique("server")), c.agent.connect.ca.leaf(unique("client"))
    seen_by_server: list[Any] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen_by_server.append(writer.get_extra_info("peercert"))
        writer.write(await reader.readexactly(5))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=tls_context(server_leaf, trust, tmp_path, True))
    port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=tls_context(client_leaf, trust, tmp_path, False), server_hostname="ignored"
        )
        writer.write(b"hello")
        assert await reader.readexactly(5) == b"hello"
        seen_by_client = writer.get_extra_info("peercert")
        writer.close()
        await writer.wait_closed()
    finally:
        server.close()
        await server.wait_closed()
    assert ("URI", server_leaf["ServiceURI"]) in seen_by_client["subjectAltName"]
    assert ("URI", client_leaf["ServiceURI"]) in seen_by_server[0]["subjectAltName"]


def tls_context(leaf: dict[str, Any], trust: str, tmp_path: Path, server_side: bool) -> ssl.SSLContext:
    """Present `leaf`, require the peer's certificate, trust only the Connect root. Identity is the URI
    SAN, not a host name, so host-name checking is off (Consul's own leaves carry no DNS name)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server_side else ssl.PROTOCOL_TLS_CLIENT)
    cert_file, key_file = tmp_path / f"{leaf['Service']}.crt", tmp_path / f"{leaf['Service']}.key"
    cert_file.write_text(leaf["CertPEM"])
    key_file.write_text(leaf["PrivateKeyPEM"])
    context.load_cert_chain(cert_file, key_file)
    context.load_verify_locations(cadata=trust)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_REQUIRED
    return context


# ------------------------------------------------------------------------------------------ dev agent only


async def test_grpc_peers_verify_each_other_by_the_identity_dns_san(
    dev_agent_factory: Callable[..., Agent], unique: Callable[[str], str]
) -> None:
    """Dev agent only: its leaves add a DNS SAN (``identity_dns_name``) so grpcio, which can check only
    DNS names, verifies the server's identity; a client expecting another service fails the handshake."""
    agent = dev_agent_factory()
    c = agent.client()
    roots = c.agent.connect.ca.roots()
    trust = roots["Roots"][0]["RootCert"].encode()
    name, caller = unique("inventory"), unique("checkout")
    server_leaf, client_leaf = c.agent.connect.ca.leaf(name), c.agent.connect.ca.leaf(caller)
    expected = identity_dns_name(name, "default", "dc1", roots["TrustDomain"])
    dns_sans = load(server_leaf["CertPEM"]).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert dns_sans.get_values_for_type(x509.DNSName) == [expected]

    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    credentials = grpc.ssl_server_credentials(
        [(server_leaf["PrivateKeyPEM"].encode(), server_leaf["CertPEM"].encode())],
        root_certificates=trust,
        require_client_auth=True,
    )
    port = server.add_secure_port("127.0.0.1:0", credentials)
    await server.start()
    client_credentials = grpc.ssl_channel_credentials(
        trust, client_leaf["PrivateKeyPEM"].encode(), client_leaf["CertPEM"].encode()
    )

    async def check(authority: str) -> int:
        options = [("grpc.ssl_target_name_override", authority)]
        async with grpc.aio.secure_channel(f"127.0.0.1:{port}", client_credentials, options=options) as channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
            return int(reply.status)

    try:
        assert await check(expected) == health_pb2.HealthCheckResponse.SERVING
        impostor = identity_dns_name(caller, "default", "dc1", roots["TrustDomain"])
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await check(impostor)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await server.stop(None)


def test_a_blocking_leaf_query_returns_the_renewed_certificate_before_the_old_one_expires(
    dev_agent_factory: Callable[..., Agent], unique: Callable[[str], str]
) -> None:
    """Dev agent only: Consul's shortest leaf TTL is an hour; ``--leaf-cert-ttl 3s`` lets the renewal
    (at a random point between 60 % and 90 % of the lifetime) happen within the test."""
    agent = dev_agent_factory("--leaf-cert-ttl", "3s")
    name = unique("renewing")
    first = get_leaf(agent, name)
    old = first.json()
    renewed = get_leaf(agent, name, index=first.headers["X-Consul-Index"], wait="30s")
    received_at = time.time()
    new = renewed.json()
    assert new["SerialNumber"] != old["SerialNumber"]
    assert int(renewed.headers["X-Consul-Index"]) == new["ModifyIndex"] > old["ModifyIndex"]
    assert received_at < rfc3339(old["ValidBefore"]).timestamp()
    assert_signed_by(load(new["CertPEM"]), load(root_pem(agent)))


def test_the_root_survives_a_restart_with_a_data_dir(procs: Processes, tmp_path: Path) -> None:
    """Dev agent only (``consul agent -dev`` keeps nothing): leaves issued after a restart chain to the same
    root, so peers holding the old trust bundle keep trusting them."""
    agent = start_dev_agent(procs, "--data-dir", str(tmp_path / "data"))
    before = agent.client().agent.connect.ca.roots()
    child = agent.child
    assert child is not None
    child.signal(signal.SIGTERM)
    assert child.wait(15) == 0, child.output()

    agent = start_dev_agent(procs, "--data-dir", str(tmp_path / "data"))
    c = agent.client()
    after = c.agent.connect.ca.roots()
    assert (after["ActiveRootID"], after["TrustDomain"]) == (before["ActiveRootID"], before["TrustDomain"])
    issued = c.agent.connect.ca.leaf("orders")
    assert_signed_by(load(issued["CertPEM"]), load(before["Roots"][0]["RootCert"]))
    assert issued["ServiceURI"].startswith(f"spiffe://{before['TrustDomain']}/")
