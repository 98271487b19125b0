"""The dev CA behind ``meshlet certs``: what it writes, that its certificates authenticate each other in a
real mTLS handshake (grpc.aio, as the mesh uses it) and are refused when they come from another CA, have
expired or name another service, that ``openssl verify`` agrees, and that the command fails in one line."""

from __future__ import annotations

import stat
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from meshlet.security.dev_ca import IssuedCert, certs_main, init_ca, issue
from meshlet.security.identity import SpiffeId
from tests.support.processes import REPO_ROOT

NOW = 1_750_000_000.0


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def sans(cert: x509.Certificate) -> x509.SubjectAlternativeName:
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value


def expired(directory: Path, service: str) -> IssuedCert:
    """A certificate whose hour of validity ended an hour ago."""
    return issue(directory, service, ttl_s=3600, now=lambda: time.time() - 7200)


@pytest.fixture
def ca(tmp_path: Path) -> Path:
    init_ca(tmp_path / "certs")
    return tmp_path / "certs"


@pytest.fixture
def other_ca(tmp_path: Path) -> Path:
    init_ca(tmp_path / "elsewhere")
    return tmp_path / "elsewhere"


# ------------------------------------------------------------------------------------- what is written


def test_init_writes_an_ec_p256_ca_whose_key_only_its_owner_can_read(tmp_path: Path) -> None:
    written = init_ca(tmp_path / "certs", "shop.example")
    root = load(written.cert)
    key = root.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    assert key.curve.name == "secp256r1"
    assert root.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert sans(root).get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://shop.example"]
    assert stat.S_IMODE(written.key.stat().st_mode) == 0o600
    assert sorted(path.name for path in written.cert.parent.iterdir()) == ["ca.crt", "ca.key"]


