"""Who a caller is, read from the certificate it presented, as the SPIFFE X.509-SVID standard has it: exactly one
URI SAN, which is a service's SPIFFE ID, in a trust domain this service trusts, through a chain of the shape meshlet
expects. The TLS handshake has already verified the chain's signatures and validity against the trust bundle; this
adds what the TLS stacks do not check or do not agree on:

- the identity comes from the one URI SAN only: a ``spiffe://`` string in the common name or in a DNS or e-mail SAN
  names nobody, and a certificate with zero or several URI SANs names nobody;
- the trust domain is ours (our own certificate's) or one that ``tls.trusted_domains`` federates explicitly: a
  second CA in the bundle cannot vouch for identities of another trust domain;
- the chain honours every CA's path length constraint, the trust anchor's included: BoringSSL (grpc, the L7 path)
  ignores the anchor's, OpenSSL (Python's ssl, the L4 path) applies it; both paths now refuse the same chains.

Judged once per certificate and remembered (`CallerIdentities`), so a call costs one dict lookup beside reading
the auth context grpc already holds. Pure apart from reading grpc's context.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm

from meshlet.security.certs import MAX_CHAIN_DEPTH, CertificateSource, TlsMaterial
from meshlet.security.identity import InvalidSpiffeId, SpiffeId

MAX_REMEMBERED = 4096  # certificates judged and kept; the first in is the first out


@dataclass(frozen=True, slots=True)
class PeerVerdict:
    """A caller's identity (`uri`, canonical) or why its certificate names none we accept (`refusal`); both None
    for a caller that presented no certificate."""

    uri: str | None
    refusal: str | None = None


NO_CERTIFICATE = PeerVerdict(None)


class RefusedPeer(ValueError):
    """A verified certificate that names no caller this service accepts; the message says why."""


def judge_certificate(
    leaf: x509.Certificate,
    intermediates: Sequence[x509.Certificate] | None,
    roots: Sequence[x509.Certificate],
    trust_domains: frozenset[str],
) -> SpiffeId:
    """The caller `leaf` names, or :class:`RefusedPeer`. `intermediates` are those the caller presented, None where
    the handshake has already applied every path length constraint (OpenSSL, the L4 path)."""
    identity = _one_spiffe_id(leaf)
    if _is_ca(leaf):  # the X.509-SVID standard: a leaf SVID is not a CA
        raise RefusedPeer("the certificate is a CA's, not a service's: present the service's leaf certificate")
    if identity.trust_domain not in trust_domains:
        trusted = ", ".join(sorted(trust_domains))
        raise RefusedPeer(
            f"{identity} is from trust domain {identity.trust_domain!r} and this service trusts only {trusted}: issue "
            f"the caller's certificate in this mesh, or federate by adding {identity.trust_domain!r} to "
            "tls.trusted_domains"
        )
    if intermediates is not None:
        _check_chain(leaf, intermediates, roots)
    return identity


def _one_spiffe_id(leaf: x509.Certificate) -> SpiffeId:
    """The service SPIFFE ID in the one URI SAN of `leaf`, or RefusedPeer saying what is wrong."""
    try:
        names: x509.SubjectAlternativeName | None = leaf.extensions.get_extension_for_class(
            x509.SubjectAlternativeName
        ).value
    except x509.ExtensionNotFound:
        names = None
    uris = names.get_values_for_type(x509.UniformResourceIdentifier) if names is not None else []
    if len(uris) != 1:
        dns = names.get_values_for_type(x509.DNSName) if names is not None else []
        emails = names.get_values_for_type(x509.RFC822Name) if names is not None else []
        elsewhere = [
            *(f"a DNS SAN {name!r}" for name in dns if "spiffe:" in name),
            *(f"an e-mail SAN {name!r}" for name in emails if "spiffe:" in name),
            *(
                f"the common name {attribute.value!r}"
                for attribute in leaf.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
                if "spiffe:" in str(attribute.value)
            ),
        ]
        found = f"has {len(uris)} URI SANs" if uris else "has no URI SAN"
        aside = f" (a SPIFFE ID in {', '.join(elsewhere)} does not count)" if elsewhere else ""
        raise RefusedPeer(
            f"the certificate {found}{aside}; a SPIFFE certificate carries exactly one, its SPIFFE ID: issue it with "
            "'meshlet certs issue' or the Consul Connect CA"
        )
    try:
        return SpiffeId.parse(uris[0])
    except InvalidSpiffeId as exc:
        raise RefusedPeer(f"the certificate's URI SAN does not name a service: {exc}") from None


def _check_chain(
    leaf: x509.Certificate, presented: Sequence[x509.Certificate], roots: Sequence[x509.Certificate]
) -> None:
    """The leaf must reach a bundle certificate through the presented intermediates, each a CA, with no CA on the
    way (the bundle's included) having more intermediates below it than its pathLenConstraint allows."""
    below: list[x509.Certificate] = []  # the intermediates met so far, the leaf's issuer first
    current = leaf
    for _ in range(MAX_CHAIN_DEPTH):
        root = next((root for root in roots if _issued_by(current, root)), None)
        if root is not None:
            for intermediates_below, ca in enumerate([*below, root]):
                _check_path_length(ca, intermediates_below, ca is root)
            return
        issuer = next((ca for ca in presented if ca not in below and ca != current and _issued_by(current, ca)), None)
        if issuer is None:
            break
        if not _is_ca(issuer):
            raise RefusedPeer(f"{issuer.subject.rfc4514_string()!r} signs the chain but is not a CA")
        below.append(issuer)
        current = issuer
    raise RefusedPeer(
        "the certificate does not reach a CA of the trust bundle through the intermediates it presented: present "
        "the chain, leaf first, up to (not including) the root"
    )


def _check_path_length(ca: x509.Certificate, intermediates_below: int, anchor: bool) -> None:
    try:
        limit = ca.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length
    except x509.ExtensionNotFound:
        return
    if limit is not None and intermediates_below > limit:
        which = "the trust bundle's" if anchor else "an intermediate"
        raise RefusedPeer(
            f"the chain has {intermediates_below} intermediate(s) under {which} CA {ca.subject.rfc4514_string()!r}, "
            f"whose pathLenConstraint allows {limit}: have that CA sign the leaf directly"
        )


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    if cert.issuer != ca.subject:
        return False
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


class _Judge:
    """The verdicts under one trust bundle, one per certificate."""

    __slots__ = ("_domains", "_roots", "_verdicts")

    def __init__(self, material: TlsMaterial, trusted_domains: Iterable[str]) -> None:
        self._roots = x509.load_pem_x509_certificates(material.trust_bundle_pem)
        self._domains = frozenset({material.identity.trust_domain, *trusted_domains})
        self._verdicts: dict[tuple[bytes, bytes | None], PeerVerdict] = {}

    def verdict(self, leaf: bytes, chain: bytes | None, load: Callable[[bytes], x509.Certificate]) -> PeerVerdict:
        key = (leaf, chain)
        found = self._verdicts.get(key)
        if found is None:
            try:
                intermediates = None if chain is None else x509.load_pem_x509_certificates(chain) if chain else []
                identity = judge_certificate(load(leaf), intermediates, self._roots, self._domains)
                found = PeerVerdict(identity.uri)
            except RefusedPeer as refused:
                found = PeerVerdict(None, str(refused))
            except ValueError:
                found = PeerVerdict(None, "the certificate cannot be read")
            if len(self._verdicts) >= MAX_REMEMBERED:
                del self._verdicts[next(iter(self._verdicts))]
            self._verdicts[key] = found
        return found


class CallerIdentities:
    """Callers' identities on a server whose certificates come from `source`: `of_call` on the L7 paths (a grpc
    servicer context), `of_der` on the L4 path (the leaf Python's ssl verified). The verdicts are kept per
    certificate and start afresh when the trust bundle rotates."""

    __slots__ = ("_judge", "_source", "_trusted")

    def __init__(self, source: CertificateSource, trusted_domains: Iterable[str] = ()) -> None:
        self._source = source
        self._trusted = tuple(trusted_domains)
        self._judge: _Judge | None = None  # built on first use: the source may start after the server is made

    def of_call(self, context: Any) -> PeerVerdict:
        """The caller of a grpc server call: its leaf and the intermediates it presented, from the auth context."""
        auth: Mapping[str, Sequence[bytes]] = context.auth_context()
        leaf = auth.get("x509_pem_cert")
        if not leaf:
            return NO_CERTIFICATE
        chain = auth.get("x509_pem_cert_chain")
        return self._current().verdict(leaf[0], chain[0] if chain else b"", x509.load_pem_x509_certificate)

    def of_der(self, leaf_der: bytes | None) -> PeerVerdict:
        """The caller of an L4 connection, from the leaf OpenSSL verified (path lengths included)."""
        if not leaf_der:
            return NO_CERTIFICATE
        return self._current().verdict(leaf_der, None, x509.load_der_x509_certificate)

    def _current(self) -> _Judge:
        judge = self._judge
        if judge is None:
            judge = self._judge = _Judge(self._source.current(), self._trusted)
            self._source.subscribe(self._rotated)
        return judge

    def _rotated(self, material: TlsMaterial) -> None:
        self._judge = _Judge(material, self._trusted)

    def __repr__(self) -> str:
        return f"<CallerIdentities trusting {', '.join(self._trusted) or 'our trust domain only'}>"
