"""Service identities: the SPIFFE ID in a certificate's URI SAN, in Consul's format
``spiffe://<trust-domain>/ns/<namespace>/dc/<datacenter>/svc/<service>``, and the DNS name that carries the
same identity for TLS stacks that can only match DNS names.

Inbound, the transport hands the peer's URI SAN to :meth:`SpiffeId.parse`; outbound, a client verifies its
upstream by :func:`identity_dns_name`, because grpcio checks a server only against DNS SANs
(``grpc.ssl_target_name_override``) and cannot match a URI SAN. Certificates meshlet issues (``meshlet
certs`` and the dev agent's Connect CA) carry both names. Pure: no I/O.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

FORMAT = "spiffe://<trust-domain>/ns/<namespace>/dc/<datacenter>/svc/<service>"
DEFAULT_NAMESPACE = "default"
DEFAULT_PARTITION = "default"
MAX_URI_BYTES = 2048  # the SPIFFE ID specification's limit

_TRUST_DOMAIN = re.compile(r"[a-z0-9._-]+")  # SPIFFE: lower-case letters, digits, dots, dashes, underscores
_DNS_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_UNRESERVED = re.compile(r"[A-Za-z0-9._~-]*")
_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
_URI = re.compile(r"spiffe://([^/?#]*)(?:/ap/([^/?#]+))?/ns/([^/?#]+)/dc/([^/?#]+)/svc/([^/?#]+)")


class InvalidSpiffeId(ValueError):
    """A string or a part that does not make a service SPIFFE ID in Consul's format; the message says why
    and what would."""


@dataclass(frozen=True, slots=True)
class SpiffeId:
    """A service's identity. Equal IDs name the same workload; ``str()`` is the URI SAN.

    `partition` is empty for Consul's default admin partition, which Consul leaves out of the URI; an ID
    read from a Consul Enterprise leaf in another partition keeps it, so it is never mistaken for the
    same-named service of the default partition.
    """

    trust_domain: str
    namespace: str
    datacenter: str
    service: str
    partition: str = ""

    def __post_init__(self) -> None:
        if not _TRUST_DOMAIN.fullmatch(self.trust_domain):
            raise InvalidSpiffeId(
                f"trust domain {self.trust_domain!r} is not valid: use lower-case letters, digits, '.', '-' or '_'"
            )
        for part in ("namespace", "datacenter", "service"):
            _check_segment(part, getattr(self, part))
        if self.partition == DEFAULT_PARTITION:  # Consul's default partition is no partition: one ID, one value
            object.__setattr__(self, "partition", "")
        if self.partition:
            _check_segment("partition", self.partition)

    @classmethod
    def for_service(
        cls, service: str, *, namespace: str = DEFAULT_NAMESPACE, datacenter: str = "dc1", trust_domain: str
    ) -> SpiffeId:
        """The identity to issue a certificate for. Stricter than :meth:`parse`: every part must be a DNS label
        (the trust domain a DNS name), so that :attr:`dns_name` is a name any TLS stack can match and the
        service name is safe as a file name."""
        for part, value in (("service", service), ("namespace", namespace), ("datacenter", datacenter)):
            if not _DNS_LABEL.fullmatch(value):
                raise InvalidSpiffeId(
                    f"{part} {value!r} is not a DNS label: use 1-63 lower-case letters, digits and '-', "
                    "starting and ending with a letter or digit"
                )
        identity = cls(check_trust_domain(trust_domain), namespace, datacenter, service)
        if len(identity.dns_name) > 253:
            raise InvalidSpiffeId(f"{identity.dns_name!r} is longer than a DNS name may be: use shorter names")
        return identity

    @classmethod
    def parse(cls, uri: str) -> SpiffeId:
        """Read a peer's URI SAN, as Consul's ``ParseCertURI`` does for services. Cached: a peer presents the
        same URI on every call of a connection. Raises :class:`InvalidSpiffeId` saying what is wrong."""
        return _parse(uri)

    @property
    def uri(self) -> str:
        """``spiffe://...``, each segment percent-encoded as Go's ``url.URL`` writes Consul's."""
        partition = f"/ap/{_quote(self.partition)}" if self.partition else ""
        return (
            f"spiffe://{self.trust_domain}{partition}/ns/{_quote(self.namespace)}"
            f"/dc/{_quote(self.datacenter)}/svc/{_quote(self.service)}"
        )

    @property
    def dns_name(self) -> str:
        """The DNS SAN that carries this identity (see :func:`identity_dns_name`)."""
        return identity_dns_name(self.service, self.namespace, self.datacenter, self.trust_domain)

    def __str__(self) -> str:
        return self.uri

    def __repr__(self) -> str:
        return f"SpiffeId({self.uri!r})"


