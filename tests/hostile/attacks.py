"""Hostile clients, at the socket: garbage, broken TLS, and HTTP/2 frames built with the `h2` library (and its
`hyperframe` and `hpack`, for the frames h2 itself refuses to send). Each one connects to 127.0.0.1 only, is
bounded in what it sends and how long it waits, and closes what it opened. They return what the server
answered, for the table's note; the test asserts on the target, not on them."""

from __future__ import annotations

import os
import socket
import ssl
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import hpack
from hyperframe.frame import (
    ContinuationFrame,
    Frame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

HOST = "127.0.0.1"  # never anything else
WORKERS = 4  # attacking connections at once: a flood, still within a 2-core machine's means
READ_S = 1.0  # how long an attacker waits for the server's answer before it hangs up
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
REFUSED_STREAM = 7
CANCEL = 8


def connect(port: int, context: ssl.SSLContext | None = None) -> socket.socket:
    sock = socket.create_connection((HOST, port), timeout=5)
    if context is None:
        return sock
    return context.wrap_socket(sock, server_hostname="b-svc")


def mtls_context(pki: Path, service: str = "a-svc") -> ssl.SSLContext:
    """A client that completes the mesh's mTLS handshake (ALPN h2, as gRPC), and then misbehaves."""
    context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    context.check_hostname = False
    context.load_cert_chain(pki / f"{service}.crt", pki / f"{service}.key")
    context.set_alpn_protocols(["h2"])
    return context


def drain(sock: socket.socket, seconds: float = READ_S) -> bytes:
    """Whatever the server says within `seconds` or until it hangs up."""
    sock.settimeout(0.2)
    received = bytearray()
    give_up = time.monotonic() + seconds
    while time.monotonic() < give_up:
        try:
            chunk = sock.recv(65536)
        except (TimeoutError, BlockingIOError):
            continue
        except (OSError, ssl.SSLError):
            break
        if not chunk:
            break
        received += chunk
    return bytes(received)


def hang_up(sock: socket.socket) -> None:
    try:
        sock.close()
    except OSError:
        pass


def many(connections: int, one: Callable[[], str]) -> str:
    """Run `one` attacking connection `connections` times, WORKERS at once; count how each ended."""
    with ThreadPoolExecutor(WORKERS) as pool:
        outcomes = Counter(pool.map(lambda _: _ended(one), range(connections)))
    return ", ".join(f"{count}x {outcome}" for outcome, count in outcomes.most_common(3))


def _ended(one: Callable[[], str]) -> str:
    try:
        return one()
    except (OSError, ssl.SSLError) as exc:
        return type(exc).__name__


# ------------------------------------------------------------------------------------------ bytes and TLS


def random_bytes(port: int, *, connections: int = 40, size: int = 64 * 1024) -> str:
    def one() -> str:
        sock = connect(port)
        try:
            sock.sendall(os.urandom(size))
            return "closed by server" if not drain(sock) else "answered, then closed"
        finally:
            hang_up(sock)

    return many(connections, one)


def client_hello() -> bytes:
    """A real TLS ClientHello, as the first flight a TLS client sends."""
    context = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="b-svc")
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


