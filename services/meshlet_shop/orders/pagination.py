"""ListOrders paging, pure: page sizes and opaque page tokens (AIP-158).

A token is ``base64url(json{"after": seq, "filter": filter}) + "." + base64url(hmac)``: a keyset cursor (the
sequence number of the last order returned, so orders created meanwhile neither repeat nor shift the pages)
bound to the filter it was issued for, signed with the instance's key so a client cannot forge or edit one.
A tampered token, one from another instance or one sent with another filter is a PageTokenError; the servicer
answers INVALID_ARGUMENT."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from dataclasses import dataclass

DEFAULT_PAGE_SIZE = 20
MAX_PAGE_SIZE = 100


class PageTokenError(ValueError):
    pass


def page_size(requested: int) -> int:
    """0 means the default; above the maximum is clamped to it (AIP-158); below 0 is a ValueError."""
    if requested < 0:
        raise ValueError(f"must be 0 (the default, {DEFAULT_PAGE_SIZE}) or more, got {requested}")
    return min(requested or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class PageTokens:
    key: bytes

    def _sign(self, body: bytes) -> bytes:
        return hmac.new(self.key, body, hashlib.sha256).digest()[:16]

    def issue(self, after: int, filter_text: str) -> str:
        body = json.dumps({"after": after, "filter": filter_text}, separators=(",", ":")).encode()
        return f"{_b64(body)}.{_b64(self._sign(body))}"

    def read(self, token: str, filter_text: str) -> int:
        """The cursor in `token`, which must have been issued by us for `filter_text`."""
        body_text, dot, signature_text = token.partition(".")
        try:
            body, signature = _unb64(body_text), _unb64(signature_text)
        except (binascii.Error, ValueError):
            body, signature = b"", b""
        if not dot or not hmac.compare_digest(signature, self._sign(body)):
            raise PageTokenError(
                "not a page token this server issued (altered, or from another instance): send the "
                "next_page_token of the previous ListOrders response as is, or none for the first page"
            )
        data = json.loads(body)
        if data["filter"] != filter_text:
            raise PageTokenError(
                f"this page token belongs to filter {data['filter']!r}: keep the filter while paging, or "
                "start over without a page token"
            )
        return int(data["after"])
