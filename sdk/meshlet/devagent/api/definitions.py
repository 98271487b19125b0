"""The request schemas of ``/v1/agent/service/register``, ``/v1/agent/check/register`` and the TTL update, and
Consul's validation rules and texts for them; apart from the handlers because they are declarative and
``/v1/catalog/register`` shares them.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from meshlet.devagent.api.common import ConsulError, bad_request
from meshlet.devagent.catalog_records import CRITICAL, STATUSES, Check, CheckDefinition, Service
from meshlet.devagent.decode import DecodeError, Field, format_duration

CHECK_TYPE: dict[str, Field] = {
    "CheckID": Field("str"),
    "Name": Field("str"),
    "Status": Field("str"),
    "Notes": Field("str"),
    "ScriptArgs": Field("list", aliases=("args", "script_args"), items="str"),
    "HTTP": Field("str"),
    "Header": Field("map", items="list"),
    "Method": Field("str"),
    "Body": Field("str"),
    "DisableRedirects": Field("bool"),
    "TCP": Field("str"),
    "TCPUseTLS": Field("bool"),
    "UDP": Field("str"),
    "Interval": Field("duration"),
    "AliasNode": Field("str"),
    "AliasService": Field("str"),
    "DockerContainerID": Field("str", aliases=("docker_container_id",)),
    "Shell": Field("str"),
    "GRPC": Field("str"),
    "GRPCUseTLS": Field("bool", aliases=("grpc_use_tls",)),
    "H2PING": Field("str"),
    "H2PingUseTLS": Field("bool"),
    "OSService": Field("str"),
    "TLSServerName": Field("str", aliases=("tls_server_name",)),
    "TLSSkipVerify": Field("bool", aliases=("tls_skip_verify",)),
    "Timeout": Field("duration"),
    "TTL": Field("duration"),
    "SuccessBeforePassing": Field("int"),
    "FailuresBeforeWarning": Field("int"),
    "FailuresBeforeCritical": Field("int"),
    "DeregisterCriticalServiceAfter": Field("duration", aliases=("deregister_critical_service_after",)),
    "OutputMaxSize": Field("int"),
    "ServiceID": Field("str", aliases=("service_id",)),  # accepted and ignored inside a service definition
}
CHECK_DEFINITION: dict[str, Field] = {
    **{name: spec for name, spec in CHECK_TYPE.items() if name != "CheckID"},
    "ID": Field("str"),
    "Token": Field("str"),
    "DisableRedirects": Field("bool", aliases=("disable_redirects",)),
    "AliasNode": Field("str", aliases=("alias_node",)),
    "AliasService": Field("str", aliases=("alias_service",)),
    "H2PingUseTLS": Field("bool", aliases=("h2ping_use_tls",)),
}
CHECK_UPDATE: dict[str, Field] = {"Status": Field("str"), "Output": Field("str")}
SERVICE_ADDRESS: dict[str, Field] = {"Address": Field("str"), "Port": Field("int")}
PROXY: dict[str, Field] = {
    "EnvoyExtensions": Field("list", aliases=("envoy_extensions",)),
    "DestinationServiceName": Field("str", aliases=("destination_service_name",)),
    "DestinationServiceID": Field("str", aliases=("destination_service_id",)),
    "LocalServiceAddress": Field("str", aliases=("local_service_address",)),
    "LocalServicePort": Field("int", aliases=("local_service_port",)),
    "LocalServiceSocketPath": Field("str", aliases=("local_service_socket_path",)),
    "Mode": Field("str"),
    "Config": Field("map"),
    "Upstreams": Field("list"),
    "MeshGateway": Field("object", aliases=("mesh_gateway",), schema={"Mode": Field("str")}),
    "Expose": Field("object", schema={"Checks": Field("bool"), "Paths": Field("list")}),
    "TransparentProxy": Field("map", aliases=("transparent_proxy",)),
    "AccessLogs": Field("map", aliases=("access_logs",)),
}
SERVICE_DEFINITION: dict[str, Field] = {
    "Kind": Field("str"),
    "ID": Field("str"),
    "Name": Field("str"),
    "Tags": Field("list", items="str"),
    "Address": Field("str"),
    "TaggedAddresses": Field("map", aliases=("tagged_addresses",), items="object", schema=SERVICE_ADDRESS),
    "Meta": Field("map", items="str"),
    "Port": Field("int"),
    "SocketPath": Field("str"),
    "Check": Field("object", schema=CHECK_TYPE),
    "Checks": Field("list", items="object", schema=CHECK_TYPE),
    "Weights": Field("object", schema={"Passing": Field("int"), "Warning": Field("int")}),
    "Token": Field("str"),
    "EnableTagOverride": Field("bool", aliases=("enable_tag_override",)),
    "Proxy": Field("object", schema=PROXY),
    "Connect": Field(
        "object", schema={"Native": Field("bool"), "SidecarService": Field("any", aliases=("sidecar_service",))}
    ),
    "Locality": Field("object", schema={"Region": Field("str"), "Zone": Field("str")}),
}
DEFINITION_ATTRIBUTES = {
    "HTTP": "http",
    "Method": "method",
    "Body": "body",
    "DisableRedirects": "disable_redirects",
    "TCP": "tcp",
    "TCPUseTLS": "tcp_use_tls",
    "UDP": "udp",
    "GRPC": "grpc",
    "GRPCUseTLS": "grpc_use_tls",
    "H2PING": "h2ping",
    "H2PingUseTLS": "h2ping_use_tls",
    "TLSServerName": "tls_server_name",
    "TLSSkipVerify": "tls_skip_verify",
    "OSService": "os_service",
    "AliasNode": "alias_node",
    "AliasService": "alias_service",
    "DockerContainerID": "docker_container_id",
    "Shell": "shell",
    "ScriptArgs": "script_args",
    "SuccessBeforePassing": "success_before_passing",
    "FailuresBeforeWarning": "failures_before_warning",
    "FailuresBeforeCritical": "failures_before_critical",
    "OutputMaxSize": "output_max_size",
    "Interval": "interval_s",
    "Timeout": "timeout_s",
    "TTL": "ttl_s",
    "DeregisterCriticalServiceAfter": "deregister_after_s",
}
SCRIPTS_DISABLED = (
    "Scripts are disabled on this agent from remote calls; to enable, configure 'enable_script_checks' to true"
)
META_KEY = re.compile(r"[A-Za-z0-9_-]+")


def check_definition(fields: dict[str, Any]) -> CheckDefinition:
    """A decoded CheckType or CheckDefinition as a record, validated with Consul's texts."""
    values = {attr: fields[name] for name, attr in DEFINITION_ATTRIBUTES.items() if name in fields}
    if "Header" in fields:
        values["header"] = {key: [header_value(item) for item in items] for key, items in fields["Header"].items()}
    definition = CheckDefinition(**values)
    problem = check_type_problem(definition)
    if problem:
        raise bad_request(f"Invalid check: {problem}")
    return definition


