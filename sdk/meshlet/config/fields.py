"""The values configuration is written in (durations, host:port pairs, Consul addresses, gRPC status names)
and the pydantic field types that check them in an operator's words; apart so that the schema reads as a list
of keys and defaults, and so that the parsers can be used on their own (the sidecar splits its listen addresses).
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Callable
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator
from pydantic_core import PydanticCustomError

DEFAULT_CONSUL_ADDRESS = "http://127.0.0.1:8500"
REDACTED = "<redacted>"
# grpc.StatusCode's names, literal so that configuration does not import grpc.
STATUS_CODES = (
    "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
    "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE",
    "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED",
)  # fmt: skip

_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_NUMBER = r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"  # ASCII: \d and float() read Arabic-Indic digits
_DURATION_PART = re.compile(rf"({_NUMBER})(ns|us|µs|ms|s|m|h)")
_DURATION = re.compile(rf"(?:{_NUMBER}(?:ns|us|µs|ms|s|m|h))+")
_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"  # a protobuf identifier: ASCII, as no other can name a method
_METHOD = re.compile(rf"/{_IDENT}(?:\.{_IDENT})*/(?:\*|{_IDENT})")
_DNS_NAME = re.compile(r"(?=.{1,253}$)[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*")
TRUST_DOMAIN_RULE = "must be a trust domain: a lower-case DNS name such as other.example, without spiffe://"


def is_trust_domain(value: str) -> bool:
    return bool(_DNS_NAME.fullmatch(value))


def parse_duration(value: object) -> float:
    """``"25ms"``, ``"1m30s"``, ``"1.5"`` or ``1.5`` -> seconds. Raises ValueError otherwise, negatives included."""
    text = value.strip() if isinstance(value, str) else ""
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif re.fullmatch(_NUMBER, text):
        seconds = float(text)
    elif _DURATION.fullmatch(text):
        seconds = sum(float(number) * _UNITS[unit] for number, unit in _DURATION_PART.findall(text))
    else:
        seconds = math.nan
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError("must be a duration such as 25ms, 1.5s, 2m, 1h or 500us (a bare number is seconds)")
    return seconds


def split_host_port(text: str) -> tuple[str, int]:
    """``"127.0.0.1:15001"`` or ``"[::1]:15001"`` -> (host, port). Raises ValueError for anything else."""
    host, sep, port = text.strip().rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        host = ""  # an IPv6 address needs brackets to be told apart from its port
    port_ok = port.isascii() and port.isdigit() and 1 <= int(port) <= 65535  # "²" is a digit to isdigit()
    if not (sep and host and port_ok) or any(c.isspace() for c in host):
        raise ValueError("must be host:port, e.g. 127.0.0.1:15001 (port 1-65535, an IPv6 host in brackets)")
    return host, int(port)


def listen_host(host: str) -> str | None:
    """The host to hand asyncio's servers: ``::`` (and an empty host) mean every address of both families, as
    gRPC's ``[::]`` does; asyncio would bind ``::`` to IPv6 alone (IPV6_V6ONLY), missing 127.0.0.1."""
    return None if host in ("::", "") else host


def bracket_ipv6(authority: str) -> str:
    """``fd00::1:8500`` -> ``[fd00::1]:8500``: an IPv6 host written without brackets, as
    ``http://$(HOST_IP):8500`` makes on an IPv6 node. The last ``:N`` is the port when what precedes it is an
    IPv6 address; else the whole is the address. Anything else is returned as it is, for the caller to check."""
    if authority.startswith("[") or authority.count(":") < 2:
        return authority
    host, _, port = authority.rpartition(":")
    for address, suffix in ((host, f":{port}"), (authority, "")):
        try:
            ipaddress.IPv6Address(address)
        except ValueError:
            continue
        if not suffix or port.isdigit():
            return f"[{address}]{suffix}"
    return authority


def normalise_consul_address(text: str) -> str:
    """``"host:port"`` or a URL -> ``"http://host:port"`` (``https`` kept), as the Consul CLI reads
    $CONSUL_HTTP_ADDR. Without a port the scheme's own applies, as there. An IPv6 host gets its brackets."""
    scheme, sep, rest = text.strip().rstrip("/").partition("://")
    scheme, rest = (scheme.lower(), rest) if sep else ("http", scheme)
    rest = bracket_ipv6(rest)
    if scheme not in ("http", "https") or not rest or any(c in rest for c in "/@?# ") or not _bracketed_ok(rest):
        raise ValueError("must be host:port or http(s)://host:port, e.g. http://127.0.0.1:8500")
    if ":" in rest.rpartition("]")[2]:
        split_host_port(rest)
    return f"{scheme}://{rest}"


