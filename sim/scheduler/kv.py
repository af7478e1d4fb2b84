"""Paged KV-cache block manager with optional prefix caching (vLLM V1 ``KVCacheManager``).

Blocks hold ``block_size`` tokens. A request owns ``ceil(tokens / block_size)`` blocks for the
tokens it has computed or is computing. With prefix caching, every *full* block gets a hash of
the whole token prefix up to its end; freed blocks keep their hash and stay reusable until the
allocator evicts them, least recently freed first (vLLM's ``FreeKVCacheBlockQueue``; a request's
blocks are freed tail first so its prefix outlives its suffix).

Token identity is modelled without token ids: block ``i`` of a request is shared with every
request of the same prefix group when it lies entirely inside the group's shared prefix
(``(i + 1) * block_size <= prefix_tokens``); past that, a block entirely inside the prompt of a
pool prompt (``prompt_id`` >= 0, the same tokens sent again) is shared with every request of that
pool prompt; any other block is unique to its request, and still reusable by that same request
after a preemption (as in vLLM, whose hashes cover output tokens).

CPU offloading tier (``num_cpu_blocks`` > 0, vLLM's ``--kv-offloading-size``; prefix caching
only): when the allocator evicts a free block that is the cached copy of its hash, that hash
moves to a CPU tier of ``num_cpu_blocks`` blocks, least recently used evicted first. A request
whose leading blocks miss the GPU cache but are in the tier loads them back
(:meth:`get_offloaded_run`, then ``allocate_slots(..., num_loaded_blocks=...)``): they get
fresh GPU blocks, count as computed, and the caller charges the transfer. Stores are free here
(the copy runs asynchronously over PCIe; see docs/architecture.md).

Invariants (checked by :meth:`check`): ``0 <= used <= num_blocks``; a block is either free
(ref count 0, in the free queue) or owned (ref count > 0, not in the queue); the CPU tier holds
at most ``num_cpu_blocks`` hashes.
"""

from __future__ import annotations

from collections import OrderedDict

from sim.entities import Request, prompt_block_key


