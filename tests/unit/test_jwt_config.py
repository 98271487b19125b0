"""edge.auth and inbound.jwt in the config: a bad value exits naming its field and the fix; relative files are read
from the config file's folder, also inside lists of issuers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from meshlet.config import load_config
from meshlet.errors import ConfigError

ISSUER = {"issuer": "https://id.test", "audiences": ["shop"], "jwks_uri": "https://id.test/jwks.json"}


def refusal(overrides: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(env={}, overrides=overrides)
    return str(caught.value)


@pytest.mark.parametrize(
    ("issuer", "field", "why"),
    [
        ({**ISSUER, "jwks_uri": "http://id.test/jwks.json"}, "jwks_uri", "https://"),
        ({**ISSUER, "jwks_file": "jwks.json"}, "jwks_uri", "exactly one of"),
        ({**ISSUER, "algorithms": ["HS256"]}, "algorithms", "RS256"),
        ({**ISSUER, "audiences": []}, "audiences", "at least one audience"),
    ],
    ids=["plain-http", "two-key-sources", "hmac", "no-audience"],
)
def test_a_bad_issuer_is_refused_naming_its_field(issuer: dict[str, Any], field: str, why: str) -> None:
    message = refusal({"edge": {"auth": {"issuers": [issuer]}}})
    assert f"edge.auth.issuers.0.{field}" in message or f"edge.auth.issuers[0].{field}" in message, message
    assert why in message


def test_a_route_needing_what_is_not_configured_is_refused() -> None:
    message = refusal({"edge": {"auth": {"routes": [{"match": "GET /v1/**", "auth": "jwt"}]}}})
    assert "routes" in message
    assert "needs edge.auth.issuers" in message


def test_a_claim_header_may_not_take_the_subjects_name() -> None:
    message = refusal({"edge": {"auth": {"claims_to_headers": {"sub": "x-meshlet-subject"}}}})
    assert "reserved" in message


def test_issuer_and_key_files_are_read_from_the_config_files_folder(tmp_path: Path) -> None:
    folder = tmp_path / "deploy"
    folder.mkdir()
    for name in ("jwks.json", "ca.pem", "keys.yaml"):
        (folder / name).write_text("{}")
    (folder / "meshlet.yaml").write_text(
        "edge:\n"
        "  auth:\n"
        "    issuers: [{issuer: local, audiences: [shop], jwks_file: jwks.json}]\n"
        "    api_keys: {source: file, path: keys.yaml}\n"
        "inbound:\n"
        "  jwt: {issuers: [{issuer: x, audiences: [a], jwks_uri: 'https://x.test/k', ca_file: ca.pem}]}\n"
    )
    config = load_config(folder / "meshlet.yaml", env={})
    assert config.edge.auth.issuers[0].jwks_file == folder / "jwks.json"
    assert config.edge.auth.api_keys is not None
    assert config.edge.auth.api_keys.path == folder / "keys.yaml"
    assert config.inbound.jwt is not None
    assert config.inbound.jwt.issuers[0].ca_file == folder / "ca.pem"


def test_a_missing_keys_file_is_refused_at_load(tmp_path: Path) -> None:
    message = refusal({"edge": {"auth": {"api_keys": {"source": "file", "path": str(tmp_path / "nope.yaml")}}}})
    assert "edge.auth.api_keys.path" in message
    assert "cannot be read" in message
