"""Which handshake failure grpc's words describe (the texts measured from grpcio 1.85 against real servers)."""

from __future__ import annotations

import pytest

from meshlet.security.handshake_failures import Handshake, classify

PREFIX = "failed to connect to all addresses; last error: "
UNKNOWN_CA = (
    PREFIX + "UNKNOWN: ipv4:127.0.0.1:40449: Tls handshake failed (TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: "
    "error:1000007d:SSL routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED: unable to get local issuer certificate: OK"
)
WRONG_NAME = (
    PREFIX + "UNKNOWN: ipv4:127.0.0.1:37177: Custom verification check failed with error: UNAUTHENTICATED: "
    "Hostname Verification Check failed."
)
NOT_TLS = (
    PREFIX + "UNKNOWN: ipv4:127.0.0.1:37497: Tls handshake failed (TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: "
    "error:100000f7:SSL routines:OPENSSL_internal:WRONG_VERSION_NUMBER: Invalid certificate verification context: OK"
)
CLOSED = PREFIX + "UNAVAILABLE: ipv4:127.0.0.1:40449: Socket closed"


@pytest.mark.parametrize(
    ("details", "secure", "expected"),
    [
        (UNKNOWN_CA, True, Handshake.SERVER_NOT_TRUSTED),
        (WRONG_NAME, True, Handshake.WRONG_SERVER),
        (NOT_TLS, True, Handshake.SERVER_NOT_TLS),
        (CLOSED, True, Handshake.CLIENT_REFUSED),
        (CLOSED, False, Handshake.PLAINTEXT_TO_TLS),
        (PREFIX + "UNAVAILABLE: ipv4:127.0.0.1:1: Connection refused", True, None),
        (PREFIX + "UNAVAILABLE: ipv4:127.0.0.1:1: Connection refused", False, None),
        ("Socket closed", True, None),  # mid-call: the request may have reached the server, no handshake to blame
        ("Socket closed", False, None),
        ("Hostname Verification Check failed.", True, None),
    ],
)
def test_grpcs_words_name_the_handshake_failure(details: str, secure: bool, expected: Handshake | None) -> None:
    assert classify(details, secure) is expected