def _block_keys(req: Request, lo: int, hi: int, block_size: int) -> list[tuple[str, int, int]]:
    """``prompt_block_key(req, j, block_size)`` for ``j`` in ``range(lo, hi)``, built by range
    (the shared-prefix blocks, then the pool prompt's, then the request's own)."""
    keys: list[tuple[str, int, int]] = []
    j = lo
    if req.prefix_group >= 0:
        top = min(hi, req.prefix_tokens // block_size)  # (j + 1) * bs <= prefix_tokens
        if j < top:
            g = req.prefix_group
            keys = [("p", g, k) for k in range(j, top)]
            j = top
    if req.prompt_id >= 0:
        top = min(hi, req.prompt_tokens // block_size)
        if j < top:
            q = req.prompt_id
            keys += [("q", q, k) for k in range(j, top)]
            j = top
    if j < hi:
        r = req.request_id
        keys += [("r", r, k) for k in range(j, hi)]
    return keys


class KVCacheManager:
    """Allocates KV blocks to requests. All methods are O(blocks touched)."""

    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = False, num_cpu_blocks: int = 0) -> None:
        if num_blocks <= 0 or block_size <= 0:
            raise ValueError(f"num_blocks and block_size must be > 0, got {num_blocks}, {block_size}")
        if num_cpu_blocks < 0 or (num_cpu_blocks and not enable_prefix_caching):
            raise ValueError(f"num_cpu_blocks must be >= 0, and > 0 only with prefix caching, got {num_cpu_blocks}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self._ref = [0] * num_blocks
        self._hash: list[object | None] = [None] * num_blocks
        # free blocks in eviction order (head = evicted first); values unused
        self._free: OrderedDict[int, None] = OrderedDict((b, None) for b in range(num_blocks))
        self._cached: dict[object, int] = {}
        self._owned: dict[int, list[int]] = {}
        self.num_cache_hit_tokens = 0
        self.num_cache_query_tokens = 0
        # CPU offloading tier: hashes in LRU order (head = evicted first); values unused
        self.num_cpu_blocks = num_cpu_blocks
        self._cpu: OrderedDict[object, None] = OrderedDict()
        self._cpu_pinned: frozenset[object] = frozenset()  # being loaded by the running allocation
        self.num_offload_stored_blocks = 0  # hashes copied GPU -> CPU
        self.num_offload_loaded_blocks = 0  # blocks copied CPU -> GPU
        self.num_offload_dropped_blocks = 0  # CPU-tier hashes evicted, or stores refused while a load held the tier

    # ----------------------------------------------------------------- queries
    @property
    def num_free_blocks(self) -> int:
        """Blocks not owned by any request (cached-but-free blocks count as free)."""
        return len(self._free)

    @property
    def num_used_blocks(self) -> int:
        return self.num_blocks - len(self._free)

    @property
    def usage(self) -> float:
        """Fraction of blocks owned by requests, in [0, 1]."""
        return self.num_used_blocks / self.num_blocks

    @property
    def offloading(self) -> bool:
        """Whether a CPU tier is behind the GPU cache."""
        return self.num_cpu_blocks > 0

    @property
    def num_cpu_cached_blocks(self) -> int:
        """Hashes held by the CPU tier (<= ``num_cpu_blocks``)."""
        return len(self._cpu)

    def blocks_of(self, request_id: int) -> int:
        return len(self._owned.get(request_id, ()))

    def blocks_for_tokens(self, tokens: int) -> int:
        return -(-tokens // self.block_size)

    def _block_key(self, req: Request, index: int) -> object:
        return prompt_block_key(req, index, self.block_size)

    def get_computed_blocks(self, req: Request) -> list[int]:
        """Cached blocks that hold ``req``'s leading tokens (prefix-cache hit), in order.

        Only for a request with no computed tokens. As in vLLM, at most ``num_tokens - 1``
        tokens can hit, so the last token is always computed (it produces the next sample).
        """
        if not self.enable_prefix_caching or req.num_computed_tokens:
            return []
        self.num_cache_query_tokens += req.num_tokens
        return self._cached_run(req, (req.num_tokens - 1) // self.block_size)

    def _cached_run(self, req: Request, limit: int) -> list[int]:
        """The cached blocks holding ``req``'s first blocks, up to ``limit``, stopping at the first miss."""
        hits: list[int] = []
        get = self._cached.get
        lo = 0
        while lo < limit:  # keys built a run at a time (most queries hit many blocks or none)
            hi = min(limit, lo + 32 if lo else 4)
            for key in _block_keys(req, lo, hi, self.block_size):
                block = get(key)
                if block is None:
                    return hits
                hits.append(block)
            lo = hi
        return hits

    def get_offloaded_run(self, req: Request, num_gpu_hits: int) -> int:
        """How many of ``req``'s blocks after its ``num_gpu_hits`` GPU hits (from
        :meth:`get_computed_blocks`, same precondition) the CPU tier holds, consecutively. Capped
        like the GPU hits, so the last prompt token is always computed. Reads only (no LRU touch:
        the allocation that loads them does that)."""
        if not self._cpu or req.num_computed_tokens:
            return 0
        cpu, limit = self._cpu, (req.num_tokens - 1) // self.block_size
        n = num_gpu_hits
        while n < limit and self._block_key(req, n) in cpu:
            n += 1
        return n - num_gpu_hits

    def _offload_store(self, key: object) -> None:
        """The GPU evicts the cached copy of ``key``: copy it to the CPU tier (most recently
        used), evicting the tier's least recently used hash when full. A store that would evict
        a hash being loaded right now is dropped (vLLM's CPU manager refuses to evict blocks
        with pending loads)."""
        cpu = self._cpu
        if key in cpu:
            cpu.move_to_end(key)
            return
        if len(cpu) >= self.num_cpu_blocks:
            oldest = next(iter(cpu))
            if oldest in self._cpu_pinned:
                self.num_offload_dropped_blocks += 1
                return
            del cpu[oldest]
            self.num_offload_dropped_blocks += 1
        cpu[key] = None
        self.num_offload_stored_blocks += 1

    # -------------------------------------------------------------- mutations
    def allocate_slots(self, req: Request, num_new_tokens: int, computed_blocks: list[int] | None = None, num_loaded_blocks: int = 0) -> bool:
        """Make room for ``num_new_tokens`` beyond what ``req`` has computed.

        ``computed_blocks`` (from :meth:`get_computed_blocks`) are prefix-cache hits to take over
        first; ``req.num_computed_tokens`` must not yet include them. ``num_loaded_blocks`` (from
        :meth:`get_offloaded_run`) blocks after them are loaded from the CPU tier: they get fresh
        GPU blocks, hashed at once; ``num_new_tokens`` must not include them. Transactional:
        returns False and changes nothing when the free blocks do not suffice.
        """
        owned = self._owned.get(req.request_id)
        have = len(owned) if owned else 0
        if not computed_blocks and not self.enable_prefix_caching and owned is not None:
            # hot path (a running request growing, no cache): no hits, no hashes
            need = -(-(req.num_computed_tokens + num_new_tokens) // self.block_size) - have
            if need <= 0:
                return True
            free = self._free
            if need > len(free):
                return False
            ref, hashes = self._ref, self._hash
            for _ in range(need):
                b = free.popitem(last=False)[0]
                hashes[b] = None
                ref[b] = 1
                owned.append(b)
            return True
        hits = computed_blocks or []
        bs = self.block_size
        total_tokens = req.num_computed_tokens + (len(hits) + num_loaded_blocks) * bs + num_new_tokens
        need = -(-total_tokens // bs) - have - len(hits)
        ref, free = self._ref, self._free
        reviving = sum(1 for b in hits if ref[b] == 0) if hits else 0
        if need + reviving > len(free):
            return False
        if num_loaded_blocks:
            # touch the loaded hashes (most recently used) and keep this allocation's own
            # evictions from pushing them out of the tier
            loaded = [self._block_key(req, len(hits) + i) for i in range(num_loaded_blocks)]
            for key in loaded:
                self._cpu.move_to_end(key)
            self._cpu_pinned = frozenset(loaded)
            self.num_offload_loaded_blocks += num_loaded_blocks
        if owned is None:
            owned = self._owned[req.request_id] = []
        if hits:
            for b in hits:
                if ref[b] == 0:
                    del free[b]
                ref[b] += 1
                owned.append(b)
            self.num_cache_hit_tokens += len(hits) * bs
        if need > 0:
            hashes, cached, pop, add = self._hash, self._cached, free.popitem, owned.append
            cpu = self.num_cpu_blocks
            for _ in range(need):
                b = pop(last=False)[0]
                h = hashes[b]
                if h is not None:
                    if cached.get(h) == b:
                        del cached[h]
                        if cpu:
                            self._offload_store(h)  # the last GPU copy of these tokens
                    hashes[b] = None
                ref[b] = 1
                add(b)
        if num_loaded_blocks:
            self._cpu_pinned = frozenset()
        if self.enable_prefix_caching:
            self._cache_full_blocks(req, owned, total_tokens)
        return True

    def append_blocks(self, request_ids: list[int]) -> None:
        """Give each listed request one more block, in list order (a running decode whose
        next token starts a new block). Same effect as ``allocate_slots(req, 1)`` for each
        (with prefix caching: the evicted blocks leave the cache, and the CPU tier when there
        is one, in the same order; the new block is empty, so nothing is hashed).

        Preconditions: every request already owns blocks, its computed tokens fill them
        exactly, and at least ``len(request_ids)`` blocks are free (the caller checked;
        nothing is rolled back).
        """
        owned, pop = self._owned, self._free.popitem
        ref, hashes = self._ref, self._hash
        if not self.enable_prefix_caching:
            for rid in request_ids:
                b = pop(last=False)[0]
                hashes[b] = None
                ref[b] = 1
                owned[rid].append(b)
            return
        cached = self._cached
        for rid in request_ids:
            b = pop(last=False)[0]
            h = hashes[b]
            if h is not None:
                if cached.get(h) == b:
                    del cached[h]
                    if self.num_cpu_blocks:
                        self._offload_store(h)  # the last GPU copy of these tokens
                hashes[b] = None
            ref[b] = 1
            owned[rid].append(b)

    def cache_filled_blocks(self, reqs: list[Request]) -> None:
        """Hash the last block of each request, in list order: a running decode whose token
        this step fills that block. Same effect as ``allocate_slots(req, 1)`` for each
        (prefix caching on; nothing to allocate).

        Preconditions: every earlier block of each request is hashed already (every step
        that filled one hashed it), and a decoded block's identity is the request's own, so
        its key is not cached yet (decode tokens past a preemption's recompute are new).
        """
        owned, hashes, cached = self._owned, self._hash, self._cached
        bs = self.block_size
        for req in reqs:
            blocks = owned[req.request_id]
            b = blocks[-1]
            if hashes[b] is None:
                key = prompt_block_key(req, len(blocks) - 1, bs)
                hashes[b] = key
                cached.setdefault(key, b)

    def cache_computed_blocks(self, req: Request) -> None:
        """Hash the blocks that ``req``'s computed tokens fill (prefix caching only): what
        :meth:`allocate_slots` does on each step that fills a block, for a caller that advanced
        ``req.num_computed_tokens`` without it (the engine's decode fast-forward)."""
        owned = self._owned.get(req.request_id)
        if self.enable_prefix_caching and owned:
            self._cache_full_blocks(req, owned, req.num_computed_tokens)

    def _cache_full_blocks(self, req: Request, owned: list[int], total_tokens: int) -> None:
        # Blocks become full (and hashable) as tokens are computed; walk back from the last
        # full block until one that already has a hash.
        bs = self.block_size
        full = min(total_tokens // bs, len(owned))
        hashes = self._hash
        i = full - 1
        while i >= 0 and hashes[owned[i]] is None:
            i -= 1
        if i + 1 >= full:
            return
        setdefault = self._cached.setdefault
        for key, b in zip(_block_keys(req, i + 1, full, bs), owned[i + 1 : full]):
            hashes[b] = key
            setdefault(key, b)

    def prewarm(self, req: Request) -> int:
        """Leave the full blocks of ``req``'s prompt in the prefix cache, unowned (as after an
        earlier request with that prompt finished): a server that already served it. Takes
        free blocks like an allocation (evicting the least recently freed), then frees them.
        Returns the tokens now cached (0 without prefix caching or when the blocks do not fit).
        Precondition: ``req`` is not running (it owns no blocks)."""
        if not self.enable_prefix_caching or req.request_id in self._owned:
            return 0
        tokens = (req.prompt_tokens // self.block_size) * self.block_size
        if tokens == 0:
            return 0
        hits = self._cached_run(req, tokens // self.block_size)  # not a request: no query counted
        cached = len(hits) * self.block_size
        if cached >= tokens:
            return tokens
        if not self.allocate_slots(req, tokens - cached, hits):
            return 0
        self.num_cache_hit_tokens -= cached  # allocate_slots counted the reused blocks as hits
        self.free(req)
        return tokens

    def free(self, req: Request) -> None:
        """Release all of ``req``'s blocks (tail first, so its prefix is evicted last)."""
        owned = self._owned.pop(req.request_id, None)
        if not owned:
            return
        if not self.enable_prefix_caching:
            # no sharing and no hashes without the cache: every block goes back, tail first
            ref = self._ref
            for b in owned:
                ref[b] = 0
            self._free.update(dict.fromkeys(reversed(owned)))
            return
        ref = self._ref
        if max(ref[b] for b in owned) == 1:
            # no block shared (the usual case): all go back, tail first, keeping their hashes
            for b in owned:
                ref[b] = 0
            self._free.update(dict.fromkeys(reversed(owned)))
            return
        free = self._free
        for b in reversed(owned):
            ref[b] -= 1
            if ref[b] == 0:
                free[b] = None

    def check(self) -> None:
        """Assert the block invariants (tests and debug runs)."""
        assert 0 <= self.num_used_blocks <= self.num_blocks
        owned_count = [0] * self.num_blocks
        for blocks in self._owned.values():
            for b in blocks:
                owned_count[b] += 1
        for b in range(self.num_blocks):
            assert owned_count[b] == self._ref[b], f"block {b}: ref {self._ref[b]} != owners {owned_count[b]}"
            assert (self._ref[b] == 0) == (b in self._free), f"block {b}: free-queue membership wrong"
        for h, b in self._cached.items():
            assert self._hash[b] == h
        assert len(self._cpu) <= self.num_cpu_blocks, f"CPU tier holds {len(self._cpu)} > {self.num_cpu_blocks} blocks"
