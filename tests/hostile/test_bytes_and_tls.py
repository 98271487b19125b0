"""Garbage and broken TLS at every port: random bytes, a ClientHello cut in half, and (at the mTLS port) a
handshake completed with a valid certificate followed by garbage."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.hostile import attacks
from tests.hostile.conftest import ALL_FACES, Face, Hostile


@pytest.mark.parametrize("name", ALL_FACES)
def test_random_bytes(faces: dict[str, Face], name: str) -> None:
    with Hostile(faces[name], "random bytes (40 connections x 64 KiB)") as run:
        run.note = attacks.random_bytes(faces[name].port)


@pytest.mark.parametrize("name", ALL_FACES)
def test_truncated_tls_hello(faces: dict[str, Face], name: str) -> None:
    with Hostile(faces[name], "truncated TLS ClientHello (40 connections)") as run:
        run.note = attacks.truncated_hello(faces[name].port)


def test_valid_tls_session_then_garbage(faces: dict[str, Face], hostile_pki: Path) -> None:
    face = faces["sidecar inbound (mTLS)"]
    with Hostile(face, "mTLS handshake, then 64 KiB of garbage (40 connections)") as run:
        run.note = attacks.tls_then_garbage(face.port, attacks.mtls_context(hostile_pki))
