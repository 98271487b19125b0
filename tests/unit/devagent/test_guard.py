"""Which Host names address the dev agent, from the address it listens on: its own, localhost on loopback, any IP
literal on every interface (a DNS-rebinding page can only send a name), and the names given with --allow-host."""

from __future__ import annotations

import pytest

from meshlet.devagent.api.guard import AllowedHosts


@pytest.mark.parametrize(
    ("listen", "extra", "host", "admitted"),
    [
        ("127.0.0.1", (), "127.0.0.1:8500", True),
        ("127.0.0.1", (), "localhost:8500", True),
        ("127.0.0.1", (), "127.0.0.2:8500", False),
        ("127.0.0.1", (), "rebind.evil.example:8500", False),
        ("127.0.0.1", (), "127.0.0.1.nip.io", False),
        ("localhost", (), "[::1]:8500", True),
        ("::1", (), "[::1]:8500", True),
        ("::1", (), "localhost", True),
        ("0.0.0.0", (), "10.1.2.3:8500", True),  # every interface: any IP literal is one of ours
        ("0.0.0.0", (), "[fe80::1]:8500", True),
        ("0.0.0.0", (), "localhost", True),
        ("0.0.0.0", (), "rebind.evil.example", False),
        ("10.0.0.5", (), "10.0.0.5:8500", True),
        ("10.0.0.5", (), "10.0.0.6:8500", False),
        ("10.0.0.5", (), "localhost", False),
        ("127.0.0.1", ("consul.internal",), "CONSUL.internal.:8500", True),
    ],
)
def test_a_host_is_admitted_only_when_it_names_the_agent(
    listen: str, extra: tuple[str, ...], host: str, admitted: bool
) -> None:
    assert AllowedHosts(listen, extra).admits(host) is admitted