def test_init_refuses_to_replace_an_existing_ca_unless_forced(ca: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = (ca / "ca.key").read_bytes()
    assert certs_main(["init", str(ca)]) == 2
    assert (ca / "ca.key").read_bytes() == before
    assert (
        capsys.readouterr()
        .err.strip()
        .endswith("pass --force to replace the CA (certificates it issued stop being trusted)")
    )

    assert certs_main(["init", str(ca), "--force"]) == 0
    assert (ca / "ca.key").read_bytes() != before


def test_an_issued_certificate_names_its_service_by_spiffe_uri_and_identity_dns_name(ca: Path) -> None:
    issued = issue(ca, "orders", "shop", "eu-1", ttl_s=5400, now=lambda: NOW)
    leaf = load(issued.cert)
    expected = SpiffeId("meshlet.local", "shop", "eu-1", "orders")
    assert issued.identity == expected
    assert sans(leaf).get_values_for_type(x509.UniformResourceIdentifier) == [expected.uri]
    assert sans(leaf).get_values_for_type(x509.DNSName) == ["orders.svc.shop.ns.eu-1.dc.meshlet.local"]
    usages = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(usages) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert leaf.not_valid_after_utc == datetime.fromtimestamp(NOW + 5400, UTC)
    assert leaf.not_valid_before_utc == datetime.fromtimestamp(NOW - 60, UTC)  # a minute of clock drift
    assert (issued.cert.name, issued.key.name, stat.S_IMODE(issued.key.stat().st_mode)) == (
        "orders.crt",
        "orders.key",
        0o600,
    )


def test_reissuing_a_service_replaces_its_certificate_and_key(ca: Path) -> None:
    first = issue(ca, "orders")
    old_cert, old_key = first.cert.read_bytes(), first.key.read_bytes()
    second = issue(ca, "orders")
    assert (second.cert.read_bytes(), second.key.read_bytes()) != (old_cert, old_key)
    assert load(second.cert).serial_number != x509.load_pem_x509_certificate(old_cert).serial_number
    assert not [path.name for path in ca.iterdir() if path.name.startswith(".")]  # no temporary file left


def test_the_ttl_flag_takes_a_duration(ca: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert certs_main(["issue", str(ca), "orders", "--ttl", "90m"]) == 0
    leaf = load(ca / "orders.crt")
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc == timedelta(minutes=90 + 1)  # + clock drift
    out = capsys.readouterr().out
    assert "spiffe://meshlet.local/ns/default/dc/dc1/svc/orders" in out
    assert "DNS orders.svc.default.ns.dc1.dc.meshlet.local" in out


@pytest.mark.parametrize(
    ("argv", "hint"),
    [
        (["issue", "{ca}", "Orders"], "use 1-63 lower-case letters, digits and '-'"),
        (["issue", "{ca}", "orders", "--ttl", "tomorrow"], "use one such as 24h, 90m or 30s"),
        (["issue", "{ca}", "orders", "--ttl", "0s"], "use one such as 24h, 90m or 30s"),
        (["issue", "{ca}", "orders", "--dc", "DC 1"], "is not a DNS label"),
        (["issue", "{empty}", "orders"], "run 'meshlet certs init"),
        (["init", "{empty}", "--trust-domain", "my_domain"], "such as meshlet.local"),
        (["issue", "{ca}"], "see 'meshlet certs issue --help'"),
        (["rotate", "{ca}"], "invalid choice: 'rotate'"),
        ([], "see 'meshlet certs --help'"),
    ],
)
def test_bad_input_exits_2_with_one_line_saying_what_to_do(
    ca: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], hint: str
) -> None:
    args = [arg.format(ca=ca, empty=tmp_path / "empty") for arg in argv]
    assert certs_main(args) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1
    assert hint in captured.err


# ------------------------------------------------------------------------------------- real handshakes

Caller = Callable[..., Awaitable[str]]


@pytest.fixture
async def mtls_call(ca: Path) -> AsyncIterator[Caller]:
    """Start a grpc.aio server that requires a client certificate chaining to `ca` and answers with the
    caller's SPIFFE ID (from grpc's auth context); return a function making one call as a given client."""
    servers: list[grpc.aio.Server] = []

    def whoami(request: bytes, context: grpc.ServicerContext) -> bytes:
        [peer] = context.auth_context()["peer_uri"]
        return bytes(peer)

    async def call(server: IssuedCert, client: IssuedCert | None, *, expect: str | None = None) -> str:
        handler = grpc.method_handlers_generic_handler("test.Who", {"Am": grpc.unary_unary_rpc_method_handler(whoami)})
        grpc_server = grpc.aio.server()
        grpc_server.add_generic_rpc_handlers((handler,))
        credentials = grpc.ssl_server_credentials(
            [(server.key.read_bytes(), server.cert.read_bytes())],
            root_certificates=(ca / "ca.crt").read_bytes(),
            require_client_auth=True,
        )
        port = grpc_server.add_secure_port("127.0.0.1:0", credentials)
        servers.append(grpc_server)
        await grpc_server.start()
        client_credentials = grpc.ssl_channel_credentials(
            (ca / "ca.crt").read_bytes(),
            client.key.read_bytes() if client else None,
            client.cert.read_bytes() if client else None,
        )
        options = [("grpc.ssl_target_name_override", expect or server.identity.dns_name)]
        async with grpc.aio.secure_channel(f"127.0.0.1:{port}", client_credentials, options=options) as channel:
            reply: bytes = await channel.unary_unary("/test.Who/Am")(b"", timeout=10)
        return reply.decode()

    yield call
    for server in servers:
        await server.stop(None)


async def test_two_issued_certificates_authenticate_each_other(ca: Path, mtls_call: Caller) -> None:
    orders, gateway = issue(ca, "orders"), issue(ca, "gateway")
    caller = await mtls_call(orders, gateway)
    assert SpiffeId.parse(caller) == gateway.identity


async def refused(call: Awaitable[str]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await call
    assert failure.value.code() == grpc.StatusCode.UNAVAILABLE
    return failure.value


async def test_a_client_certificate_from_another_ca_is_refused(ca: Path, other_ca: Path, mtls_call: Caller) -> None:
    orders = issue(ca, "orders")
    await refused(mtls_call(orders, issue(other_ca, "gateway")))
    assert await mtls_call(orders, issue(ca, "gateway"))  # the same server admits the right CA's


async def test_an_expired_client_certificate_is_refused(ca: Path, mtls_call: Caller) -> None:
    orders = issue(ca, "orders")
    await refused(mtls_call(orders, expired(ca, "gateway")))
    assert await mtls_call(orders, issue(ca, "gateway"))


async def test_a_client_without_a_certificate_is_refused(ca: Path, mtls_call: Caller) -> None:
    await refused(mtls_call(issue(ca, "orders"), None))


async def test_a_client_refuses_an_expired_server_certificate(ca: Path, mtls_call: Caller) -> None:
    failure = await refused(mtls_call(expired(ca, "orders"), issue(ca, "gateway")))
    assert "expired" in (failure.details() or "")


async def test_a_client_refuses_a_server_presenting_another_services_identity(ca: Path, mtls_call: Caller) -> None:
    payments = issue(ca, "payments")
    orders_name = SpiffeId.for_service("orders", trust_domain="meshlet.local").dns_name
    await refused(mtls_call(payments, issue(ca, "gateway"), expect=orders_name))


def openssl_verify(ca: Path, cert: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["openssl", "verify", "-CAfile", str(ca / "ca.crt"), str(cert)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_openssl_verify_accepts_an_issued_certificate(ca: Path) -> None:
    result = openssl_verify(ca, issue(ca, "orders").cert)
    assert (result.returncode, result.stdout.strip()) == (0, f"{ca / 'orders.crt'}: OK")


def test_openssl_verify_refuses_another_cas_certificate_and_an_expired_one(ca: Path, other_ca: Path) -> None:
    foreign = openssl_verify(ca, issue(other_ca, "orders").cert)
    assert foreign.returncode != 0
    assert "unable to get local issuer certificate" in foreign.stdout + foreign.stderr
    old = openssl_verify(ca, expired(ca, "gateway").cert)
    assert old.returncode != 0
    assert "certificate has expired" in old.stdout + old.stderr


# ------------------------------------------------------------------------------------- the command


def meshlet(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meshlet.cli", "certs", *args],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=60,
        check=False,
    )


def test_meshlet_certs_writes_a_ca_and_a_service_certificate_openssl_accepts(tmp_path: Path) -> None:
    folder = tmp_path / "certs"
    created = meshlet("init", str(folder), "--trust-domain", "shop.example")
    assert created.returncode == 0, created.stderr
    issued = meshlet("issue", str(folder), "orders", "--ns", "shop", "--dc", "eu-1", "--ttl", "1h")
    assert issued.returncode == 0, issued.stderr
    assert "spiffe://shop.example/ns/shop/dc/eu-1/svc/orders" in issued.stdout
    assert openssl_verify(folder, folder / "orders.crt").returncode == 0


@pytest.mark.parametrize(
    ("args", "hint"),
    [
        (("issue", "{dir}", "Orders"), "lower-case letters"),
        (("issue", "{dir}", "orders", "--ttl", "forever"), "24h, 90m or 30s"),
        (("issue", "{dir}/missing", "orders"), "run 'meshlet certs init"),
        (("init", "{dir}"), "--force"),
    ],
)
def test_meshlet_certs_bad_input_exits_2_with_one_line_and_no_traceback(
    ca: Path, args: tuple[str, ...], hint: str
) -> None:
    result = meshlet(*(arg.format(dir=ca) for arg in args))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1, result.stderr
    assert hint in result.stderr
    assert "Traceback" not in result.stderr
