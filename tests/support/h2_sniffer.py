"""A TCP relay on loopback that passes plaintext HTTP/2 (gRPC) through unchanged and reads what the client sends:
for each call, its path, its ``grpc-encoding`` header and whether its first message was sent compressed (the
flag byte of gRPC's length-prefixed message). grpcio hides both from a server's handler, so a test that must
see that a channel compresses puts this between the channel and a real server."""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass

import hpack

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, CONTINUATION = 0x0, 0x1, 0x9
END_HEADERS, PADDED, PRIORITY = 0x4, 0x8, 0x20


@dataclass
class SeenCall:
    path: str
    grpc_encoding: str | None
    compressed: bool | None = None  # the first message's flag; None until one arrived


class ClientFrames:
    """Parses the client's side of one HTTP/2 connection as bytes arrive."""

    def __init__(self, calls: list[SeenCall], lock: threading.Lock) -> None:
        self._buffer = bytearray()
        self._preface_seen = False
        self._decoder = hpack.Decoder()
        self._block: tuple[int, bytearray] | None = None
        self._streams: dict[int, SeenCall] = {}
        self._calls = calls
        self._lock = lock

    def feed(self, data: bytes) -> None:
        self._buffer += data
        if not self._preface_seen:
            if len(self._buffer) < len(PREFACE):
                return
            del self._buffer[: len(PREFACE)]
            self._preface_seen = True
        while len(self._buffer) >= 9:
            length = int.from_bytes(self._buffer[0:3], "big")
            if len(self._buffer) < 9 + length:
                return
            kind, flags = self._buffer[3], self._buffer[4]
            stream = int.from_bytes(self._buffer[5:9], "big") & 0x7FFFFFFF
            payload = bytes(self._buffer[9 : 9 + length])
            del self._buffer[: 9 + length]
            self._frame(kind, flags, stream, payload)

    def _frame(self, kind: int, flags: int, stream: int, payload: bytes) -> None:
        if kind in (HEADERS, DATA) and flags & PADDED:
            payload = payload[1 : len(payload) - payload[0]]
        if kind == HEADERS:
            if flags & PRIORITY:
                payload = payload[5:]
            self._block = (stream, bytearray(payload))
        elif kind == CONTINUATION and self._block is not None:
            self._block[1].extend(payload)
        if kind in (HEADERS, CONTINUATION) and flags & END_HEADERS and self._block is not None:
            stream, block = self._block
            self._block = None
            headers = {str(k): str(v) for k, v in self._decoder.decode(bytes(block), raw=False)}
            if stream not in self._streams and ":path" in headers:
                call = SeenCall(headers[":path"], headers.get("grpc-encoding"))
                self._streams[stream] = call
                with self._lock:
                    self._calls.append(call)
        elif kind == DATA and payload:
            found = self._streams.get(stream)
            if found is not None and found.compressed is None:
                with self._lock:
                    found.compressed = payload[0] == 1


class Sniffer:
    """Relay 127.0.0.1:<port> -> 127.0.0.1:<target>; `calls()` lists what the clients sent."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._lock = threading.Lock()
        self._calls: list[SeenCall] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True, name="h2-sniffer").start()

    def calls(self) -> list[SeenCall]:
        with self._lock:
            return [SeenCall(c.path, c.grpc_encoding, c.compressed) for c in self._calls]

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            self._sockets += [client, server]
            frames = ClientFrames(self._calls, self._lock)
            threading.Thread(target=self._pump, args=(client, server, frames), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, None), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket, frames: ClientFrames | None) -> None:
        try:
            while chunk := source.recv(65536):
                if frames is not None:
                    frames.feed(chunk)
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self._listener.close()
        for sock in self._sockets:
            try:
                sock.close()
            except OSError:
                pass
