"""A qcow2 image's active layer as a BlockDevice: L1 → L2 lookups, standard, zero,
compressed and extended (subcluster) entries, the backing file for what is not allocated,
and in-place writes that allocate clusters and keep refcounts exact
(docs/interop/qcow2.txt; specs/qcow2.md).

Tables are read lazily and cached; nothing past the end of the file is read as zeros
except the unwritten tail of a cluster that starts inside the file (as qemu reads it).
"""
from __future__ import annotations

from array import array
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

from ...errors import ImageError, UnsupportedError
from ...formats import qcow2 as q
from .. import hostio, zcodec
from ..base import ReopenableFile, Run, RunKind, check_range, merge_runs
from .header import Qcow2Meta, l1_entries_for, parse_meta, parse_snapshots
from .refcount import Refcounts, be_u64s, u64s_be

L2_CACHE = 1024
ALL_ALLOC = 0xFFFFFFFF

# what a cluster is, from its L2 entry
DATA, ZERO, UNALLOC, COMPRESSED, MIXED = range(5)


class Qcow2Device(ReopenableFile):
    """One qcow2 file. `backing` (set by image/disk.py) serves unallocated clusters."""

    def __init__(self, path: str, writable: bool = False, allow_corrupt: bool = False) -> None:
        self.path = path
        self.writable = writable
        self._fd = self._open_file()
        try:
            self.file_bytes = hostio.file_bytes(self._fd)
            head = hostio.pread(self._fd, q.V3_HEADER_BYTES, 0)
            bits = int.from_bytes(head[20:24], "big") if len(head) >= 24 else 0
            first_len = 1 << bits if q.MIN_CLUSTER_BITS <= bits <= q.MAX_CLUSTER_BITS else len(head)
            first = hostio.pread(self._fd, first_len, 0)
            self.meta: Qcow2Meta = parse_meta(first, self.file_bytes, path)
            if self.meta.nb_snapshots:
                parse_snapshots(self.pread, self.meta, self.file_bytes, path)
            if writable and self.meta.corrupt and not allow_corrupt:
                raise UnsupportedError("the image is marked corrupt (a writer found its metadata "
                                       "inconsistent): refusing to write it", path=path,
                                       hint=f"run `vdisk check {path}` to see why")
            m = self.meta
            self.l1 = be_u64s(self.pread(m.l1_size * 8, m.l1_table_offset)) if m.l1_size \
                else array("Q")
        except Exception:
            self._close_file()
            raise
        self.size_bytes = self.meta.size_bytes
        self.cs = self.meta.cluster_bytes
        self.cb = self.meta.cluster_bits
        self.l2n = self.meta.l2_entries
        self.ext = self.meta.extended_l2
        self.csize_shift, self.csize_mask = q.compressed_layout(self.cb)
        self.backing: Any = None
        self._l2: OrderedDict[int, array] = OrderedDict()
        self._refs: Refcounts | None = None

    # -- host file -------------------------------------------------------------------------
    def pread(self, length: int, offset: int) -> bytes:
        return hostio.pread(self._fd, length, offset)

    def pwrite(self, data: bytes | bytearray | memoryview, offset: int) -> None:
        hostio.pwrite(self._fd, data, offset)
        self.file_bytes = max(self.file_bytes, offset + len(data))

    @property
    def fd(self) -> int:
        return self._fd

    @property
    def refs(self) -> Refcounts:
        if self._refs is None:
            self._refs = Refcounts(self)
        return self._refs

    # -- tables ----------------------------------------------------------------------------
    def l2_table(self, l1_index: int) -> array | None:
        """The L2 table of L1 entry `l1_index` (entries, plus bitmaps interleaved when
        extended), or None where the L1 entry is 0."""
        if l1_index >= len(self.l1):
            return None
        off = self.l1[l1_index] & q.L1E_OFFSET_MASK
        if off == 0:
            return None
        t = self._l2.get(off)
        if t is not None:
            self._l2.move_to_end(off)
            return t
        if off % self.cs or off + self.cs > self.file_bytes:
            raise ImageError(f"L2 table {l1_index} at 0x{off:x} is misaligned or past the end of "
                             "the file", path=self.path, offset=off)
        t = be_u64s(self.pread(self.cs, off))
        self._cache_l2(off, t)
        return t

    def _cache_l2(self, off: int, table: array) -> None:
        self._l2[off] = table
        if len(self._l2) > L2_CACHE:
            self._l2.popitem(last=False)

    def entry(self, vcluster: int) -> tuple[int, int]:
        """(L2 entry, subcluster bitmap) of virtual cluster `vcluster` (0, 0 if none)."""
        i, j = divmod(vcluster, self.l2n)
        t = self.l2_table(i)
        if t is None:
            return 0, 0
        return (t[2 * j], t[2 * j + 1]) if self.ext else (t[j], 0)

    def classify(self, entry: int, bitmap: int) -> int:
        if entry & q.OFLAG_COMPRESSED:
            return COMPRESSED
        if self.ext:
            alloc, zero = bitmap & ALL_ALLOC, bitmap >> 32
            if zero == ALL_ALLOC:
                return ZERO
            if alloc == ALL_ALLOC and entry & q.L2E_OFFSET_MASK:
                return DATA
            if not alloc and not zero:
                return UNALLOC
            return MIXED
        if entry & q.OFLAG_ZERO and self.meta.version >= 3:
            return ZERO
        return DATA if entry & q.L2E_OFFSET_MASK else UNALLOC

    def _host(self, entry: int) -> int:
        off = entry & q.L2E_OFFSET_MASK
        if off % self.cs:
            raise ImageError(f"data cluster at 0x{off:x} is not cluster-aligned", path=self.path,
                             offset=off)
        if off >= self.file_bytes:
            raise ImageError(f"data cluster at 0x{off:x} lies past the end of the file",
                             path=self.path, offset=off)
        return off

    # -- reading ---------------------------------------------------------------------------
    def read_at(self, offset: int, length: int) -> bytes:
        check_range(self, offset, length)
        out = bytearray(length)
        view = memoryview(out)
        pos, end, cs = offset, offset + length, self.cs
        while pos < end:
            vc, within = divmod(pos, cs)
            n = min(cs - within, end - pos)
            entry, bitmap = self.entry(vc)
            kind = self.classify(entry, bitmap)
            if kind == DATA:
                host = self._host(entry)
                stop, nxt = pos + n, host + cs
                while stop < end:
                    e2, b2 = self.entry(stop // cs)
                    if self.classify(e2, b2) != DATA or e2 & q.L2E_OFFSET_MASK != nxt:
                        break
                    stop = min(stop + cs, end)
                    nxt += cs
                self._readinto(view[pos - offset:stop - offset], host + within)
                pos = stop
                continue
            if kind == UNALLOC:
                stop = pos + n
                while stop < end and self.classify(*self.entry(stop // cs)) == UNALLOC:
                    stop = min(stop + cs, end)
                if self.backing is not None:
                    view[pos - offset:stop - offset] = self.backing.read_at(pos, stop - pos)
                pos = stop
                continue
            if kind == COMPRESSED:
                view[pos - offset:pos - offset + n] = self._inflate(vc, entry)[within:within + n]
            elif kind == MIXED:
                view[pos - offset:pos - offset + n] = self._read_mixed(vc, entry, bitmap,
                                                                       within, n)
            pos += n
        return bytes(out)

    def _readinto(self, buf: memoryview, host: int) -> None:
        got = hostio.preadinto(self._fd, buf, host)
        if got < len(buf):
            buf[got:] = bytes(len(buf) - got)   # the unwritten tail of the last cluster

    def _inflate(self, vc: int, entry: int) -> bytes:
        off = entry & ((1 << self.csize_shift) - 1)
        sectors = ((entry >> self.csize_shift) & self.csize_mask) + 1
        nbytes = sectors * 512 - (off & 511)
        if off >= self.file_bytes:
            raise ImageError(f"compressed cluster {vc} at 0x{off:x} lies past the end of the "
                             "file", path=self.path, offset=off)
        blob = self.pread(nbytes, off)
        d = zcodec.decompressobj(-12)
        try:
            out = d.decompress(blob, self.cs)
        except zcodec.error as exc:
            raise ImageError(f"compressed cluster {vc} at 0x{off:x}: {exc}", path=self.path,
                             offset=off) from None
        want = min(self.cs, self.size_bytes - vc * self.cs)
        if len(out) < want:
            raise ImageError(f"compressed cluster {vc} at 0x{off:x} inflates to {len(out)} "
                             f"bytes, expected {self.cs}", path=self.path, offset=off)
        return out.ljust(self.cs, b"\0")

    def _read_mixed(self, vc: int, entry: int, bitmap: int, within: int, n: int) -> bytes:
        """A cluster whose 32 subclusters differ: allocated, zero, or from the backing file."""
        sc = self.cs // q.SUBCLUSTERS
        out = bytearray(n)
        pos, end = within, within + n
        host = entry & q.L2E_OFFSET_MASK
        while pos < end:
            k = pos // sc
            m = min((k + 1) * sc, end) - pos
            if bitmap >> (32 + k) & 1:
                pass
            elif bitmap >> k & 1:
                if not host:
                    raise ImageError(f"cluster {vc}: subcluster {k} is allocated but the L2 "
                                     "entry has no host offset", path=self.path)
                self._readinto(memoryview(out)[pos - within:pos - within + m],
                               self._host(entry) + pos)
            elif self.backing is not None:
                out[pos - within:pos - within + m] = self.backing.read_at(vc * self.cs + pos, m)
            pos += m
        return bytes(out)

    def runs(self) -> Iterator[Run]:
        return merge_runs(self._runs())

    def _runs(self) -> Iterator[Run]:
        cs, size = self.cs, self.size_bytes
        cov = self.meta.l2_coverage_bytes
        unalloc = RunKind.PARENT if self.backing is not None else RunKind.UNALLOCATED
        for i in range(l1_entries_for(size, self.cb, self.meta.l2_entry_bytes)):
            base = i * cov
            t = self.l2_table(i)
            if t is None or not any(t):
                yield Run(base, min(cov, size - base), unalloc)
                continue
            step = 2 if self.ext else 1
            for j in range(self.l2n):
                start = base + j * cs
                if start >= size:
                    break
                n = min(cs, size - start)
                entry = t[j * step]
                bitmap = t[j * step + 1] if self.ext else 0
                kind = self.classify(entry, bitmap)
                if kind == DATA:
                    yield from self._stored(start, n, entry & q.L2E_OFFSET_MASK)
                elif kind == UNALLOC:
                    yield Run(start, n, unalloc)
                elif kind == ZERO:
                    yield Run(start, n, RunKind.ZERO)
                elif kind == COMPRESSED:
                    yield Run(start, n, RunKind.DATA, self.path, None)
                else:
                    yield from self._mixed_runs(start, n, entry, bitmap, unalloc)

    def _mixed_runs(self, start: int, n: int, entry: int, bitmap: int, unalloc: RunKind
                    ) -> Iterator[Run]:
        sc = self.cs // q.SUBCLUSTERS
        host = entry & q.L2E_OFFSET_MASK
        for k in range(q.SUBCLUSTERS):
            a = start + k * sc
            if a >= start + n:
                break
            m = min(sc, start + n - a)
            if bitmap >> (32 + k) & 1:
                yield Run(a, m, RunKind.ZERO)
            elif bitmap >> k & 1:
                yield from self._stored(a, m, host + k * sc)
            else:
                yield Run(a, m, unalloc)

    def _stored(self, start: int, n: int, host: int) -> Iterator[Run]:
        """The runs of n bytes stored at `host`: as read_at reads them, the part past the
        end of the file (the unwritten tail of the last cluster, as in qemu) is zeros; a
        cluster wholly past the end is left to read_at (which refuses it)."""
        have = self.file_bytes - host
        if have <= 0:
            yield Run(start, n, RunKind.DATA, self.path, None)
        elif have >= n:
            yield Run(start, n, RunKind.DATA, self.path, host)
        else:
            yield Run(start, have, RunKind.DATA, self.path, host)
            yield Run(start + have, n - have, RunKind.ZERO)

    # -- writing ---------------------------------------------------------------------------
    def write_at(self, offset: int, data: bytes | memoryview) -> None:
        if not self.writable:
            raise UnsupportedError("image is open read-only", path=self.path)
        check_range(self, offset, len(data))
        view = memoryview(data)
        pos, cs = offset, self.cs
        while view:
            vc, within = divmod(pos, cs)
            n = min(cs - within, len(view))
            piece = view[:n]
            entry, bitmap = self.entry(vc)
            kind = self.classify(entry, bitmap)
            if kind == DATA and entry & q.OFLAG_COPIED:
                self.pwrite(piece, self._host(entry) + within)
            elif not self._reads_zero_and_is_zero(kind, piece):
                self._rewrite_cluster(vc, within, piece, entry, kind)
            view = view[n:]
            pos += n

    def _reads_zero_and_is_zero(self, kind: int, piece: memoryview) -> bool:
        if kind == ZERO or (kind == UNALLOC and self.backing is None):
            return piece.tobytes().count(0) == len(piece)
        return False

    def _rewrite_cluster(self, vc: int, within: int, piece: memoryview, entry: int,
                         kind: int) -> None:
        """Give virtual cluster `vc` a cluster of its own holding its current content with
        `piece` at `within`: COW from the backing file, a compressed, shared or zero
        cluster, or subclusters of mixed kinds."""
        cs = self.cs
        have = min(cs, self.size_bytes - vc * cs)
        if within == 0 and len(piece) >= have:
            content = bytearray(piece.tobytes())
        else:
            content = bytearray(self.read_at(vc * cs, have))
            content[within:within + len(piece)] = piece
        content.extend(bytes(cs - len(content)))
        table_off = self._writable_l2(vc // self.l2n)
        old = entry & q.L2E_OFFSET_MASK
        # an extended entry may hold a host cluster with no subcluster allocated yet
        # (qemu's preallocation=metadata): it is written in place like the others
        reuse = kind in (DATA, MIXED, ZERO, UNALLOC) and not entry & q.OFLAG_COMPRESSED \
            and old and entry & q.OFLAG_COPIED
        host = self._host(entry) if reuse else self.refs.alloc(1, zero=False)
        self.pwrite(content, host)
        self._set_entry(vc, table_off, host | q.OFLAG_COPIED, ALL_ALLOC)
        if not reuse:
            self._drop_reference(entry)

    def _drop_reference(self, entry: int) -> None:
        """Decrement the refcount of what an L2 entry points at: its host cluster, or each
        host cluster a compressed cluster's bytes touch."""
        if entry & q.OFLAG_COMPRESSED:
            off = entry & ((1 << self.csize_shift) - 1)
            sectors = ((entry >> self.csize_shift) & self.csize_mask) + 1
            first = (off & ~511) >> self.cb
            last = ((off & ~511) + sectors * 512 - 1) >> self.cb
            for c in range(first, last + 1):
                self.refs.add(c << self.cb, -1)
        elif entry & q.L2E_OFFSET_MASK:
            self.refs.add(entry & q.L2E_OFFSET_MASK, -1)

    def _writable_l2(self, l1_index: int) -> int:
        """The host offset of an L2 table this image alone owns for `l1_index`: allocated
        when absent, copied when shared with a snapshot (L1 entry without COPIED)."""
        e = self.l1[l1_index]
        off = e & q.L1E_OFFSET_MASK
        if off and e & q.OFLAG_COPIED:
            return off
        old = self.l2_table(l1_index)
        new = self.refs.alloc(1)
        if old is not None:
            self.pwrite(u64s_be(old), new)
            self._cache_l2(new, array("Q", old))
            self.refs.add(off, -1)
        else:
            self._cache_l2(new, array("Q", bytes(self.cs)))
        self.l1[l1_index] = new | q.OFLAG_COPIED
        self.pwrite((new | q.OFLAG_COPIED).to_bytes(8, "big"),
                    self.meta.l1_table_offset + l1_index * 8)
        return new

    def _set_entry(self, vc: int, table_off: int, entry: int, bitmap: int) -> None:
        t = self._l2.get(table_off)
        if t is None:
            t = self.l2_table(vc // self.l2n)
            assert t is not None
        j = vc % self.l2n
        if self.ext:
            t[2 * j], t[2 * j + 1] = entry, bitmap
            raw = entry.to_bytes(8, "big") + bitmap.to_bytes(8, "big")
        else:
            t[j] = entry
            raw = entry.to_bytes(8, "big")
        self.pwrite(raw, table_off + j * self.meta.l2_entry_bytes)

    def preallocate(self, mode: str) -> None:
        """qemu-img create's preallocation (image/qcow2/resize.py)."""
        from .resize import preallocate
        preallocate(self, mode)

    # -- header changes --------------------------------------------------------------------
    def set_incompatible(self, bits: int, on: bool) -> None:
        m = self.meta
        if m.version < 3:
            return
        m.incompatible = m.incompatible | bits if on else m.incompatible & ~bits
        self.pwrite(m.incompatible.to_bytes(8, "big"), q.INCOMPAT_OFFSET)

    def mark_in_use(self, in_use: bool) -> None:
        """With lazy_refcounts qemu sets the dirty bit while the image is open for writing;
        vdisk does the same for an edit (its refcounts stay exact) and clears it at the end.
        Persistent bitmaps that record writes are marked in use and stay so: vdisk does not
        update their contents (image/qcow2/bitmaps.py)."""
        if self.meta.lazy_refcounts:
            self.set_incompatible(q.INCOMPAT_DIRTY, in_use)
        if in_use and self.meta.bitmaps:
            from .bitmaps import mark_auto_in_use
            mark_auto_in_use(self)

    def check_resize(self, new_bytes: int) -> None:
        """Refuse a resize before anything changes (image/qcow2/resize.py)."""
        from .resize import check_resize
        check_resize(self, new_bytes)

    def resize(self, new_bytes: int) -> None:
        """Grow the virtual size as qemu-img resize does (image/qcow2/resize.py)."""
        from .resize import resize
        resize(self, new_bytes)

    def reset_caches(self) -> None:
        """Forget cached tables after they were rewritten underneath (a repair)."""
        self._l2.clear()
        self._refs = None

    # -- the rest of the protocol ----------------------------------------------------------
    def flush(self) -> None:
        if self.writable:
            hostio.fsync(self._fd)

    def close(self) -> None:
        self._close_file()

    def describe(self) -> dict:
        m = self.meta
        return {"version": m.version, "compat": m.compat, "cluster_bytes": m.cluster_bytes,
                "refcount_bits": m.refcount_bits, "extended_l2": m.extended_l2,
                "lazy_refcounts": m.lazy_refcounts, "dirty": m.dirty, "corrupt": m.corrupt,
                "backing_file": m.backing_name, "backing_format": m.backing_format,
                "bitmaps": m.bitmaps[0] if m.bitmaps else 0,
                "snapshots": [{"id": s.snapshot_id, "name": s.name, "date_sec": s.date_sec,
                               "vm_state_bytes": s.vm_state_bytes,
                               "disk_size_bytes": s.disk_size_bytes} for s in m.snapshots]}

