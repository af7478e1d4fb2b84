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

Invariants (checked by :meth:`check`): ``0 <= used <= num_blocks``; a block is either free
(ref count 0, in the free queue) or owned (ref count > 0, not in the queue).
"""

from __future__ import annotations

from collections import OrderedDict

from sim.entities import Request, prompt_block_key


class KVCacheManager:
    """Allocates KV blocks to requests. All methods are O(blocks touched)."""

    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = False) -> None:
        if num_blocks <= 0 or block_size <= 0:
            raise ValueError(f"num_blocks and block_size must be > 0, got {num_blocks}, {block_size}")
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
        for i in range(limit):
            block = self._cached.get(self._block_key(req, i))
            if block is None:
                break
            hits.append(block)
        return hits

    # -------------------------------------------------------------- mutations
    def allocate_slots(self, req: Request, num_new_tokens: int, computed_blocks: list[int] | None = None) -> bool:
        """Make room for ``num_new_tokens`` beyond what ``req`` has computed.

        ``computed_blocks`` (from :meth:`get_computed_blocks`) are prefix-cache hits to take over
        first; ``req.num_computed_tokens`` must not yet include them. Transactional: returns
        False and changes nothing when the free blocks do not suffice.
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
        total_tokens = req.num_computed_tokens + len(hits) * self.block_size + num_new_tokens
        need = self.blocks_for_tokens(total_tokens) - have - len(hits)
        reviving = sum(1 for b in hits if self._ref[b] == 0)
        if need + reviving > len(self._free):
            return False
        if owned is None:
            owned = self._owned[req.request_id] = []
        for b in hits:
            if self._ref[b] == 0:
                del self._free[b]
            self._ref[b] += 1
            owned.append(b)
        if hits:
            self.num_cache_hit_tokens += len(hits) * self.block_size
        for _ in range(max(need, 0)):
            b, _unused = self._free.popitem(last=False)
            h = self._hash[b]
            if h is not None:
                if self._cached.get(h) == b:
                    del self._cached[h]
                self._hash[b] = None
            self._ref[b] = 1
            owned.append(b)
        if self.enable_prefix_caching:
            self._cache_full_blocks(req, owned, total_tokens)
        return True

    def append_blocks(self, request_ids: list[int]) -> None:
        """Give each listed request one more block, in list order (a running decode whose
        next token starts a new block). Same effect as ``allocate_slots(req, 1)`` for each.

        Preconditions: prefix caching off, every request already owns blocks, and at least
        ``len(request_ids)`` blocks are free (the caller checked; nothing is rolled back).
        """
        owned, pop = self._owned, self._free.popitem
        ref, hashes = self._ref, self._hash
        for rid in request_ids:
            b = pop(last=False)[0]
            hashes[b] = None
            ref[b] = 1
            owned[rid].append(b)

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
        full = min(total_tokens // self.block_size, len(owned))
        i = full - 1
        while i >= 0 and self._hash[owned[i]] is None:
            i -= 1
        for j in range(i + 1, full):
            b = owned[j]
            key = self._block_key(req, j)
            self._hash[b] = key
            self._cached.setdefault(key, b)

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
        for b in reversed(owned):
            self._ref[b] -= 1
            if self._ref[b] == 0:
                self._free[b] = None
                if self._hash[b] is None or not self.enable_prefix_caching:
                    self._hash[b] = None

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
