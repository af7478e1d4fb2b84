"""The parts of a fleet that sit in front of the replicas: routers, admission control, and the
KV-transfer link of prefill/decode disaggregation. The fleet itself (replicas, snapshots,
hand-offs) is assembled in :mod:`sim.core.fleet`."""
