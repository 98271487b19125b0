"""Faults on a pod's link, made with the kernel's own tools inside the pod's network namespace: nftables rules
that drop packets on its eth0 (loss, partitions, black holes, one-way partitions) and `tc netem` for latency.
Loopback inside the pod is never touched. `heal` removes every fault a pod has."""

from __future__ import annotations

import shutil
import subprocess

from tests.k8s.netns import Pod

TABLE = "meshlet_fault"


def _run(argv: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=20, check=False)


def nft_unavailable(pod: Pod) -> str | None:
    """Why packets cannot be dropped in `pod` (None when they can)."""
    if shutil.which("nft") is None:
        return "needs nftables' `nft` (apt-get install nftables)"
    probe = _run(pod.argv(["nft", "list", "tables"]))
    return None if probe.returncode == 0 else f"nft cannot run in a namespace here: {probe.stderr.strip()}"


def netem_unavailable(pod: Pod) -> str | None:
    """Why `tc netem` cannot delay `pod`'s packets (None when it can): kernels built without sch_netem."""
    if shutil.which("tc") is None:
        return "needs iproute2's `tc`"
    added = _run(pod.argv(["tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms"]))
    if added.returncode != 0:
        return f"this kernel has no sch_netem (`tc qdisc add ... netem`: {added.stderr.strip()})"
    _run(pod.argv(["tc", "qdisc", "del", "dev", "lo", "root"]))
    return None


def drop(pod: Pod, *, inbound: str | None, outbound: str | None, peer: str | None = None) -> None:
    """Drop packets on `pod`'s eth0 that match `inbound` / `outbound` (an nft expression, "" for every packet,
    None to leave that direction alone), only those to and from `peer` when given (the rest of the pod's
    traffic, its agent's heartbeats say, goes on)."""
    matches = {"input": ("iifname", "saddr", inbound), "output": ("oifname", "daddr", outbound)}
    chains = []
    for hook, (side, direction, match) in matches.items():
        rule = "" if match is None else f'{side} "eth0" {f"ip {direction} {peer} " if peer else ""}{match} drop; '
        chains.append(f"  chain {hook} {{ type filter hook {hook} priority 0; policy accept; {rule}}}")
    heal(pod)
    script = f"table inet {TABLE} {{\n" + "\n".join(chains) + "\n}\n"
    done = _run(pod.argv(["nft", "-f", "-"]), stdin=script)
    assert done.returncode == 0, f"nft refused the fault: {done.stderr}\n{script}"


def loss(pod: Pod, percent: int, peer: str | None = None) -> None:
    """Lose `percent` % of the packets each way, at random."""
    rule = f"numgen random mod 100 < {percent}"
    drop(pod, inbound=rule, outbound=rule, peer=peer)


def black_hole(pod: Pod, peer: str | None = None) -> None:
    """Every packet in and out vanishes: no RST, no ICMP, the peers learn nothing."""
    drop(pod, inbound="", outbound="", peer=peer)


def replies_lost(pod: Pod, peer: str | None = None) -> None:
    """A one-way partition: packets reach the pod, nothing it sends leaves."""
    drop(pod, inbound=None, outbound="", peer=peer)


def delay(pod: Pod, ms: int, jitter_ms: int) -> None:
    done = _run(
        pod.argv(["tc", "qdisc", "replace", "dev", "eth0", "root", "netem", "delay", f"{ms}ms", f"{jitter_ms}ms"])
    )
    assert done.returncode == 0, f"tc refused the delay: {done.stderr}"


def heal(pod: Pod) -> None:
    _run(pod.argv(["nft", "delete", "table", "inet", TABLE]))
    _run(pod.argv(["tc", "qdisc", "del", "dev", "eth0", "root"]))
