"""qcow2 refcounts: the two-level refcount table (table → blocks of 2**refcount_order-bit
entries), read, updated in place and grown, and cluster allocation: like qemu
(block/qcow2-refcount.c), the lowest run of clusters whose refcount is 0 (inside the file
or past its end), found from a hint that a freed cluster moves back
(docs/interop/qcow2.txt §Host cluster management; specs/qcow2.md §Writing).

All I/O goes through the owning device's pread/pwrite (image/hostio.py), so an edit's undo
journal records every change.
"""
from __future__ import annotations

from array import array
from typing import Protocol

from ...errors import ImageError
from ...formats import qcow2 as q
from .header import Qcow2Meta

BLOCK_CACHE = 256


class HostFile(Protocol):
    meta: Qcow2Meta
    path: str
    file_bytes: int

    def pread(self, length: int, offset: int) -> bytes: ...

    def pwrite(self, data: bytes | bytearray | memoryview, offset: int) -> None: ...


def be_u64s(data: bytes) -> array:
    a = array("Q")
    a.frombytes(data)
    if a.itemsize != 8:
        raise RuntimeError("array('Q') is not 64-bit on this platform")
    import sys
    if sys.byteorder == "little":
        a.byteswap()
    return a


def u64s_be(a: array) -> bytes:
    import sys
    if sys.byteorder == "little":
        b = array("Q", a)
        b.byteswap()
        return b.tobytes()
    return a.tobytes()


