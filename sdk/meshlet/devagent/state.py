"""Everything the agent knows, in one place: catalog and health, KV, intentions and the Connect CA, all
sharing one Raft index. Pure: the server wires writes to blocking queries and to persistence."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from meshlet.devagent.catalog import Catalog
from meshlet.devagent.connect_ca import ConnectCA
from meshlet.devagent.intentions import Intentions
from meshlet.devagent.kv import KVStore
from meshlet.devagent.raft import RaftIndex


class AgentState:
    """The agent's whole state; `snapshot()`/`restore()` round-trip it for ``--data-dir``."""

    def __init__(
        self,
        *,
        node: str,
        datacenter: str,
        leaf_ttl_s: float,
        clock: Callable[[], float],
        wall_clock: Callable[[], float],
        cluster_id: str | None = None,
        node_id: str | None = None,
    ) -> None:
        self.index = RaftIndex()
        self.node = node
        self.datacenter = datacenter
        self.cluster_id = cluster_id or str(uuid.uuid4())
        self.node_id = node_id or str(uuid.uuid4())
        self.catalog = Catalog(self.index, node=node, node_id=self.node_id, datacenter=datacenter, clock=clock)
        self.kv = KVStore(self.index)
        self.intentions = Intentions(self.index)
        self.ca = ConnectCA(
            self.index,
            trust_domain=f"{self.cluster_id}.consul",
            datacenter=datacenter,
            leaf_ttl_s=leaf_ttl_s,
            now=wall_clock,
        )

    @property
    def trust_domain(self) -> str:
        return f"{self.cluster_id}.consul"

    def snapshot(self) -> dict[str, Any]:
        return {
            "version": 1,
            "index": self.index.value,
            "cluster_id": self.cluster_id,
            "node_id": self.node_id,
            "catalog": self.catalog.snapshot(),
            "kv": self.kv.snapshot(),
            "intentions": self.intentions.snapshot(),
            "ca": self.ca.snapshot(),
        }

    def restore(self, data: dict[str, Any]) -> None:
        """Load a snapshot taken by `snapshot()`; the index resumes where it was, so it never goes back."""
        self.index.value = max(self.index.value, int(data["index"]))
        self.cluster_id = data.get("cluster_id", self.cluster_id)
        self.node_id = data.get("node_id", self.node_id)
        self.catalog.restore(data["catalog"])
        self.kv.restore(data["kv"])
        self.intentions.restore(data["intentions"])
        self.ca.restore(data["ca"])
