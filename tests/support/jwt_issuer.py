"""A real token issuer for tests: RSA, EC and Ed25519 signing keys generated here, their JWKS served over HTTPS on
loopback (a server certificate for 127.0.0.1 under a test CA written to ``ca.crt``), tokens signed with any of them,
and the tokens an attacker would try (``alg: none``, an HMAC keyed with the RSA public key, a tampered payload).
The JWKS is served from a thread, so it answers whichever event loop (or process) asks; `fetches` counts them."""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import ssl
import threading
import time
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from tests.support.crafted_certs import key_pem, root_ca

SigningKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TestIssuer:
    __test__ = False  # not a test class, whatever pytest thinks of its name

    def __init__(self, folder: Path, issuer: str = "https://issuer.test", audience: str = "shop") -> None:
        self.issuer, self.audience = issuer, audience
        self.keys: dict[str, tuple[str, SigningKey]] = {}  # kid -> (alg, private key)
        self.published: list[str] = []
        self.fetches = 0
        self.ca_path = self._certificates(folder)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(folder / "jwks.crt", folder / "jwks.key")
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.fetches += 1
                body = json.dumps(owner.jwks()).encode() if self.path == "/jwks.json" else b"{}"
                self.send_response(200 if self.path == "/jwks.json" else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.uri = f"https://127.0.0.1:{self.server.server_address[1]}/jwks.json"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def _certificates(self, folder: Path) -> Path:
        ca = root_ca("jwks test CA", "issuer.test")
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.now(UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=1))
            .not_valid_after(now + timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .sign(ca.key, hashes.SHA256())
        )
        (folder / "jwks.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (folder / "jwks.key").write_bytes(key_pem(key))
        (folder / "ca.crt").write_bytes(ca.cert.public_bytes(serialization.Encoding.PEM))
        return folder / "ca.crt"

    def add_key(self, kid: str, alg: str = "RS256", *, publish: bool = True) -> None:
        key: SigningKey
        if alg.startswith("RS"):
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        elif alg == "EdDSA":
            key = ed25519.Ed25519PrivateKey.generate()
        else:
            key = ec.generate_private_key(ec.SECP256R1())
        self.keys[kid] = (alg, key)
        if publish:
            self.published.append(kid)

    def jwks(self) -> dict[str, Any]:
        keys = []
        for kid in self.published:
            alg, key = self.keys[kid]
            public = key.public_key()
            if isinstance(public, rsa.RSAPublicKey):
                jwk = jwt.algorithms.RSAAlgorithm.to_jwk(public, as_dict=True)
            elif isinstance(public, ed25519.Ed25519PublicKey):
                jwk = jwt.algorithms.OKPAlgorithm.to_jwk(public, as_dict=True)
            else:
                jwk = jwt.algorithms.ECAlgorithm.to_jwk(public, as_dict=True)
            keys.append({**jwk, "kid": kid, "use": "sig", "alg": alg})
        return {"keys": keys}

    def claims(self, **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        base = {"iss": self.issuer, "aud": self.audience, "sub": "user-1", "iat": now, "exp": now + 300}
        return {k: v for k, v in {**base, **overrides}.items() if v is not None}

    def token(self, kid: str, **overrides: Any) -> str:
        alg, key = self.keys[kid]
        return jwt.encode(self.claims(**overrides), key, algorithm=alg, headers={"kid": kid})

    def unsigned_token(self, kid: str, **overrides: Any) -> str:
        """``alg: none``, an empty signature."""
        header = _b64(json.dumps({"alg": "none", "typ": "JWT", "kid": kid}).encode())
        return f"{header}.{_b64(json.dumps(self.claims(**overrides)).encode())}."

    def hmac_with_public_key(self, kid: str, **overrides: Any) -> str:
        """HS256 keyed with the RSA key's public PEM: verifies if a verifier lets the token choose HMAC."""
        _, key = self.keys[kid]
        secret = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        header = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode())
        signing_input = f"{header}.{_b64(json.dumps(self.claims(**overrides)).encode())}"
        return f"{signing_input}.{_b64(hmac.new(secret, signing_input.encode(), hashlib.sha256).digest())}"

    def tampered(self, kid: str, **overrides: Any) -> str:
        """A genuine token whose payload was then changed (a new sub), its signature kept."""
        header, _, signature = self.token(kid).split(".")
        payload = _b64(json.dumps(self.claims(sub="admin", **overrides)).encode())
        return f"{header}.{payload}.{signature}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