def _bracketed_ok(authority: str) -> bool:
    """An authority that opens with ``[`` holds an IPv6 address there (``[::0:]`` is none), then nothing or a port."""
    if not authority.startswith("["):
        return "[" not in authority and "]" not in authority
    host, closed, rest = authority[1:].partition("]")
    if not closed or (rest and not rest.startswith(":")) or "[" in rest or "]" in rest:
        return False
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        return False
    return True


def invalid(allowed: str, *, field: tuple[str, ...] = (), value: object = None, blame: str = "") -> Exception:
    """A validation error in our words. A model-level check names the `field` it faults (so the path is exact)
    and may `blame` the sibling whose setting made it wrong (so the source is right)."""
    context: dict[str, Any] = {"allowed": allowed, "blame": blame}
    if field:
        context |= {"field": field, "value": value}
    return PydanticCustomError("meshlet", "{allowed}", context)


def checked(check: Callable[[Any], bool], allowed: str) -> AfterValidator:
    def validate(value: Any) -> Any:
        if not check(value):
            raise invalid(allowed)
        return value

    return AfterValidator(validate)


def parsed(parse: Callable[[str], Any]) -> AfterValidator:
    """Checks and normalises a string once pydantic has made it one (a YAML ``15001`` included)."""

    def validate(value: str) -> Any:
        try:
            return parse(value)
        except ValueError as exc:
            raise invalid(str(exc)) from None

    return AfterValidator(validate)


def _duration(value: Any) -> float:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise invalid(str(exc)) from None


def _host_port(text: str) -> str:
    split_host_port(text)
    return text.strip()


def _status_name(text: str) -> str:
    name = text.strip().upper().replace("-", "_")  # Envoy spells them resource-exhausted
    if name == "OK" or name not in STATUS_CODES:
        raise ValueError("must be a gRPC status code name other than OK: " + ", ".join(STATUS_CODES[1:]))
    return name


def method_pattern(allow_any: bool) -> AfterValidator:
    shapes = '"/pkg.Service/Method" or "/pkg.Service/*"'
    return checked(
        lambda m: (allow_any and m == "*") or bool(_METHOD.fullmatch(m)),
        f'must be "*", {shapes}' if allow_any else f"must be {shapes}",
    )


_BYTE_UNITS = {"": 1, "b": 1, "kb": 1000, "mb": 1000**2, "gb": 1000**3, "kib": 1024, "mib": 1024**2, "gib": 1024**3}
_BYTE_SIZE = re.compile(rf"({_NUMBER})\s*([A-Za-z]*)")


def parse_byte_size(value: object) -> int:
    """``"64MiB"``, ``"500kB"``, ``1048576`` -> bytes (IEC units are powers of 1024, SI ones of 1000)."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    found = _BYTE_SIZE.fullmatch(value.strip()) if isinstance(value, str) else None
    if found is None or found.group(2).lower() not in _BYTE_UNITS:
        raise ValueError("must be a size such as 64MiB, 512KiB, 1GB or a number of bytes")
    return int(float(found.group(1)) * _BYTE_UNITS[found.group(2).lower()])


def _byte_size(value: Any) -> int:
    try:
        return parse_byte_size(value)
    except ValueError as exc:
        raise invalid(str(exc)) from None


Duration = Annotated[float, BeforeValidator(_duration)]
ByteSize = Annotated[int, BeforeValidator(_byte_size)]
PositiveDuration = Annotated[Duration, checked(lambda s: s > 0, "must be a duration above zero")]
Ratio = Annotated[float, checked(lambda x: 0.0 <= x <= 1.0, "must be between 0 and 1")]
Port = Annotated[int, checked(lambda p: 1 <= p <= 65535, "must be between 1 and 65535")]
AtLeastOne = Annotated[int, checked(lambda n: n >= 1, "must be at least 1")]
NotNegative = Annotated[float, checked(lambda x: x >= 0, "must be at least 0")]
HostPort = Annotated[str, parsed(_host_port)]
StatusName = Annotated[str, parsed(_status_name)]
MaxAttempts = Annotated[
    int,
    checked(lambda n: n >= 1, "must be between 1 and 5"),
    checked(lambda n: n <= 5, "must be between 1 and 5: gRPC's retry design (A6) caps a call at 5 attempts"),
]
BudgetTtl = Annotated[Duration, checked(lambda s: 1 <= s <= 60, "must be between 1s and 60s, as Finagle's")]
DeregisterAfter = Annotated[Duration, checked(lambda s: s >= 60, "must be at least 1m, Consul's minimum")]
