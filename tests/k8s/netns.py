"""Pods on this machine, laid out as a node's CNI bridge plugin lays them out: one network namespace per pod, a
veth pair from each to a bridge in the root namespace, addresses from a private /24 whose first address is the
node's (the "host IP" the downward API gives pods). Everything made here is removed by `close()`."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field

SUBNET_PREFIX = "10.250"  # 10.250.<n>.0/24, n chosen so that no route on this machine overlaps it


def run_ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20, check=check)


def unavailable() -> str | None:
    """Why pods cannot be made here (None when they can): namespaces need root and iproute2."""
    if shutil.which("ip") is None:
        return "needs iproute2's `ip` (apt-get install iproute2)"
    if os.geteuid() != 0:
        return "network namespaces need root (ip netns add)"
    probe = f"meshlet-probe-{secrets.token_hex(3)}"
    made = run_ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"cannot create a network namespace here: {made.stderr.strip()}"
    run_ip("netns", "del", probe, check=False)
    return None


@dataclass(frozen=True)
class Pod:
    name: str
    netns: str
    ip: str

    def argv(self, command: Sequence[str]) -> list[str]:
        """`command` run inside this pod's network namespace, as every container of a pod shares it."""
        return ["ip", "netns", "exec", self.netns, *command]


@dataclass
class PodNetwork:
    """A bridge holding the node's address, and the pods attached to it."""

    tag: str
    subnet: str  # "10.250.n"
    pods: dict[str, Pod] = field(default_factory=dict)
    _links: list[str] = field(default_factory=list)

    @property
    def bridge(self) -> str:
        return f"mlbr{self.tag}"

    @property
    def host_ip(self) -> str:
        return f"{self.subnet}.1"

    @classmethod
    def create(cls) -> PodNetwork:
        routes = run_ip("-4", "route", "show", "table", "all").stdout
        free = [n for n in range(1, 255) if f"{SUBNET_PREFIX}.{n}." not in routes]
        assert free, f"every {SUBNET_PREFIX}.n.0/24 is in use on this machine"
        network = cls(tag=secrets.token_hex(2), subnet=f"{SUBNET_PREFIX}.{secrets.choice(free)}")
        try:
            run_ip("link", "add", network.bridge, "type", "bridge")
            network._links.append(network.bridge)
            run_ip("addr", "add", f"{network.host_ip}/24", "dev", network.bridge)
            run_ip("link", "set", network.bridge, "up")
        except BaseException:
            network.close()
            raise
        return network

    def add_pod(self, name: str) -> Pod:
        index = len(self.pods)
        pod = Pod(name, f"meshlet-{self.tag}-{name}", f"{self.subnet}.{10 + index}")
        host_end, pod_end = f"mlv{self.tag}h{index}", f"mlv{self.tag}p{index}"
        run_ip("netns", "add", pod.netns)
        self.pods[name] = pod
        run_ip("link", "add", host_end, "type", "veth", "peer", "name", pod_end)
        self._links.append(host_end)
        run_ip("link", "set", host_end, "master", self.bridge)
        run_ip("link", "set", host_end, "up")
        run_ip("link", "set", pod_end, "netns", pod.netns)
        inside = ("-n", pod.netns)
        run_ip(*inside, "link", "set", pod_end, "name", "eth0")
        run_ip(*inside, "addr", "add", f"{pod.ip}/24", "dev", "eth0")
        run_ip(*inside, "link", "set", "eth0", "up")
        run_ip(*inside, "link", "set", "lo", "up")
        run_ip(*inside, "route", "add", "default", "via", self.host_ip)
        return pod

    def close(self) -> None:
        """Delete the namespaces (their veth ends go with them), then the bridge; whatever is left, also after
        a failure half-way."""
        for pod in self.pods.values():
            run_ip("netns", "del", pod.netns, check=False)
        for link in reversed(self._links):
            run_ip("link", "del", link, check=False)
        self.pods.clear()
        self._links.clear()
