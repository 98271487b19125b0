"""The rendered manifests, as the tests read them: each overlay built by ``kubectl kustomize`` (Debian's
kubectl, or $KUBECTL), and the few views the checks share (workloads, their containers, the meshlet configs in
the ConfigMaps, a container's environment as the kubelet would expand it)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.processes import REPO_ROOT

KUBERNETES_VERSION = "1.33"  # the API the manifests must be valid for (kubernetes-validate's schemas)
OLDEST_KUBERNETES = "1.29"  # docs/kubernetes.md's minimum: native sidecars on by default
K8S = REPO_ROOT / "k8s"
OVERLAYS = ("dev", "prod", "cert-manager")
MESHLET_IMAGE = "meshlet"
WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet")

Obj = dict[str, Any]


def kubectl() -> str:
    """The kubectl to build with. Absent here: skip, saying how to get it; absent in CI: fail, since .ci/run
    installs it and a green run without these tests would hide that."""
    found = os.environ.get("KUBECTL") or shutil.which("kubectl")
    if found:
        return found
    if os.environ.get("CI"):
        pytest.fail("kubectl is missing in CI: .ci/run installs Debian's kubernetes-client, check its apt step")
    pytest.skip("kubectl is not installed: apt-get install kubernetes-client (Debian's kubectl) to build k8s/")


@cache
def _build(kubectl_path: str, directory: str) -> tuple[Obj, ...]:
    result = subprocess.run(
        [kubectl_path, "kustomize", str(K8S / directory)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if result.returncode != 0:
        raise AssertionError(f"kubectl kustomize k8s/{directory} failed:\n{result.stderr}")
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def render(overlay: str) -> list[Obj]:
    """The objects of `overlay`, as `kubectl kustomize` prints them (built once per test session)."""
    return list(_build(kubectl(), f"overlays/{overlay}"))


def render_extra(directory: str) -> list[Obj]:
    """The objects of a kustomization applied beside an overlay (``monitoring``: the ServiceMonitor)."""
    return list(_build(kubectl(), directory))


def named(objects: list[Obj], kind: str) -> dict[str, Obj]:
    return {obj["metadata"]["name"]: obj for obj in objects if obj["kind"] == kind}


@dataclass(frozen=True)
class Workload:
    kind: str
    name: str
    obj: Obj

    @property
    def pod(self) -> Obj:
        spec: Obj = self.obj["spec"]["template"]["spec"]
        return spec

    @property
    def labels(self) -> dict[str, str]:
        labels: dict[str, str] = self.obj["spec"]["template"]["metadata"].get("labels", {})
        return labels

    def containers(self) -> list[Obj]:
        """Init containers (native sidecars among them) and app containers."""
        return [*self.pod.get("initContainers", []), *self.pod["containers"]]

    def container(self, name: str) -> Obj:
        return next(c for c in self.containers() if c["name"] == name)

    def selected_by(self, selector: Mapping[str, Any]) -> bool:
        """Whether a label selector (matchLabels form, or a Service's plain map) picks this pod."""
        wanted = selector.get("matchLabels", selector) if "matchExpressions" not in selector else None
        assert wanted is not None, "matchExpressions are not used in k8s/; extend this check if they appear"
        return all(self.labels.get(key) == value for key, value in wanted.items())


def workloads(objects: list[Obj]) -> list[Workload]:
    return [Workload(o["kind"], o["metadata"]["name"], o) for o in objects if o["kind"] in WORKLOAD_KINDS]


def workload(objects: list[Obj], name: str) -> Workload:
    return next(w for w in workloads(objects) if w.name == name)


def has_port(container: Obj, port: int | str, protocol: str = "TCP") -> bool:
    """Whether `container` declares `port` (a number or a port name) for `protocol`."""
    for declared in container.get("ports", []):
        if declared.get("protocol", "TCP") != protocol:
            continue
        if port in (declared["containerPort"], declared.get("name")):
            return True
    return False


def probes(container: Obj) -> Iterator[tuple[str, Obj]]:
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        if kind in container:
            yield kind, container[kind]


def probe_port(probe: Obj) -> int | str:
    for handler in ("httpGet", "tcpSocket", "grpc"):
        if handler in probe:
            port: int | str = probe[handler]["port"]
            return port
    raise AssertionError(f"probe without a network handler: {probe}")


# ---------------------------------------------------------------- the meshlet side of the pods

FAKE_FIELDS = {
    "status.podIP": "10.244.1.7",
    "status.hostIP": "192.168.49.2",
    "metadata.name": "pod-abc12",
    "metadata.namespace": "meshlet",
    "spec.nodeName": "node-1",
}
_REF = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def pod_env(container: Obj, fields: Mapping[str, str] = FAKE_FIELDS) -> dict[str, str]:
    """`container`'s environment as the kubelet builds it: downward-API fields filled in from `fields`, and
    ``$(VAR)`` expanded from the variables defined above it (an unknown reference stays as written)."""
    env: dict[str, str] = {}
    for var in container.get("env", []):
        if "valueFrom" in var:
            field = var["valueFrom"].get("fieldRef", {}).get("fieldPath")
            assert field in fields, f"{container['name']}: {var['name']} comes from {var['valueFrom']}"
            env[var["name"]] = fields[field]
        else:
            env[var["name"]] = _REF.sub(lambda m: env.get(m.group(1), m.group(0)), str(var.get("value", "")))
    return env


@dataclass(frozen=True)
class MeshletPod:
    """A shop pod: the container that runs meshlet (the SDK app or the sidecar) and its meshlet.yaml."""

    workload: Workload
    meshlet_container: Obj
    app_container: Obj
    config_map: str
    config_text: str

    @property
    def service(self) -> str:
        return self.workload.name

    @property
    def config(self) -> Obj:
        loaded: Obj = yaml.safe_load(self.config_text)
        return loaded

    @property
    def sidecar_mode(self) -> bool:
        return self.meshlet_container is not self.app_container


def meshlet_pods(objects: list[Obj]) -> dict[str, MeshletPod]:
    """Every pod that mounts a ConfigMap at /etc/meshlet, keyed by workload name."""
    config_maps = named(objects, "ConfigMap")
    found: dict[str, MeshletPod] = {}
    for w in workloads(objects):
        volumes = {v["name"]: v for v in w.pod.get("volumes", [])}
        for container in w.containers():
            for mount in container.get("volumeMounts", []):
                if mount["mountPath"] != "/etc/meshlet":
                    continue
                config_map = volumes[mount["name"]]["configMap"]["name"]
                app = next(c for c in w.pod["containers"] if c["name"] == w.name)
                text = config_maps[config_map]["data"]["meshlet.yaml"]
                found[w.name] = MeshletPod(w, container, app, config_map, text)
    return found


def config_path(pod: MeshletPod, tmp_path: Path) -> Path:
    path = tmp_path / f"{pod.service}.yaml"
    path.write_text(pod.config_text)
    return path


# ---------------------------------------------------------------- meshlet-edge

EDGE_CONFIG_DIR = "/etc/meshlet-edge"


@dataclass(frozen=True)
class EdgePod:
    """The edge's Deployment, its container and its meshlet.yaml (mounted at /etc/meshlet-edge, apart from the
    shop pods' /etc/meshlet: it is a caller of the mesh, not a service in it)."""

    workload: Workload
    container: Obj
    config_text: str

    @property
    def config(self) -> Obj:
        loaded: Obj = yaml.safe_load(self.config_text)
        return loaded


def edge_pod(objects: list[Obj]) -> EdgePod:
    w = workload(objects, "edge")
    container = w.container("edge")
    volumes = {v["name"]: v for v in w.pod.get("volumes", [])}
    [mount] = [m for m in container["volumeMounts"] if m["mountPath"] == EDGE_CONFIG_DIR]
    config_map = named(objects, "ConfigMap")[volumes[mount["name"]]["configMap"]["name"]]
    return EdgePod(w, container, config_map["data"]["meshlet.yaml"])