def header_value(item: Any) -> str:
    if not isinstance(item, str):
        raise DecodeError(f"json: cannot unmarshal {type(item).__name__} into Go struct field .Header of type string")
    return item


def check_type_problem(d: CheckDefinition) -> str:
    """Consul's ``CheckType.Validate``: the first rule the definition breaks, or ``""``."""
    runs_on_interval = bool(d.script_args or d.http or d.tcp or d.udp or d.grpc or d.h2ping or d.os_service)
    alias = bool(d.alias_node or d.alias_service)
    if d.interval_s > 0 and d.ttl_s > 0:
        return "Interval and TTL cannot both be specified"
    if runs_on_interval and d.interval_s <= 0:
        return "Interval must be > 0 for Script, HTTP, H2PING, TCP, UDP or OSService checks"
    if runs_on_interval and alias:
        return "Interval cannot be set for Alias checks"
    if alias and d.ttl_s > 0:
        return "TTL must not be set for Alias checks"
    if not runs_on_interval and not alias and d.ttl_s <= 0:
        return "TTL must be > 0 for TTL checks"
    if d.output_max_size < 0:
        return "MaxOutputMaxSize must be positive"
    if d.failures_before_warning > d.failures_before_critical > 0:
        return "FailuresBeforeWarning can't be higher than FailuresBeforeCritical"
    return ""


def check_from_definition(body: dict[str, Any]) -> Check:
    """``/v1/agent/check/register``: a named check, node-level or of a service, critical unless told."""
    name = body.get("Name", "")
    if not name:
        raise bad_request("Missing check name")
    status = body.get("Status", "")
    if status and status not in STATUSES:
        raise bad_request("Bad check status")
    definition = check_definition(body)
    if definition.script_args:
        raise ConsulError(500, SCRIPTS_DISABLED)
    return Check(
        id=body.get("ID") or name,
        name=name,
        status=status or CRITICAL,
        notes=body.get("Notes", ""),
        service_id=body.get("ServiceID", ""),
        type=definition.type,
        interval=format_duration(definition.interval_s),
        timeout=format_duration(definition.timeout_s),
        definition=definition,
    )


