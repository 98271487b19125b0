"""The origin checks of meshlet_edge.cors against the spellings an attacker registers or forges: a pattern's ``*``
is whole DNS labels before the rest, never a suffix or prefix trick, a scheme or port change, or ``null``."""

from __future__ import annotations

import pytest

from meshlet_edge.cors import origin_matcher

ALLOWED = ["https://shop.example.com", "https://*.shop.example.com"]


@pytest.mark.parametrize(
    "origin",
    [
        "https://shop.example.com",
        "https://a.shop.example.com",
        "https://eu.a-1.shop.example.com",
        "HTTPS://A.SHOP.EXAMPLE.COM",  # origins compare case-insensitively
    ],
)
def test_the_allowed_origins_and_subdomains_pass(origin: str) -> None:
    assert origin_matcher(ALLOWED)(origin)


@pytest.mark.parametrize(
    "origin",
    [
        "https://evil-shop.example.com",  # a suffix of the pattern's rest, not a label before it
        "https://evilshop.example.com",
        "https://shop.example.com.evil.test",  # the allowed origin as a prefix
        "https://a.shop.example.com.evil.test",
        "https://evil.test/.shop.example.com",
        "https://evil.test?.shop.example.com",
        "https://evil.test#.shop.example.com",
        "https://evil.test@a.shop.example.com",
        "https://.shop.example.com",
        "https://-a.shop.example.com",
        "https://a_b.shop.example.com",
        "http://shop.example.com",  # another scheme
        "http://a.shop.example.com",
        "https://shop.example.com:8443",  # another port
        "https://a.shop.example.com:443",
        "https://a.shop.example.com\n",
        "null",  # sandboxed frames, file: pages, redirects
        "",
        "*",
    ],
)
def test_lookalikes_of_an_allowed_origin_are_refused(origin: str) -> None:
    assert not origin_matcher(ALLOWED)(origin)
