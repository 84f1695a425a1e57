"""The File Allocation Table, read lazily in chunks and written to every FAT copy together
(fatgen103 §4; specs/fat.md "FAT")."""
from __future__ import annotations

from array import array
from collections.abc import Iterator

from ..errors import FormatError
from ..formats import fat as ff
from ..image.base import BlockDevice
from .layout import FatLayout

CHUNK_BYTES = 64 * 1024


class FatTable:
    """One FAT (by default the first, or the active one) with write-through to all copies.

    Entries are read from `source_copy`; `flush()` writes every changed sector to each copy
    so that the copies never drift apart.
    """

    def __init__(self, dev: BlockDevice, layout: FatLayout, source_copy: int | None = None,
                 path: str | None = None) -> None:
        self.dev = dev
        self.layout = layout
        self.bits = layout.fat_type
        self.mask = ff.ENTRY_MASK[self.bits]
        self.path = path
        if source_copy is None:
            source_copy = layout.active_fat or 0
        self.source_copy = source_copy
        # FAT12 entries straddle byte boundaries: keep its (small, <= 6 KiB) table whole.
        self.chunk_bytes = layout.fat_bytes if self.bits == 12 else CHUNK_BYTES
        self._chunks: dict[int, bytearray] = {}
        self._dirty: set[int] = set()        # sector numbers within the FAT
        self.free_delta = 0
        self.next_free_hint = 2

    # -- raw access ---------------------------------------------------------------------
    def _chunk(self, index: int) -> bytearray:
        chunk = self._chunks.get(index)
        if chunk is None:
            start = index * self.chunk_bytes
            n = min(self.chunk_bytes, self.layout.fat_bytes - start)
            chunk = bytearray(self.dev.read_at(
                self.layout.fat_copy_offset(self.source_copy) + start, n))
            self._chunks[index] = chunk
        return chunk

    def _byte_pos(self, cluster: int) -> int:
        return cluster * 3 // 2 if self.bits == 12 else cluster * (self.bits // 8)

    def get(self, cluster: int) -> int:
        pos = self._byte_pos(cluster)
        ci, off = divmod(pos, self.chunk_bytes)
        chunk = self._chunk(ci)
        if self.bits == 12:
            v = chunk[off] | (chunk[off + 1] << 8)
            return v >> 4 if cluster & 1 else v & 0xFFF
        width = self.bits // 8
        return int.from_bytes(chunk[off:off + width], "little") & self.mask

    def set(self, cluster: int, value: int) -> None:
        if not 0 <= cluster <= self.layout.max_cluster:
            raise FormatError(f"FAT entry {cluster} is out of range", path=self.path)
        old = self.get(cluster)
        if old == 0 and value != 0 and cluster >= 2:
            self.free_delta -= 1
        elif old != 0 and value == 0 and cluster >= 2:
            self.free_delta += 1
        pos = self._byte_pos(cluster)
        ci, off = divmod(pos, self.chunk_bytes)
        chunk = self._chunk(ci)
        if self.bits == 12:
            v = chunk[off] | (chunk[off + 1] << 8)
            v = (v & 0x000F) | (value << 4) if cluster & 1 else (v & 0xF000) | (value & 0xFFF)
            chunk[off], chunk[off + 1] = v & 0xFF, v >> 8
            last = pos + 1
        elif self.bits == 16:
            chunk[off:off + 2] = (value & 0xFFFF).to_bytes(2, "little")
            last = pos + 1
        else:
            high = chunk[off + 3] & 0xF0  # the top 4 bits are reserved: keep them
            chunk[off:off + 4] = ((value & 0x0FFFFFFF) | (high << 24)).to_bytes(4, "little")
            last = pos + 3
        bps = self.layout.bytes_per_sector
        self._dirty.update(range(pos // bps, last // bps + 1))
        if value == 0 and cluster < self.next_free_hint:
            self.next_free_hint = max(2, cluster)

    # -- meaning of values ----------------------------------------------------------------
    def is_eoc(self, value: int) -> bool:
        return value >= ff.EOC_MIN[self.bits]

    def is_bad(self, value: int) -> bool:
        return value == ff.BAD_CLUSTER[self.bits]

    @property
    def eoc(self) -> int:
        return ff.EOC[self.bits]

    def chain(self, first: int, limit: int | None = None) -> Iterator[int]:
        """The clusters of a chain, stopping at an end mark, a bad value, a loop or `limit`."""
        if limit is None:
            limit = self.layout.cluster_count
        cluster, n = first, 0
        while 2 <= cluster <= self.layout.max_cluster and n < limit:
            yield cluster
            n += 1
            cluster = self.get(cluster)

    def chain_list(self, first: int, limit: int | None = None) -> list[int]:
        return list(self.chain(first, limit))

    # -- allocation -----------------------------------------------------------------------
    def find_free(self, start: int | None = None) -> int | None:
        """The first free cluster at or after `start` (wrapping), or None when full."""
        lo = self.next_free_hint if start is None else start
        top = self.layout.max_cluster
        if not 2 <= lo <= top:
            lo = 2
        for begin, end in ((lo, top + 1), (2, lo)):
            c = begin
            while c < end:
                if self.bits == 12:
                    if self.get(c) == 0:
                        return c
                    c += 1
                    continue
                width = self.bits // 8
                pos = c * width
                ci, off = divmod(pos, self.chunk_bytes)
                chunk = self._chunk(ci)
                stop = min(len(chunk), (end - ci * self.chunk_bytes // width) * width)
                zero = bytes(width)
                while off < stop:
                    hit = chunk.find(zero, off, stop)
                    if hit < 0:
                        break
                    if hit % width == 0:
                        return (ci * self.chunk_bytes + hit) // width
                    off = hit + (width - hit % width)
                c = (ci + 1) * self.chunk_bytes // width
        return None

    def allocate(self, count: int, after: int | None = None) -> list[int]:
        """Take `count` free clusters (preferring contiguous ones) and link them as one chain
        ending in EOC; link `after` (the current last cluster) to the first. Raises when full."""
        got: list[int] = []
        c: int | None = self.next_free_hint
        while len(got) < count:
            c = self.find_free(c)
            if c is None:
                for g in got:
                    self.set(g, 0)
                raise FormatError("no space left on the volume", path=self.path)
            got.append(c)
            self.set(c, self.eoc)  # reserve it at once so find_free skips it
            c = c + 1 if c < self.layout.max_cluster else 2
        for a, b in zip(got, got[1:], strict=False):
            self.set(a, b)
        if got:
            if after is not None:
                self.set(after, got[0])
            self.next_free_hint = got[-1] + 1 if got[-1] < self.layout.max_cluster else 2
        return got

    def free_chain(self, first: int) -> int:
        """Mark a chain free; returns how many clusters were released."""
        clusters = self.chain_list(first)
        for c in clusters:
            self.set(c, 0)
        return len(clusters)

    def count_free(self) -> int:
        """Free clusters by a full scan (used when FSInfo does not know)."""
        free = 0
        top = self.layout.max_cluster
        if self.bits == 12:
            return sum(1 for c in range(2, top + 1) if self.get(c) == 0)
        width = self.bits // 8
        per_chunk = self.chunk_bytes // width
        typecode = "H" if width == 2 else "I"
        for ci in range(top // per_chunk + 1):
            chunk = self._chunk(ci)
            arr = array(typecode, bytes(chunk[:len(chunk) - len(chunk) % width]))
            lo = max(2 - ci * per_chunk, 0)
            hi = min(len(arr), top + 1 - ci * per_chunk)
            if hi <= lo:
                continue
            mask = self.mask
            free += sum(1 for v in arr[lo:hi] if not v & mask)
        return free

    # -- writing ----------------------------------------------------------------------------
    @property
    def dirty(self) -> bool:
        return bool(self._dirty)

    def flush(self, copies: list[int] | None = None) -> None:
        """Write every changed sector to each FAT copy (all of them by default)."""
        if not self._dirty:
            return
        bps = self.layout.bytes_per_sector
        if copies is None:
            copies = list(range(self.layout.fat_count))
        sectors = sorted(self._dirty)
        runs: list[tuple[int, int]] = []
        for s in sectors:
            if runs and runs[-1][1] == s:
                runs[-1] = (runs[-1][0], s + 1)
            else:
                runs.append((s, s + 1))
        for a, b in runs:
            data = bytearray()
            for s in range(a, b):
                pos = s * bps
                ci, off = divmod(pos, self.chunk_bytes)
                data += self._chunk(ci)[off:off + bps]
            for k in copies:
                self.dev.write_at(self.layout.fat_copy_offset(k) + a * bps, bytes(data))
        self._dirty.clear()

    def mark_all_dirty(self) -> None:
        """Make the next flush rewrite the whole FAT (to copy one FAT over the others)."""
        self._dirty.update(range(self.layout.fat_sectors))
