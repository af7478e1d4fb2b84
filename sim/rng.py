"""Named, seeded random streams: one per component, derived from the run seed.

There is no global RNG in servesim. A component asks ``streams.get("workload.lengths")`` and
gets a :class:`numpy.random.Generator` seeded from ``(run_seed, fnv1a64(name))``, so adding a
new stream never changes the draws of existing ones (cf. BLIS ``PartitionedRNG``).
"""

from __future__ import annotations

import numpy as np

_FNV_OFFSET = 0xCBF29CE484222325  # FNV-1a 64-bit offset basis (Fowler/Noll/Vo spec)
_FNV_PRIME = 0x100000001B3  # FNV-1a 64-bit prime (Fowler/Noll/Vo spec)


def fnv1a64(text: str) -> int:
    """64-bit FNV-1a hash of ``text`` (UTF-8); stable across runs and platforms."""
    h = _FNV_OFFSET
    for byte in text.encode("utf-8"):
        h ^= byte
        h = (h * _FNV_PRIME) & 0xFFFFFFFFFFFFFFFF
    return h


class RandomStreams:
    """Factory of independent named generators for one run seed."""

    def __init__(self, seed: int) -> None:
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.seed = int(seed)
        self._streams: dict[str, np.random.Generator] = {}

    def get(self, name: str) -> np.random.Generator:
        """The generator for component ``name`` (created on first use, then cached)."""
        gen = self._streams.get(name)
        if gen is None:
            gen = np.random.Generator(np.random.PCG64(np.random.SeedSequence([self.seed, fnv1a64(name)])))
            self._streams[name] = gen
        return gen
