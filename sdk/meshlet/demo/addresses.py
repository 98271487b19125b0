"""Where the demo's mesh is: the table printed once it is up, and with ``--keep-running`` a grpcurl line that
calls the gateway with the traffic driver's own certificate (written next to the logs).
"""

from __future__ import annotations

import json
import urllib.parse
from pathlib import Path

from rich.console import Console
from rich.table import Table

from meshlet.demo.topology import HOST, Settings, Topology
from meshlet.mesh import Mesh
from meshlet.security.identity import identity_dns_name


def mesh_table(topology: Topology, settings: Settings, own_agent: bool) -> Table:
    table = Table(title=f"The mesh on this machine (ports on {HOST})", title_justify="left")
    for column in ("instance", "mode", "mTLS port", "app port", "metrics"):
        table.add_column(column)
    consul = "dev agent" if own_agent else "CONSUL_HTTP_ADDR"
    table.add_row("consul", consul, "", "", settings.consul_address)
    for instance in topology.instances:
        mode = "app + sidecar" if instance.sidecar else "SDK"
        app = str(instance.app_port) if instance.sidecar else ""
        metrics = (instance.metrics_url or "").removeprefix(f"http://{HOST}")
        table.add_row(instance.name, mode, instance.endpoint.rsplit(":", 1)[1], app, metrics)
    return table


def write_client_certs(mesh: Mesh, folder: Path) -> None:
    """The traffic driver's certificate, so grpcurl can call the gateway as the demo does."""
    source = mesh.tls_source
    if source is None:
        return
    material = source.current()
    (folder / "client.crt").write_bytes(material.cert_chain_pem)
    (folder / "client.key").write_bytes(material.private_key_pem)
    (folder / "ca.crt").write_bytes(material.trust_bundle_pem)
    me = material.identity
    servername = identity_dns_name("gateway", me.namespace, me.datacenter, me.trust_domain)
    (folder / "gateway.servername").write_text(servername)


_CHECKOUT = json.dumps({"request_id": "try-1", "customer_id": "c-1", "sku": "sku-tea", "quantity": 1})


_HTTP_CHECKOUT = json.dumps({"requestId": "try-http-1", "customerId": "c-1", "sku": "sku-tea", "quantity": 1})


def without_password(store: str) -> str:
    """A store as the report may show it: ``memory``, or the Redis URL without its password."""
    url = urllib.parse.urlsplit(store)
    if url.password is None:
        return store
    host = f"[{url.hostname}]" if ":" in str(url.hostname) else str(url.hostname)
    host = f"{host}:{url.port}" if url.port else host
    return urllib.parse.urlunsplit((url.scheme, host, url.path, "", ""))


def edge_lines(topology: Topology) -> list[str]:
    """The edge's URL and a curl line that checks out over HTTP/JSON (empty when the run has no edge)."""
    if topology.edge is None:
        return []
    url = topology.edge.url
    return [
        f"edge: {url}",
        f"  curl -sS -X POST {url}/v1/checkout -H 'Content-Type: application/json' -d '{_HTTP_CHECKOUT}'",
        f"  (then GET {url}/v1/orders/<orderId>; the edge's admin: {topology.edge.admin_url}/ready)",
    ]


def print_addresses(console: Console, topology: Topology, folder: Path) -> None:
    gateway = topology.instance("gateway")
    servername = folder / "gateway.servername"
    name = servername.read_text() if servername.exists() else "gateway"
    console.print(
        "\n[bold]The mesh stays up[/bold] until Ctrl-C. Call the gateway as the demo does (mTLS, its certificate):\n"
        f"  grpcurl -cacert {folder}/ca.crt -cert {folder}/client.crt -key {folder}/client.key "
        f"-servername {name} -d '{_CHECKOUT}' {gateway.endpoint} "
        "shop.gateway.v1.Gateway/Checkout   (another request_id, another order)\n"
        f"  sidecar admin pages: {', '.join(str(i.admin_url) for i in topology.instances if i.admin_url)}\n"
        f"  logs: {folder}/*.log"
    )
    for line in edge_lines(topology):
        console.print(line, highlight=False, markup=False, soft_wrap=True)