class Refcounts:
    """The refcount structure of one writable image."""

    def __init__(self, host: HostFile) -> None:
        self.host = host
        m = host.meta
        self.cs = m.cluster_bytes
        self.cb = m.cluster_bits
        self.order = m.refcount_order
        self.max_ref = (1 << m.refcount_bits) - 1
        self.rbe = m.refblock_entries
        self.table_offset = m.refcount_table_offset
        self.table_clusters = m.refcount_table_clusters
        self.table = be_u64s(host.pread(self.table_clusters * self.cs, self.table_offset))
        self._blocks: dict[int, bytearray] = {}
        self.end = -(-host.file_bytes // self.cs) * self.cs
        self.hint = 0                    # where the search for free clusters starts
        # Free clusters inside the file are taken only once the refcounts have been found
        # to cover every reference (edit.py verifies them, a rebuild makes them so): a
        # cluster in use whose refcount says 0 must never be handed out again. Until then
        # new clusters go to the end of the file.
        self.reuse = False
        self._reserved: tuple[int, int] = (0, 0)   # clusters taken, refcounts still to come

    # -- reading -----------------------------------------------------------------------------
    def _block(self, index: int) -> tuple[int, bytearray] | None:
        if index >= len(self.table):
            return None
        off = self.table[index] & q.REFT_OFFSET_MASK
        if off == 0:
            return None
        blk = self._blocks.get(off)
        if blk is None:
            if off % self.cs or off + self.cs > self.host.file_bytes:
                raise ImageError(f"refcount block {index} at 0x{off:x} is misaligned or past the "
                                 "end of the file", path=self.host.path, offset=off)
            if len(self._blocks) >= BLOCK_CACHE:
                self._blocks.pop(next(iter(self._blocks)))
            blk = bytearray(self.host.pread(self.cs, off))
            self._blocks[off] = blk
        return off, blk

    def get(self, host_offset: int) -> int:
        ci = host_offset >> self.cb
        hit = self._block(ci // self.rbe)
        return 0 if hit is None else q.refcount_get(hit[1], ci % self.rbe, self.order)

    # -- writing -----------------------------------------------------------------------------
    def add(self, host_offset: int, delta: int) -> int:
        """Change one cluster's refcount by `delta` (creating its block if needed)."""
        ci = host_offset >> self.cb
        hit = self._block(ci // self.rbe)
        if hit is None:
            self._new_block(ci // self.rbe)
            hit = self._block(ci // self.rbe)
            assert hit is not None
        off, blk = hit
        idx = ci % self.rbe
        value = q.refcount_get(blk, idx, self.order) + delta
        if value < 0 or value > self.max_ref:
            raise ImageError(f"refcount of cluster 0x{host_offset:x} would become {value} "
                             f"({self.host.meta.refcount_bits}-bit refcounts): the image's "
                             "refcounts are damaged; run `vdisk check`", path=self.host.path,
                             offset=host_offset)
        q.refcount_set(blk, idx, self.order, value)
        if value == 0:
            self.hint = min(self.hint, ci)
        bits = self.host.meta.refcount_bits
        lo = idx * bits // 8
        hi = max(lo + 1, (idx + 1) * bits // 8)
        self.host.pwrite(blk[lo:hi], off + lo)
        return value

    # -- allocation --------------------------------------------------------------------------
    def _next_free(self, ci: int) -> int:
        """The first cluster index >= ci whose refcount is 0 and that is not reserved."""
        lo, hi = self._reserved
        end_ci = self.end >> self.cb
        while ci < end_ci:
            if lo <= ci < hi:
                ci = hi
                continue
            hit = self._block(ci // self.rbe)
            if hit is None:
                return ci                # no refcount block: every cluster it covers is free
            k = q.refcount_find_zero(hit[1], ci % self.rbe, self.order)
            if k is None:
                ci = (ci // self.rbe + 1) * self.rbe
                continue
            ci = ci - ci % self.rbe + k
            if not lo <= ci < hi:
                return ci
        return max(ci, hi) if lo <= ci < hi else ci

    def find_free(self, n: int) -> int:
        """The host offset of the first run of n free clusters from the hint, which then
        points past the run (qemu's alloc_clusters_noref: clusters skipped on the way
        are not looked at again until one is freed; past the end of the file every
        cluster is free)."""
        ci = self._next_free(self.hint if self.reuse else max(self.hint, self.end >> self.cb))
        while True:
            for k in range(1, n):
                if self._next_free(ci + k) != ci + k:
                    ci = self._next_free(ci + k)
                    break
            else:
                self.hint = ci + n
                return ci << self.cb

    def alloc(self, n: int = 1, zero: bool = True) -> int:
        """n contiguous free clusters (the lowest run: reused inside the file, else at its
        end), each with refcount 1 (zeroed unless the caller writes them whole)."""
        while True:
            start = self.find_free(n)
            first, last = (start >> self.cb) // self.rbe, ((start >> self.cb) + n - 1) // self.rbe
            missing = [k for k in range(first, last + 1)
                       if k >= len(self.table) or not self.table[k] & q.REFT_OFFSET_MASK]
            if not missing:
                break
            self._new_block(missing[0])
            # the block may have taken a cluster of the run: search again from its start
            self.hint = min(self.hint, start >> self.cb)
        self._take(start, n)
        if zero:
            self.host.pwrite(bytes(n * self.cs), start)
        for k in range(n):
            self.add(start + k * self.cs, 1)
        return start

    def _take(self, start: int, n: int) -> None:
        self.end = max(self.end, start + n * self.cs)

    def _new_block(self, index: int) -> None:
        """A zeroed refcount block for table entry `index`, in the lowest free cluster: when
        that cluster lies in the range the block covers, the block counts itself (as qemu
        places them); a free cluster in another range without a block gets that range's
        block first."""
        if index >= len(self.table):
            self._grow_table(index + 1)
            if self.table[index] & q.REFT_OFFSET_MASK:
                return   # growing the table placed this block already
        while True:
            off = self.find_free(1)
            ci = off >> self.cb
            own = ci // self.rbe == index
            if own or (ci // self.rbe < len(self.table)
                       and self.table[ci // self.rbe] & q.REFT_OFFSET_MASK):
                break
            self._new_block(ci // self.rbe)
        self._take(off, 1)
        blk = bytearray(self.cs)
        if own:
            q.refcount_set(blk, ci % self.rbe, self.order, 1)
        self.host.pwrite(blk, off)
        self._blocks[off] = blk
        self.table[index] = off
        self.host.pwrite(off.to_bytes(8, "big"), self.table_offset + index * 8)
        if not own:
            self.add(off, 1)

    def _grow_table(self, min_entries: int) -> None:
        """Move the refcount table to the lowest run of free clusters large enough."""
        per = self.cs // 8
        clusters = max(self.table_clusters * 2, -(-(min_entries + 2) // per))
        if clusters * self.cs > q.MAX_REFTABLE_BYTES:
            raise ImageError("the refcount table would exceed qemu's limit of "
                             f"{q.MAX_REFTABLE_BYTES >> 20} MiB", path=self.host.path)
        old_off, old_clusters = self.table_offset, self.table_clusters
        start = self.find_free(clusters)
        self._take(start, clusters)
        self._reserved = (start >> self.cb, (start >> self.cb) + clusters)
        table = array("Q", self.table)
        table.extend([0] * (clusters * per - len(table)))
        self.table, self.table_offset, self.table_clusters = table, start, clusters
        self.host.pwrite(u64s_be(self.table), start)
        for k in range(clusters):
            self.add(start + k * self.cs, 1)   # may add blocks, never in the reserved run
        self._reserved = (0, 0)
        self.host.pwrite(u64s_be(self.table), start)
        self.host.pwrite(start.to_bytes(8, "big") + clusters.to_bytes(4, "big"), 48)
        self.host.meta.refcount_table_offset, self.host.meta.refcount_table_clusters = start, clusters
        for k in range(old_clusters):
            self.add(old_off + k * self.cs, -1)
