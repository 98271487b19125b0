"""Which ports may splice at L4 (how any listener reads a caller's identity: tests/unit/security/test_peers.py)."""

from __future__ import annotations

from typing import Any

import pytest

from meshlet.config import Config
from meshlet.errors import ConfigError
from meshlet_sidecar.sidecar import check_inbound_mode

TLS = {"source": "files", "cert": "a.crt", "key": "a.key", "ca": "ca.crt"}


def config(**sections: Any) -> Config:
    return Config.model_validate({"tls": TLS, "sidecar": {"inbound_mode": "l4"}, **sections})


def test_identity_only_authorization_may_splice() -> None:
    check_inbound_mode(config(authz={"default": "deny", "rules": [{"from": "a", "to": "b", "action": "allow"}]}))
    check_inbound_mode(config(authz={"source": "consul"}))  # Consul's authorize is connection-level anyway


@pytest.mark.parametrize(
    ("sections", "why"),
    [
        ({"tls": {"source": "off"}}, "needs mTLS"),
        ({"authz": {"rules": [{"from": "a", "to": "b", "methods": ["/x.Y/*"], "action": "allow"}]}}, "name methods"),
        ({"rate_limit": {"per_caller": {"rate_per_s": 5}}}, "rate_limit"),
        ({"rate_limit": {"per_method": {"/x.Y/Z": {"rate_per_s": 5}}}}, "rate_limit"),
    ],
)
def test_a_port_that_needs_the_calls_cannot_splice_and_the_error_says_why(sections: dict[str, Any], why: str) -> None:
    with pytest.raises(ConfigError, match=why) as refused:
        check_inbound_mode(config(**sections))
    assert refused.value.path == "sidecar.inbound_mode"
    assert "use l7" in str(refused.value)
