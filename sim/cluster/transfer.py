"""The link a request's KV cache crosses from a prefill replica to a decode replica.

A transfer of ``b`` bytes takes ``latency_s + b / bandwidth_bytes_per_s``: one request's whole
prompt KV (``2 · layers · kv_heads · head_dim · dtype bytes`` per token, all layers) over one
link, with no contention between transfers (each pair of replicas has its own path, as NIXL's
point-to-point RDMA reads do). Presets name a link class; ``kv_transfer.bandwidth_gb_per_s`` and
``latency_ms`` override either part.
"""

from __future__ import annotations

from dataclasses import dataclass

from sim.config import KvTransferConfig
from sim.registry import Registry


@dataclass(frozen=True)
class Link:
    """A KV-transfer path: fixed latency (s) plus size over bandwidth (bytes/s)."""

    name: str
    bandwidth_bytes_per_s: float
    latency_s: float

    def seconds(self, num_bytes: float) -> float:
        return self.latency_s + num_bytes / self.bandwidth_bytes_per_s


LINKS: Registry[Link] = Registry("KV-transfer link")
# One 400 Gb/s NDR InfiniBand / RoCE NIC per GPU (NVIDIA ConnectX-7 datasheet: 400 Gb/s =
# 50 GB/s); latency: transfer set-up and completion notification of a NIXL/UCX read,
# of the order of a millisecond end to end (a few µs of wire latency plus the connector's
# per-request handshake through the decode scheduler).
LINKS.add("rdma", Link("rdma", 50e9, 1e-3), "RDMA, one 400 Gb/s NIC per GPU (ConnectX-7): 50 GB/s, 1 ms per transfer")
# NVLink 4 between GPUs of one HGX H100 node: 900 GB/s total bidirectional per GPU (NVIDIA H100
# datasheet) = 450 GB/s per direction; a prefill and a decode replica on the same node.
LINKS.add("nvlink", Link("nvlink", 450e9, 0.1e-3), "NVLink 4 inside an H100 node: 450 GB/s per direction, 0.1 ms per transfer")
# Kernel TCP over 100 GbE (12.5 GB/s line rate); a single TCP stream achieves well below line
# rate — about 3 GB/s is typical without zero-copy tuning — and a connection round trip plus
# serialisation costs milliseconds.
LINKS.add("tcp", Link("tcp", 3e9, 5e-3), "TCP over 100 GbE: about 3 GB/s per stream, 5 ms per transfer")


def resolve_link(cfg: KvTransferConfig) -> Link:
    """The preset named by ``cfg.link`` with ``cfg``'s overrides (ConfigError for an unknown preset)."""
    base = LINKS.get(cfg.link, "cluster.kv_transfer.link")
    bw = cfg.bandwidth_gb_per_s * 1e9 if cfg.bandwidth_gb_per_s is not None else base.bandwidth_bytes_per_s
    lat = cfg.latency_ms * 1e-3 if cfg.latency_ms is not None else base.latency_s
    return Link(base.name, bw, lat)