def service_from_definition(body: dict[str, Any]) -> tuple[Service, list[Check]]:
    """``/v1/agent/service/register``: the service and its checks, with Consul's defaults and refusals."""
    name = body.get("Name", "")
    if not name:
        raise bad_request("Missing service name")
    service_id = body.get("ID") or name
    address = body.get("Address", "")
    if address in ("0.0.0.0", "::", "[::]"):
        raise bad_request("Invalid service address")
    meta = body.get("Meta", {})
    problem = meta_problem(meta)
    if problem:
        raise bad_request(f"Invalid Service Meta: {problem}")
    weights = {"Passing": 1, "Warning": 1}
    if "Weights" in body:
        weights = {"Passing": body["Weights"].get("Passing", 0), "Warning": body["Weights"].get("Warning", 0)}
        if weights["Passing"] < 1:
            raise bad_request("Invalid Weights: Passing must be greater than 0")
        if weights["Warning"] < 0:
            raise bad_request("Invalid Weights: Warning must be greater or equal than 0")
    connect = body.get("Connect", {})
    if connect.get("SidecarService") is not None:
        raise bad_request(
            "The meshlet dev agent does not register sidecar services (Connect.SidecarService); "
            "register the proxy as a service of its own (Kind connect-proxy)"
        )
    port = body.get("Port", 0)
    tagged = {
        key: {"Address": value.get("Address", ""), "Port": value.get("Port", 0)}
        for key, value in body.get("TaggedAddresses", {}).items()
    }
    service = Service(
        id=service_id,
        name=name,
        tags=list(body.get("Tags", [])),
        address=address,
        port=port,
        meta=dict(meta),
        tagged_addresses=default_tagged_addresses(address, port, tagged),
        weights=weights,
        enable_tag_override=body.get("EnableTagOverride", False),
        kind=body.get("Kind", ""),
        socket_path=body.get("SocketPath", ""),
        proxy=body.get("Proxy", {}),
        connect_native=connect.get("Native", False),
        locality=body.get("Locality"),
    )
    validate_service(service)
    return service, service_checks(service, body)


def service_checks(service: Service, body: dict[str, Any]) -> list[Check]:
    """``Check`` (unless empty) then ``Checks``; IDs ``service:<id>`` or ``service:<id>:<n>`` when unset."""
    types = [body["Check"]] if any(body.get("Check", {}).values()) else []
    types += body.get("Checks", [])
    definitions = [check_definition(fields) for fields in types]
    for fields in types:
        if fields.get("Status", "") and fields["Status"] not in STATUSES:
            raise bad_request("Status for checks must 'passing', 'warning', 'critical'")
    if any(definition.script_args for definition in definitions):
        raise ConsulError(500, SCRIPTS_DISABLED)
    checks = []
    for n, (fields, definition) in enumerate(zip(types, definitions, strict=True), start=1):
        default_id = f"service:{service.id}" if len(types) == 1 else f"service:{service.id}:{n}"
        checks.append(
            Check(
                id=fields.get("CheckID") or default_id,
                name=fields.get("Name") or f"Service '{service.name}' check",
                status=fields.get("Status") or CRITICAL,
                notes=fields.get("Notes", ""),
                type=definition.type,
                interval=format_duration(definition.interval_s),
                timeout=format_duration(definition.timeout_s),
                definition=definition,
            )
        )
    return checks


def default_tagged_addresses(address: str, port: int, given: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Consul adds ``lan_ipv4``/``wan_ipv4`` (or the ``_ipv6`` pair) for an IP literal address."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return given
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    family = "ipv4" if ip.version == 4 else "ipv6"
    tagged = dict(given)
    for key in (f"lan_{family}", f"wan_{family}"):
        tagged.setdefault(key, {"Address": address, "Port": port})
    return tagged


def meta_problem(meta: dict[str, str]) -> str:
    """Consul's metadata rules: at most 64 pairs, keys of ``[A-Za-z0-9_-]`` up to 128 characters and not
    starting with ``consul-``, values up to 512 characters."""
    if len(meta) > 64:
        return "Node metadata cannot contain more than 64 key/value pairs"
    for key, value in meta.items():
        pair = f"Couldn't load metadata pair ('{key}', '{value}'): "
        if not key:
            return pair + "Key cannot be blank"
        if not META_KEY.fullmatch(key):
            return pair + "Key contains invalid characters"
        if len(key) > 128:
            return pair + "Key is too long (limit: 128 characters)"
        if key.startswith("consul-"):
            return pair + "Key prefix 'consul-' is reserved for internal use"
        if len(value) > 512:
            return pair + "Value is too long (limit: 512 characters)"
    return ""


def validate_service(service: Service) -> None:
    """Consul's ``NodeService.Validate`` for the kinds that need more than a name."""
    problems = []
    if service.kind == "connect-proxy":
        if not service.proxy.get("DestinationServiceName"):
            problems.append("Proxy.DestinationServiceName must be non-empty for Connect proxy services")
        if not service.port and not service.socket_path:
            problems.append("Port or SocketPath must be set for a Connect proxy")
        if service.connect_native:
            problems.append("A Proxy cannot also be Connect Native, only typical services")
    if problems:
        listed = "".join(f"\t* {problem}\n" for problem in problems)
        count = "1 error" if len(problems) == 1 else f"{len(problems)} errors"
        raise bad_request(f"Validation failed: {count} occurred:\n{listed}\n")
