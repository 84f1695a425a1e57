"""Rebuild a qcow2 image's refcounts from its references, as `qemu-img check -r all` does
(specs/qcow2.md §Repair): the COPIED flags of the active tables are set from the counts,
a new refcount table and blocks are written after the end of the file, the header points
at them, and the dirty and corrupt bits are cleared. Run inside an edit (image/edit.py),
so the undo journal makes it all or nothing.
"""
from __future__ import annotations

from array import array

from ...errors import RepairError
from ...formats import qcow2 as q
from .device import Qcow2Device
from .refcount import be_u64s, u64s_be
from .scan import scan_references


def rebuild_refcounts(dev: Qcow2Device) -> int:
    """Rewrite every refcount; returns how many clusters the new structure describes."""
    s = scan_references(dev)
    if s.problems:
        p = s.problems[0]
        raise RepairError(f"refcounts cannot be rebuilt while {p.code}: {p.message}",
                          path=dev.path, offset=p.offset)
    m, cs = dev.meta, dev.cs
    limit = (1 << m.refcount_bits) - 1
    if any(v > limit for v in s.counts):
        raise RepairError(f"a cluster has more references than {m.refcount_bits}-bit refcounts "
                          "count; convert the image with wider refcounts", path=dev.path)
    # the refcount structure being replaced is no reference once the new one is in place
    old_table = be_u64s(dev.pread(m.refcount_table_clusters * cs, m.refcount_table_offset))
    for k in range(m.refcount_table_clusters):
        s.counts[(m.refcount_table_offset >> dev.cb) + k] -= 1
    for e in old_table:
        if e & q.REFT_OFFSET_MASK:
            s.counts[(e & q.REFT_OFFSET_MASK) >> dev.cb] -= 1
    _fix_copied(dev, s.counts)
    n, rbe = s.nclusters, m.refblock_entries
    blocks, tclusters = 1, 1
    while True:
        total = n + blocks + tclusters
        nb = -(-total // rbe)
        nt = max(1, -(-nb * 8 // cs))
        if (nb, nt) == (blocks, tclusters):
            break
        blocks, tclusters = nb, nt
    counts = array("Q", s.counts)
    counts.extend([1] * (blocks + tclusters))
    for k in range(blocks):
        blk = bytearray(cs)
        for c in range(k * rbe, min((k + 1) * rbe, total)):
            v = counts[c]
            if v:
                q.refcount_set(blk, c - k * rbe, m.refcount_order, v)
        dev.pwrite(blk, (n + k) * cs)
    table = array("Q", ((n + k) * cs for k in range(blocks)))
    table.extend([0] * (tclusters * cs // 8 - blocks))
    table_off = (n + blocks) * cs
    dev.pwrite(u64s_be(table), table_off)
    dev.pwrite(table_off.to_bytes(8, "big") + tclusters.to_bytes(4, "big"), 48)
    m.refcount_table_offset, m.refcount_table_clusters = table_off, tclusters
    dev.set_incompatible(q.INCOMPAT_DIRTY | q.INCOMPAT_CORRUPT, False)
    dev.reset_caches()
    return total


def _fix_copied(dev: Qcow2Device, counts: array) -> None:
    """OFLAG_COPIED on active L1 and L2 entries exactly where the cluster's refcount is 1."""
    m, cb = dev.meta, dev.cb
    step = 2 if dev.ext else 1
    for i, e in enumerate(dev.l1):
        off = e & q.L1E_OFFSET_MASK
        if not off:
            continue
        want = e | q.OFLAG_COPIED if counts[off >> cb] == 1 else e & ~q.OFLAG_COPIED
        if want != e:
            dev.l1[i] = want
            dev.pwrite(want.to_bytes(8, "big"), m.l1_table_offset + i * 8)
        t = be_u64s(dev.pread(dev.cs, off))
        for j in range(m.l2_entries):
            entry = t[j * step]
            host = entry & q.L2E_OFFSET_MASK
            if not host or entry & q.OFLAG_COMPRESSED:
                continue
            want = entry | q.OFLAG_COPIED if counts[host >> cb] == 1 \
                else entry & ~q.OFLAG_COPIED
            if want != entry:
                dev.pwrite(want.to_bytes(8, "big"), off + j * m.l2_entry_bytes)
