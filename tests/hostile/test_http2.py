"""Malformed and abusive HTTP/2 at the gRPC ports (the sidecar's inbound over mTLS, its outbound, an SDK
server), built with the h2 library: the frames of the HTTP/2 flood advisories, and more streams and
metadata than the limits in meshlet.transport.channels.SERVER_OPTIONS allow."""

from __future__ import annotations

import ssl
from pathlib import Path

import grpc
import pytest

from meshlet.transport.channels import MAX_CONCURRENT_STREAMS, MAX_METADATA_BYTES
from meshlet_api.echo.v1 import echo_pb2, echo_pb2_grpc
from tests.hostile import attacks
from tests.hostile.conftest import GRPC_FACES, TRUST_DOMAIN, Face, Hostile, mtls_credentials


def tls_for(face: Face, pki: Path) -> ssl.SSLContext | None:
    return attacks.mtls_context(pki) if face.tls else None


@pytest.mark.parametrize("name", GRPC_FACES)
def test_bad_settings(faces: dict[str, Face], hostile_pki: Path, name: str) -> None:
    face = faces[name]
    with Hostile(face, "invalid SETTINGS (20 connections)") as run:
        run.note = attacks.bad_settings(face.port, tls_for(face, hostile_pki))


@pytest.mark.parametrize("name", GRPC_FACES)
def test_oversized_headers(faces: dict[str, Face], hostile_pki: Path, name: str) -> None:
    face = faces[name]
    with Hostile(face, "1 MiB header list (10 connections)") as run:
        run.note = attacks.oversized_headers(face.port, tls_for(face, hostile_pki))


@pytest.mark.parametrize("name", GRPC_FACES)
def test_continuation_flood(faces: dict[str, Face], hostile_pki: Path, name: str) -> None:
    face = faces[name]
    with Hostile(face, "CONTINUATION flood (10,000 frames)") as run:
        run.note = attacks.continuation_flood(face.port, tls_for(face, hostile_pki))


@pytest.mark.slow
@pytest.mark.parametrize("name", GRPC_FACES)
def test_rapid_reset(faces: dict[str, Face], hostile_pki: Path, name: str) -> None:
    face = faces[name]
    with Hostile(face, "rapid reset, CVE-2023-44487 (10,000 streams)") as run:
        run.note = attacks.rapid_reset(face.port, tls_for(face, hostile_pki))


@pytest.mark.parametrize("name", GRPC_FACES)
def test_ping_flood(faces: dict[str, Face], hostile_pki: Path, name: str) -> None:
    face = faces[name]
    with Hostile(face, "PING flood (10,000 PINGs)") as run:
        run.note = attacks.ping_flood(face.port, tls_for(face, hostile_pki))


@pytest.mark.parametrize("name", GRPC_FACES)
def test_window_update_abuse(faces: dict[str, Face], hostile_pki: Path, name: str) -> None:
    face = faces[name]
    with Hostile(face, "WINDOW_UPDATE overflow, zero and unknown streams (10 conn.)") as run:
        run.note = attacks.window_update_abuse(face.port, tls_for(face, hostile_pki))


@pytest.mark.slow
@pytest.mark.parametrize("name", GRPC_FACES)
def test_ten_thousand_concurrent_streams(faces: dict[str, Face], hostile_pki: Path, name: str) -> None:
    """One client asks for 10,000 concurrent streams; the server keeps to its limit and refuses the rest."""
    face = faces[name]
    with Hostile(face, "10,000 concurrent streams from one client") as run:
        asked, refused, said = attacks.concurrent_streams(face.port, tls_for(face, hostile_pki))
        run.note = f"{refused} of {asked} refused (REFUSED_STREAM); {said}"
    assert refused >= asked - MAX_CONCURRENT_STREAMS, run.note


@pytest.mark.parametrize("name", GRPC_FACES)
def test_metadata_past_the_limit(faces: dict[str, Face], hostile_pki: Path, name: str) -> None:
    """Calls whose metadata is past MAX_METADATA_BYTES fail, every one of them, with a status, not a crash."""
    face = faces[name]
    target = f"127.0.0.1:{face.port}"
    options = [("grpc.use_local_subchannel_pool", 1), ("grpc.max_metadata_size", 4 * MAX_METADATA_BYTES)]
    if face.tls:
        name_override = ("grpc.ssl_target_name_override", f"b-svc.svc.default.ns.dc1.dc.{TRUST_DOMAIN}")
        channel = grpc.secure_channel(target, mtls_credentials(hostile_pki, "a-svc"), [*options, name_override])
    else:
        channel = grpc.insecure_channel(target, options)
    echo = echo_pb2_grpc.EchoStub(channel)
    shapes = {
        "one 20 KiB value": (("x-big", "v" * 20 * 1024),),
        "400 headers of 64 B": tuple((f"x-many-{i}", "v" * 64) for i in range(400)),
    }
    codes: dict[str, int] = {}
    served = 0
    with Hostile(face, "metadata past 16 KiB (20 calls)") as run:
        for n in range(20):  # few: grpc's tarpit holds each refusal back for up to a second
            metadata = list(shapes.values())[n % 2]
            try:
                echo.Echo(echo_pb2.EchoRequest(message="big"), metadata=metadata, timeout=5)
                served += 1
            except grpc.RpcError as error:
                codes[error.code().name] = codes.get(error.code().name, 0) + 1
        run.note = ", ".join(f"{count}x {code}" for code, count in codes.items())
    channel.close()
    assert served == 0, f"{served} calls past the metadata limit were served"
