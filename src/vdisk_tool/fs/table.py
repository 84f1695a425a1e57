"""The File Allocation Table, read lazily in chunks and written to every FAT copy together
(fatgen103 §4; specs/fat.md "FAT").

FAT16 and FAT32 entries are held as arrays of 16/32-bit integers (one array per 64 KiB
chunk of the table), so that reading, following and allocating chains are index operations
and runs of free entries are found by C-level searches. FAT12 entries straddle byte
boundaries: its table (at most 6 KiB) is kept whole as bytes.
"""
from __future__ import annotations

import sys
from array import array
from collections.abc import Iterator

from ..errors import FormatError
from ..formats import fat as ff
from ..image.base import BlockDevice
from .layout import FatLayout

CHUNK_BYTES = 64 * 1024
_TYPECODE = {16: "H", 32: "I" if array("I").itemsize == 4 else "L"}
_LITTLE = sys.byteorder == "little"
_HIGH_BITS = 0xF0000000          # FAT32: the reserved top 4 bits of an entry, kept on write


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
        self._base = layout.fat_copy_offset(source_copy)
        self._top = layout.max_cluster
        bps = layout.bytes_per_sector
        self._table12: bytearray | None = None
        self._arrays: dict[int, array[int]] = {}
        # 16/32-bit entries: chunk index = cluster >> shift, index in chunk = cluster & low,
        # FAT sector of a cluster = cluster >> sector_shift (an entry never straddles sectors).
        self.width = 0 if self.bits == 12 else self.bits // 8
        per_chunk = CHUNK_BYTES // max(self.width, 1)
        self._shift = per_chunk.bit_length() - 1
        self._low = per_chunk - 1
        self._sector_shift = (bps // max(self.width, 1)).bit_length() - 1
        self._dirty: set[int] = set()        # sector numbers within the FAT
        self.free_delta = 0
        self.next_free_hint = 2

    # -- raw access ---------------------------------------------------------------------
    def _array(self, index: int) -> array[int]:
        arr = self._arrays.get(index)
        if arr is None:
            start = index * CHUNK_BYTES
            n = min(CHUNK_BYTES, self.layout.fat_bytes - start)
            if n <= 0:
                raise FormatError(f"FAT entry {index << self._shift} is past the end of the FAT",
                                  path=self.path)
            arr = array(_TYPECODE[self.bits])
            arr.frombytes(self.dev.read_at(self._base + start, n))
            if not _LITTLE:
                arr.byteswap()
            self._arrays[index] = arr
        return arr

    def _fat12(self) -> bytearray:
        if self._table12 is None:
            self._table12 = bytearray(self.dev.read_at(self._base, self.layout.fat_bytes))
        return self._table12

    def get(self, cluster: int) -> int:
        if self.bits == 12:
            t = self._fat12()
            pos = cluster * 3 // 2
            v = t[pos] | (t[pos + 1] << 8)
            return v >> 4 if cluster & 1 else v & 0xFFF
        arr = self._arrays.get(cluster >> self._shift)
        if arr is None:
            arr = self._array(cluster >> self._shift)
        return arr[cluster & self._low] & self.mask

    def set(self, cluster: int, value: int) -> None:
        if not 0 <= cluster <= self._top:
            raise FormatError(f"FAT entry {cluster} is out of range", path=self.path)
        if self.bits == 12:
            old = self._set12(cluster, value)
        else:
            arr = self._arrays.get(cluster >> self._shift)
            if arr is None:
                arr = self._array(cluster >> self._shift)
            i = cluster & self._low
            raw = arr[i]
            old = raw & self.mask
            arr[i] = ((value & 0x0FFFFFFF) | (raw & _HIGH_BITS)) if self.bits == 32 \
                else value & 0xFFFF
            self._dirty.add(cluster >> self._sector_shift)
        if cluster >= 2:
            if old == 0 and value != 0:
                self.free_delta -= 1
            elif old != 0 and value == 0:
                self.free_delta += 1
        if value == 0 and cluster < self.next_free_hint:
            self.next_free_hint = max(2, cluster)

    def _set12(self, cluster: int, value: int) -> int:
        t = self._fat12()
        pos = cluster * 3 // 2
        v = t[pos] | (t[pos + 1] << 8)
        old = v >> 4 if cluster & 1 else v & 0xFFF
        v = (v & 0x000F) | ((value & 0xFFF) << 4) if cluster & 1 else (v & 0xF000) | (value & 0xFFF)
        t[pos], t[pos + 1] = v & 0xFF, (v >> 8) & 0xFF
        bps = self.layout.bytes_per_sector
        self._dirty.update(range(pos // bps, (pos + 1) // bps + 1))
        return old

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
        yield from self.chain_list(first, limit)

    def chain_list(self, first: int, limit: int | None = None) -> list[int]:
        if limit is None:
            limit = self.layout.cluster_count
        out: list[int] = []
        top = self._top
        c = first
        if self.bits == 12:
            while 2 <= c <= top and len(out) < limit:
                out.append(c)
                c = self.get(c)
            return out
        append = out.append
        shift, low, mask, arrays = self._shift, self._low, self.mask, self._arrays
        cur, arr = -1, array(_TYPECODE[self.bits])
        n = 0
        while 2 <= c <= top and n < limit:
            append(c)
            n += 1
            ci = c >> shift
            if ci != cur:
                arr = arrays.get(ci) or self._array(ci)   # chunks are never empty
                cur = ci
            c = arr[c & low] & mask
        return out

    def entries(self, lo: int = 2, hi: int | None = None) -> Iterator[tuple[int, int]]:
        """(cluster, value) of every non-free entry from `lo` to `hi` (default: the last)."""
        top = self._top if hi is None else min(hi, self._top)
        if self.bits == 12:
            for c in range(lo, top + 1):
                v = self.get(c)
                if v:
                    yield c, v
            return
        mask = self.mask
        for ci in range(lo >> self._shift, (top >> self._shift) + 1):
            arr = self._array(ci)
            base = ci << self._shift
            a, b = max(lo - base, 0), min(len(arr), top + 1 - base)
            if a >= b or arr[a:b].count(0) == b - a:
                continue
            for i in range(a, b):
                v = arr[i] & mask
                if v:
                    yield base + i, v

    # -- allocation -----------------------------------------------------------------------
    def find_free(self, start: int | None = None) -> int | None:
        """The first free cluster at or after `start` (wrapping), or None when full."""
        lo = self.next_free_hint if start is None else start
        top = self._top
        if not 2 <= lo <= top:
            lo = 2
        for begin, end in ((lo, top + 1), (2, lo)):
            if self.bits == 12:
                for c in range(begin, end):
                    if self.get(c) == 0:
                        return c
                continue
            c = begin
            while c < end:
                ci = c >> self._shift
                arr = self._array(ci)
                base = ci << self._shift
                stop = min(len(arr), end - base)
                try:
                    return base + arr.index(0, c - base, stop)
                except ValueError:
                    c = base + len(arr)
        return None

    def _free_length(self, start: int, most: int) -> int:
        """How many free entries follow `start` (itself free), up to `most`, within the
        chunk that holds `start`."""
        if self.bits == 12:
            n = 1
            while n < most and start + n <= self._top and self.get(start + n) == 0:
                n += 1
            return n
        arr = self._array(start >> self._shift)
        i = start & self._low
        j = min(len(arr), i + most, self._top + 1 - (start - i))
        raw = arr[i:j].tobytes()
        return max(1, (len(raw) - len(raw.lstrip(b"\0"))) // self.width)

    def _link_run(self, start: int, n: int) -> None:
        """Chain the free entries start..start+n-1 to each other, the last one to EOC."""
        if self.bits == 12:
            for c in range(start, start + n - 1):
                self.set(c, c + 1)
            self.set(start + n - 1, self.eoc)
            return
        arr = self._array(start >> self._shift)
        i = start & self._low
        arr[i:i + n - 1] = array(arr.typecode, range(start + 1, start + n))
        arr[i + n - 1] = self.eoc
        self._dirty.update(range(start >> self._sector_shift,
                                 ((start + n - 1) >> self._sector_shift) + 1))
        self.free_delta -= n

    def allocate_runs(self, count: int, after: int | None = None) -> list[tuple[int, int]]:
        """Take `count` free clusters as (first, length) runs, preferring contiguous ones,
        linked as one chain ending in EOC; link `after` (the current last cluster) to the
        first. Raises when the volume is full (and then takes nothing)."""
        runs: list[tuple[int, int]] = []
        remaining = count
        c: int | None = self.next_free_hint
        top = self._top
        while remaining > 0:
            c = self.find_free(c)
            if c is None:
                for s, n in runs:
                    for k in range(s, s + n):
                        self.set(k, 0)
                raise FormatError("no space left on the volume", path=self.path)
            n = self._free_length(c, remaining)
            self._link_run(c, n)       # marks them used at once so find_free skips them
            if runs:
                self.set(runs[-1][0] + runs[-1][1] - 1, c)
            runs.append((c, n))
            remaining -= n
            c = c + n if c + n <= top else 2
        if runs:
            if after is not None:
                self.set(after, runs[0][0])
            self.next_free_hint = c if c is not None else 2
        return runs

    def allocate(self, count: int, after: int | None = None) -> list[int]:
        """Like `allocate_runs`, as the list of clusters in chain order."""
        return [c for s, n in self.allocate_runs(count, after) for c in range(s, s + n)]

    def free_chain(self, first: int) -> int:
        """Mark a chain free; returns how many clusters were released."""
        clusters = self.chain_list(first)
        for c in clusters:
            self.set(c, 0)
        return len(clusters)

    def count_free(self) -> int:
        """Free clusters by a full scan (used when FSInfo does not know)."""
        top = self._top
        if self.bits == 12:
            return sum(1 for c in range(2, top + 1) if self.get(c) == 0)
        free = 0
        for ci in range((top >> self._shift) + 1):
            arr = self._array(ci)
            base = ci << self._shift
            seg = arr[max(2 - base, 0):min(len(arr), top + 1 - base)]
            free += seg.count(0)
            if self.bits == 32 and seg and max(seg) > self.mask:
                # entries holding only reserved top bits are free as well
                free += sum(1 for v in seg if v and not v & self.mask)
        return free

    # -- writing ----------------------------------------------------------------------------
    @property
    def dirty(self) -> bool:
        return bool(self._dirty)

    def _sectors(self, a: int, b: int) -> bytes:
        """The bytes of FAT sectors a..b-1 as they are in memory."""
        bps = self.layout.bytes_per_sector
        if self.bits == 12:
            return bytes(self._fat12()[a * bps:b * bps])
        out = bytearray()
        eps = bps // self.width
        per_chunk = self._low + 1
        pos, end = a * eps, b * eps          # entry numbers
        while pos < end:
            ci = pos >> self._shift
            base = ci << self._shift
            stop = min(end, base + per_chunk)
            part = self._array(ci)[pos - base:stop - base]
            if not _LITTLE:
                part.byteswap()
            out += part.tobytes()
            pos = stop
        return bytes(out)

    def flush(self, copies: list[int] | None = None) -> None:
        """Write every changed sector to each FAT copy (all of them by default)."""
        if not self._dirty:
            return
        bps = self.layout.bytes_per_sector
        if copies is None:
            copies = list(range(self.layout.fat_count))
        runs: list[list[int]] = []
        for s in sorted(self._dirty):
            if runs and runs[-1][1] == s:
                runs[-1][1] = s + 1
            else:
                runs.append([s, s + 1])
        for a, b in runs:
            data = self._sectors(a, b)
            for k in copies:
                self.dev.write_at(self.layout.fat_copy_offset(k) + a * bps, data)
        self._dirty.clear()

    def mark_all_dirty(self) -> None:
        """Make the next flush rewrite the whole FAT (to copy one FAT over the others)."""
        self._dirty.update(range(self.layout.fat_sectors))