def identity_dns_name(service: str, namespace: str, datacenter: str, trust_domain: str) -> str:
    """``<service>.svc.<namespace>.ns.<dc>.dc.<trust-domain>``, lower case: the DNS SAN meshlet's CAs add
    next to the SPIFFE URI, and the name a client passes as ``grpc.ssl_target_name_override``.

    The dev agent's Connect CA (``meshlet.devagent.connect_ca``, an island this module may not import) writes
    the same format; a unit test issues a leaf there and checks that both agree. Change both or neither.
    """
    return f"{service}.svc.{namespace}.ns.{datacenter}.dc.{trust_domain}".lower()


def check_trust_domain(trust_domain: str) -> str:
    """A trust domain a CA may issue under: a lower-case DNS name (it ends every identity DNS SAN)."""
    labels = trust_domain.split(".")
    if len(trust_domain) > 253 or not all(_DNS_LABEL.fullmatch(label) for label in labels):
        raise InvalidSpiffeId(
            f"trust domain {trust_domain!r} is not a DNS name: use lower-case dot-separated labels of letters, "
            "digits and '-', such as meshlet.local"
        )
    return trust_domain


@functools.lru_cache(maxsize=4096)
def _parse(uri: str) -> SpiffeId:
    try:
        size = len(uri.encode())
    except UnicodeEncodeError:  # a lone surrogate: no certificate's URI SAN decodes to one
        raise InvalidSpiffeId(f"{uri[:64]!r} is not a SPIFFE ID: it is not UTF-8 text") from None
    if size > MAX_URI_BYTES:
        raise InvalidSpiffeId(f"{uri[:64]!r}... is longer than the {MAX_URI_BYTES} bytes a SPIFFE ID may have")
    found = _URI.fullmatch(uri)
    if found is None:
        raise InvalidSpiffeId(f"{uri!r} is not a service SPIFFE ID: {_why_not(uri)}; expected {FORMAT}")
    trust_domain, partition, namespace, datacenter, service = found.groups()
    try:
        partition = _unquote(partition or "")
        return SpiffeId(
            trust_domain,
            _unquote(namespace),
            _unquote(datacenter),
            _unquote(service),
            partition,  # "default" reads as "" (see __post_init__)
        )
    except InvalidSpiffeId as exc:
        raise InvalidSpiffeId(f"{uri!r} is not a service SPIFFE ID: {exc}") from None


def _why_not(uri: str) -> str:
    """The first thing wrong with `uri`, for the error message."""
    scheme, sep, rest = uri.partition("://")
    if not sep or scheme != "spiffe":
        return "the scheme must be spiffe://"
    if not rest.partition("/")[0]:
        return "the trust domain is missing"
    if any(mark in rest for mark in "?#"):
        return "a SPIFFE ID has no query or fragment"
    if "/agent/" in rest or "/gateway/" in rest or not rest.partition("/")[2]:
        return "it names a Consul agent, server, gateway or trust domain, not a service"
    return "the path is not /ns/<namespace>/dc/<datacenter>/svc/<service>"


def _check_segment(part: str, value: str) -> None:
    if not value or value in (".", "..") or "/" in value:
        raise InvalidSpiffeId(f"{part} {value!r} is not valid: it must be non-empty, not '.' or '..', without '/'")
    if not value.isascii():
        try:
            value.encode()
        except UnicodeEncodeError:
            raise InvalidSpiffeId(f"{part} {value!r} is not valid: it must be UTF-8 text") from None


def _quote(segment: str) -> str:
    """Percent-encode all but RFC 3986's unreserved characters (urllib is off limits in pure modules)."""
    if _UNRESERVED.fullmatch(segment):
        return segment
    return "".join(
        char if _UNRESERVED.fullmatch(char) else "".join(f"%{byte:02X}" for byte in char.encode()) for char in segment
    )


def _unquote(segment: str) -> str:
    if "%" not in segment:
        return segment
    if segment.count("%") != len(_ESCAPE.findall(segment)):
        raise InvalidSpiffeId(f"{segment!r} has a '%' that is not followed by two hex digits")
    pieces = _ESCAPE.split(segment)  # text, hex, text, hex, ..., text
    raw = b"".join(bytes([int(piece, 16)]) if index % 2 else piece.encode() for index, piece in enumerate(pieces))
    try:
        return raw.decode()
    except UnicodeDecodeError:
        raise InvalidSpiffeId(f"{segment!r} does not decode to UTF-8") from None