def truncated_hello(port: int, *, connections: int = 40) -> str:
    hello = client_hello()

    def one() -> str:
        sock = connect(port)
        try:
            sock.sendall(hello[: len(hello) // 2])
            return "closed by server" if not drain(sock, 0.5) else "answered"
        finally:
            hang_up(sock)

    return many(connections, one)


def tls_then_garbage(port: int, context: ssl.SSLContext, *, connections: int = 40, size: int = 64 * 1024) -> str:
    def one() -> str:
        sock = connect(port, context)
        try:
            sock.sendall(os.urandom(size))
            return "closed by server" if not drain(sock) else "answered, then closed"
        finally:
            hang_up(sock)

    return many(connections, one)


# ------------------------------------------------------------------------------------------ HTTP/2


def grpc_headers(tls: bool, path: str = "/meshlet_api.echo.v1.Echo/Echo") -> list[tuple[str, str]]:
    return [
        (":method", "POST"), (":scheme", "https" if tls else "http"), (":path", path),
        (":authority", f"{HOST}"), ("content-type", "application/grpc"), ("te", "trailers"),
    ]  # fmt: skip


def h2_socket(port: int, context: ssl.SSLContext | None) -> tuple[socket.socket, h2.connection.H2Connection]:
    """A connection that has said the HTTP/2 preface and its SETTINGS, with the h2 state that sent them."""
    sock = connect(port, context)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    return sock, conn


def send_frames(port: int, context: ssl.SSLContext | None, frames: Iterable[Frame | bytes], batch: int = 256) -> str:
    """Say the preface, then write raw `frames` in batches; then hear what the server answers, in frames."""
    sock, conn = h2_socket(port, context)
    try:
        pending: list[bytes] = []
        for frame in frames:
            pending.append(frame if isinstance(frame, bytes) else frame.serialize())
            if len(pending) >= batch:
                sock.sendall(b"".join(pending))
                pending.clear()
        sock.sendall(b"".join(pending))
        return answered(conn, drain(sock))
    except (OSError, ssl.SSLError):
        return f"server hung up, after: {answered(conn, drain(sock))}"
    finally:
        hang_up(sock)


FRAME_NAMES = {0: "DATA", 1: "HEADERS", 3: "RST_STREAM", 4: "SETTINGS", 6: "PING", 7: "GOAWAY", 8: "WINDOW_UPDATE"}
ERROR_NAMES = {0: "NO_ERROR", 1: "PROTOCOL_ERROR", 2: "INTERNAL_ERROR", 3: "FLOW_CONTROL_ERROR", 6: "FRAME_SIZE_ERROR",
               7: "REFUSED_STREAM", 8: "CANCEL", 9: "COMPRESSION_ERROR", 11: "ENHANCE_YOUR_CALM"}  # fmt: skip


def frames_in(data: bytes) -> Counter[str]:
    """The server's frames by kind: GOAWAY and RST_STREAM with their error code, PING ACKs. Read raw (a 9-byte
    header each), as h2's state machine would refuse streams it did not open itself."""
    seen: Counter[str] = Counter()
    at = 0
    while at + 9 <= len(data):
        length, kind, flags = int.from_bytes(data[at : at + 3], "big"), data[at + 3], data[at + 4]
        payload = data[at + 9 : at + 9 + length]
        name = FRAME_NAMES.get(kind, f"frame {kind}")
        if kind == 7 and len(payload) >= 8:
            name += " " + ERROR_NAMES.get(int.from_bytes(payload[4:8], "big"), str(payload[4:8].hex()))
        elif kind == 3 and len(payload) >= 4:
            name += " " + ERROR_NAMES.get(int.from_bytes(payload[:4], "big"), str(payload[:4].hex()))
        elif kind == 6:
            name += " ACK" if flags & 1 else ""
        seen[name] += 1
        at += 9 + length
    return seen


def answered(conn: h2.connection.H2Connection, data: bytes) -> str:
    """What the server said, in a few words: its GOAWAY and the code, resets, pings answered."""
    if not data:
        return "no answer"
    seen = frames_in(data)
    seen.pop("SETTINGS", None)
    seen.pop("WINDOW_UPDATE", None)
    return ", ".join(f"{what} x{count}" if count > 1 else what for what, count in seen.most_common(3)) or "SETTINGS"


def bad_settings(port: int, context: ssl.SSLContext | None, *, connections: int = 20) -> str:
    """SETTINGS no peer may send: a window past 2^31-1, a frame size below 16 KiB, ENABLE_PUSH 7, unknown ids."""
    variants = [{4: 2**31}, {5: 1}, {2: 7}, {0x99: 1, 0x1234: 2**32 - 1}, {5: 2**24}]

    def one(index: int) -> str:
        return send_frames(port, context, [SettingsFrame(0, settings=variants[index % len(variants)])])

    with ThreadPoolExecutor(WORKERS) as pool:
        return _summary(pool.map(one, range(connections)))


def oversized_headers(port: int, context: ssl.SSLContext | None, *, connections: int = 10) -> str:
    """One request whose header list is 1 MiB (200 headers of 5 KiB), in HEADERS and CONTINUATION frames."""
    block = hpack.Encoder().encode(
        [*grpc_headers(context is not None), *((f"x-big-{i}", "v" * 5000) for i in range(200))]
    )

    def one(_: int) -> str:
        chunks = [block[i : i + 16384] for i in range(0, len(block), 16384)]
        frames: list[Frame] = [HeadersFrame(1, data=chunks[0])]
        frames += [ContinuationFrame(1, data=chunk) for chunk in chunks[1:]]
        frames[-1].flags.add("END_HEADERS")
        return send_frames(port, context, frames)

    with ThreadPoolExecutor(WORKERS) as pool:
        return _summary(pool.map(one, range(connections)))


def continuation_flood(port: int, context: ssl.SSLContext | None, *, frames: int = 10_000) -> str:
    """HEADERS without END_HEADERS, then CONTINUATION frames that never end the block (CVE-2024-27316's kind)."""
    first = hpack.Encoder().encode(grpc_headers(context is not None))
    filler = hpack.Encoder().encode([("x-flood", "c" * 100)])
    flood = [HeadersFrame(1, data=first), *(ContinuationFrame(1, data=filler) for _ in range(frames))]
    return send_frames(port, context, flood)


def rapid_reset(port: int, context: ssl.SSLContext | None, *, streams: int = 10_000) -> str:
    """Open a stream and cancel it at once, 10,000 times on one connection (CVE-2023-44487)."""
    encoder = hpack.Encoder()
    headers = grpc_headers(context is not None)

    def frames() -> Iterable[Frame]:
        for n in range(streams):
            stream_id = 2 * n + 1
            yield HeadersFrame(stream_id, data=encoder.encode(headers), flags=["END_HEADERS"])
            yield RstStreamFrame(stream_id, error_code=CANCEL)

    return send_frames(port, context, frames())


def ping_flood(port: int, context: ssl.SSLContext | None, *, pings: int = 10_000) -> str:
    """PINGs, each asking for an ACK, faster than any keepalive (the server must not queue ACKs without end)."""
    return send_frames(port, context, (PingFrame(0, opaque_data=n.to_bytes(8, "big")) for n in range(pings)))


def window_update_abuse(port: int, context: ssl.SSLContext | None, *, connections: int = 10) -> str:
    """WINDOW_UPDATEs that overflow 2^31-1, that add nothing, and that name streams never opened."""
    headers = hpack.Encoder().encode(grpc_headers(context is not None))

    def one(index: int) -> str:
        variants: list[list[Frame]] = [
            [WindowUpdateFrame(0, window_increment=2**31 - 1)] * 2,
            [WindowUpdateFrame(0, window_increment=0)] * 1000,
            [WindowUpdateFrame(2 * n + 1, window_increment=1) for n in range(1000)],
            [HeadersFrame(1, data=headers, flags=["END_HEADERS"]), *[WindowUpdateFrame(1, window_increment=2**30)] * 4],
        ]
        return send_frames(port, context, variants[index % len(variants)])

    with ThreadPoolExecutor(WORKERS) as pool:
        return _summary(pool.map(one, range(connections)))


def concurrent_streams(port: int, context: ssl.SSLContext | None, *, streams: int = 10_000) -> tuple[int, int, str]:
    """Ask for `streams` concurrent streams on one connection (requests begun, never finished), after
    acknowledging the server's SETTINGS as a client must (before that, the HTTP/2 default, unlimited, holds
    until grpc.http2.settings_timeout); count how many the server refused. Returns (asked, refused, the rest)."""
    sock, conn = h2_socket(port, context)
    encoder = hpack.Encoder()
    headers = grpc_headers(context is not None)
    try:
        first = b""
        while len(first) < 9 or len(first) < 9 + int.from_bytes(first[:3], "big"):
            chunk = sock.recv(65536)
            if not chunk:
                return streams, 0, "server hung up before its SETTINGS"
            first += chunk
        sock.sendall(SettingsFrame(0, flags=["ACK"]).serialize())
        pending: list[bytes] = []
        for n in range(streams):  # raw frames: h2 would itself keep to the server's limit
            pending.append(HeadersFrame(2 * n + 1, data=encoder.encode(headers), flags=["END_HEADERS"]).serialize())
            if len(pending) >= 256:
                sock.sendall(b"".join(pending))
                pending.clear()
        sock.sendall(b"".join(pending))
        seen = frames_in(first + drain(sock, 2 * READ_S))
    finally:
        hang_up(sock)
    refused = seen.pop("RST_STREAM REFUSED_STREAM", 0)
    settings = h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS
    changed = [e for e in conn.receive_data(first) if isinstance(e, h2.events.RemoteSettingsChanged)]
    limit = next((e.changed_settings[settings].new_value for e in changed if settings in e.changed_settings), None)
    seen.pop("SETTINGS", None)
    seen.pop("WINDOW_UPDATE", None)
    rest = ", ".join(f"{what} x{count}" for what, count in seen.most_common(2))
    return streams, refused, f"server's limit {limit}" + (f"; {rest}" if rest else "")


def _summary(outcomes: Iterable[str]) -> str:
    counted = Counter(outcomes)
    return "; ".join(f"{count}x {outcome}" for outcome, count in counted.most_common(2))
