"""Every reference a qcow2 file holds, counted per host cluster, as `qemu-img check` counts
them (docs/interop/qcow2.txt §Host cluster management; specs/qcow2.md §Invariants): the
header cluster, the active and every snapshot's L1 table, their L2 tables and data
clusters (a compressed cluster counts once in each host cluster it touches), the refcount
table and blocks, the snapshot table, and the bitmap directory, tables and data.

A scan never raises for what it finds; it records problems for image/qcow2/check.py.
"""
from __future__ import annotations

from array import array
from dataclasses import dataclass, field

from ...formats import qcow2 as q
from . import bitmaps
from .device import Qcow2Device
from .refcount import be_u64s

# what a host cluster is used for (an overlap is a cluster used for two things)
NONE, DATA, L2, META, COMPRESSED = range(5)
ROLE_NAMES = {DATA: "data", L2: "an L2 table", META: "metadata", COMPRESSED: "compressed data"}


@dataclass
class Problem:
    code: str
    message: str
    offset: int | None = None


@dataclass
class Scan:
    """References per host cluster (`counts`) and what was wrong with them."""

    nclusters: int
    counts: array
    roles: bytearray
    problems: list[Problem] = field(default_factory=list)
    l2_tables: int = 0
    data_clusters: int = 0

    def note(self, code: str, message: str, offset: int | None = None) -> None:
        if sum(1 for p in self.problems if p.code == code) < 20:
            self.problems.append(Problem(code, message, offset))


def scan_references(dev: Qcow2Device) -> Scan:
    m = dev.meta
    cs, cb = dev.cs, dev.cb
    n = -(-dev.file_bytes // cs)
    s = Scan(n, array("Q", bytes(8 * n)), bytearray(n))

    def inc(off: int, length: int, role: int, what: str) -> bool:
        if off % (512 if role == COMPRESSED else cs):
            s.note("qcow2.misaligned", f"{what} at 0x{off:x} is not aligned to a cluster", off)
            return False
        first, last = off >> cb, (off + max(length, 1) - 1) >> cb
        if last >= n:
            s.note("qcow2.past-eof", f"{what} at 0x{off:x} lies past the end of the file "
                   f"(0x{dev.file_bytes:x} bytes)", off)
            return False
        for c in range(first, last + 1):
            old = s.roles[c]
            if old and (old != role or role == META):
                s.note("qcow2.metadata-overlap", f"{what} at 0x{c << cb:x} overlaps "
                       f"{ROLE_NAMES[old]} in the same cluster", c << cb)
            s.roles[c] = role if old in (NONE, role) else old
            s.counts[c] += 1
        return True

    inc(0, cs, META, "the header")
    if m.l1_size:
        inc(m.l1_table_offset, m.l1_size * 8, META, "the L1 table")
    _walk_l1(dev, s, dev.l1, inc)
    inc(m.refcount_table_offset, m.refcount_table_clusters * cs, META, "the refcount table")
    table = be_u64s(dev.pread(m.refcount_table_clusters * cs, m.refcount_table_offset))
    for k, e in enumerate(table):
        off = e & q.REFT_OFFSET_MASK
        if off:
            inc(off, cs, META, f"refcount block {k}")
    if m.nb_snapshots:
        inc(m.snapshots_offset, m.snapshot_table_bytes, META, "the snapshot table")
        for snap in m.snapshots:
            if snap.l1_size:
                inc(snap.l1_table_offset, snap.l1_size * 8, META,
                    f"snapshot {snap.snapshot_id!r}'s L1 table")
                l1 = be_u64s(dev.pread(snap.l1_size * 8, snap.l1_table_offset))
                _walk_l1(dev, s, l1, inc)
    if m.bitmaps:
        _walk_bitmaps(dev, s, inc)
    return s


def _walk_l1(dev: Qcow2Device, s: Scan, l1: array, inc) -> None:
    m, cs = dev.meta, dev.cs
    step = 2 if dev.ext else 1
    for i, e in enumerate(l1):
        off = e & q.L1E_OFFSET_MASK
        if not off:
            continue
        if not inc(off, cs, L2, f"L2 table {i}"):
            continue
        s.l2_tables += 1
        t = be_u64s(dev.pread(cs, off))
        for j in range(m.l2_entries):
            entry = t[j * step]
            if not entry:
                if dev.ext and t[j * step + 1] & 0xFFFFFFFF:
                    s.note("qcow2.subcluster-bitmap", f"cluster {i * m.l2_entries + j}: "
                           "subclusters are allocated but the entry has no host offset")
                continue
            vc = i * m.l2_entries + j
            if entry & q.OFLAG_COMPRESSED:
                off_c = entry & ((1 << dev.csize_shift) - 1)
                sectors = ((entry >> dev.csize_shift) & dev.csize_mask) + 1
                start = off_c & ~511
                inc(start, sectors * 512, COMPRESSED, f"compressed cluster {vc}")
                s.data_clusters += 1
                continue
            host = entry & q.L2E_OFFSET_MASK
            if dev.ext:
                bm = t[j * step + 1]
                if (bm & 0xFFFFFFFF) & (bm >> 32):
                    s.note("qcow2.subcluster-bitmap", f"cluster {vc}: a subcluster is marked "
                           "both allocated and zero", off + j * 16)
            if host:
                if inc(host, cs, DATA, f"data cluster {vc}"):
                    s.data_clusters += 1


def _walk_bitmaps(dev: Qcow2Device, s: Scan, inc) -> None:
    """Persistent dirty bitmaps: the directory, each bitmap table and its data clusters."""
    assert dev.meta.bitmaps is not None
    count, off, nbytes = dev.meta.bitmaps
    if not nbytes or nbytes > bitmaps.MAX_DIRECTORY_BYTES or \
            not inc(off, nbytes, META, "the bitmap directory"):
        return
    for k, entry in enumerate(bitmaps.entries(dev.pread(nbytes, off), count)):
        t_off, t_size = entry.table_offset, entry.table_size
        if not t_size or t_size * 8 > 64 << 20 or not inc(t_off, t_size * 8, META,
                                                         f"bitmap {k}'s table"):
            continue
        for e in be_u64s(dev.pread(t_size * 8, t_off)):
            d = e & q.L2E_OFFSET_MASK
            if d:
                inc(d, dev.cs, DATA, f"bitmap {k}'s data")
