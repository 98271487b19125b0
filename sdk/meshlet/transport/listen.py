"""Binding a grpc.aio server's port so that it is this process's alone, or saying in one line why not.

grpc sets SO_REUSEPORT on its listeners by default, so two servers on one port share its connections without a
word: a second instance registered under the first one's id, an SDK server on a plain app's port registered as
that app. Every meshlet server turns it off (``grpc.so_reuseport`` 0 in SERVER_OPTIONS), and binds through
`add_port`, which asks the kernel first: grpc's own failure is a log line from C plus "Failed to bind", where the
kernel says which ("Address already in use", "Cannot assign requested address").
"""

from __future__ import annotations

import socket

import grpc

from meshlet.errors import CannotListen, describe_os_error


def add_port(
    server: grpc.aio.Server,
    address: str,
    credentials: grpc.ServerCredentials | None,
    *,
    what: str,
    fix: str,
    shared: bool = False,
) -> int:
    """Bind `address` (``host:port``; port 0 picks a free one) on `server`, with TLS when `credentials` are given;
    returns the bound port. Raises CannotListen ("cannot `what` on `address` (why): `fix`") when it cannot.
    `shared`: the server was built with ``grpc.so_reuseport`` on, so the port's other holders are its workers."""
    problem = None if shared else bind_problem(address)
    port = 0
    if problem is None:
        try:
            if credentials is not None:
                port = server.add_secure_port(address, credentials)
            else:
                port = server.add_insecure_port(address)
        except RuntimeError as error:  # grpc's "Failed to bind to address ..."
            problem = str(error).split(";")[0]
        else:
            problem = None if port else "grpc could not bind it"
    if problem is not None:
        raise CannotListen(f"cannot {what} on {address} ({problem}): {fix}", address=address)
    return port


def bind_problem(address: str) -> str | None:
    """Why `address` cannot be bound now without sharing it (None: it can), as the kernel says it.

    A probe, racy by nature: grpc's own bind still decides, this only explains the common failures first."""
    host, _, port_text = address.rpartition(":")
    host = host.strip("[]")
    try:
        port = int(port_text)
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (ValueError, socket.gaierror) as error:
        return f"not a local address: {error}"
    if port == 0:
        return None
    for family, kind, proto, _, sockaddr in infos:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as grpc does: TIME_WAIT is no owner
            try:
                probe.bind(sockaddr)
            except OSError as error:
                return describe_os_error(error)
    return None


def join_host_port(host: str, port: int) -> str:
    """``host:port``, an IPv6 host in brackets."""
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"
