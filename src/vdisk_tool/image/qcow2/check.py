"""`vdisk check` of a qcow2 image: every stored refcount against the references the scan
counted (image/qcow2/scan.py), the COPIED flags, the dirty and corrupt bits and the
backing file (specs/qcow2.md §Invariants). What `qemu-img check` calls leaks and
corruptions are findings here, with our own codes; `--repair` rebuilds refcounts as
`qemu-img check -r all` does (image/qcow2/repair.py).
"""
from __future__ import annotations

import os

from ...errors import ImageError, Severity, VdiskError
from ...formats import qcow2 as q
from .device import Qcow2Device
from .refcount import be_u64s
from .scan import Scan, scan_references

E, W = Severity.ERROR, Severity.WARNING
UNFIXABLE = {"qcow2.past-eof": E, "qcow2.misaligned": E, "qcow2.metadata-overlap": E,
             "qcow2.subcluster-bitmap": E}


def stored_refcounts(dev: Qcow2Device, n: int):
    """(cluster, stored refcount) for every cluster of the file whose refcount is not 0,
    and the clusters a block entry says are covered by a block outside the file."""
    m, cs = dev.meta, dev.cs
    rbe = m.refblock_entries
    table = be_u64s(dev.pread(m.refcount_table_clusters * cs, m.refcount_table_offset))
    for k, e in enumerate(table):
        off = e & q.REFT_OFFSET_MASK
        if not off or k * rbe >= n or off % cs or off + cs > dev.file_bytes:
            continue
        blk = dev.pread(cs, off)
        if not any(blk):
            continue
        for idx in range(min(rbe, n - k * rbe)):
            v = q.refcount_get(blk, idx, m.refcount_order)
            if v:
                yield k * rbe + idx, v


def compare_refcounts(dev: Qcow2Device, s: Scan) -> tuple[list[int], list[int], list[int]]:
    """(leaked, corrupt, overflowing) cluster indexes."""
    stored = dict(stored_refcounts(dev, s.nclusters))
    leaked, corrupt, overflow = [], [], []
    limit = (1 << dev.meta.refcount_bits) - 1
    for c in range(s.nclusters):
        want, have = s.counts[c], stored.get(c, 0)
        if want > limit:
            overflow.append(c)
        elif have > want:
            leaked.append(c)
        elif have < want:
            corrupt.append(c)
    return leaked, corrupt, overflow


def refcounts_cover_references(dev: Qcow2Device) -> bool:
    """Whether no cluster has fewer references counted than it has (leaks are harmless):
    only then may free clusters inside the file be reused."""
    s = scan_references(dev)
    if s.problems:
        return False
    _leaked, corrupt, overflow = compare_refcounts(dev, s)
    return not corrupt and not overflow


def copied_errors(dev: Qcow2Device, s: Scan) -> list[int]:
    """Host offsets of active L1/L2 entries whose COPIED flag disagrees with refcount == 1."""
    bad: list[int] = []
    m, cb = dev.meta, dev.cb
    step = 2 if dev.ext else 1
    for i, e in enumerate(dev.l1):
        off = e & q.L1E_OFFSET_MASK
        if not off or off >> cb >= s.nclusters or off % dev.cs:
            continue
        if bool(e & q.OFLAG_COPIED) != (s.counts[off >> cb] == 1):
            bad.append(m.l1_table_offset + i * 8)
        t = be_u64s(dev.pread(dev.cs, off))
        for j in range(m.l2_entries):
            entry = t[j * step]
            host = entry & q.L2E_OFFSET_MASK
            if not host or entry & q.OFLAG_COMPRESSED or host >> cb >= s.nclusters:
                continue
            if bool(entry & q.OFLAG_COPIED) != (s.counts[host >> cb] == 1):
                bad.append(off + j * m.l2_entry_bytes)
    return bad


def check_qcow2(disk, report, allow_outside: bool = False) -> None:
    dev = disk.extents[0].device
    assert isinstance(dev, Qcow2Device)
    p, m = disk.path, dev.meta
    s = scan_references(dev)
    report.grains_checked = s.data_clusters
    for prob in s.problems:
        report.add(prob.code, UNFIXABLE.get(prob.code, E), prob.message, prob.offset, path=p)
    leaked, corrupt, overflow = compare_refcounts(dev, s)
    cs = dev.cs
    if overflow:
        report.add("qcow2.refcount-overflow", E, f"{len(overflow)} cluster(s) are referenced more "
                   f"often than {m.refcount_bits}-bit refcounts can count, first at "
                   f"0x{overflow[0] * cs:x}", overflow[0] * cs, path=p)
    fixable_left = not overflow and not s.problems
    if corrupt:
        report.add("qcow2.refcount-error", E, f"{len(corrupt)} cluster(s) have a refcount below "
                   f"their references (a write could free data in use), first at "
                   f"0x{corrupt[0] * cs:x}", corrupt[0] * cs, fixable=fixable_left, path=p)
    if leaked:
        report.add("qcow2.refcount-leak", W, f"{len(leaked)} leaked cluster(s): refcount above "
                   f"their references (wasted space, no harm to data), first at "
                   f"0x{leaked[0] * cs:x}", leaked[0] * cs, fixable=fixable_left, path=p)
    copied = copied_errors(dev, s)
    if copied:
        report.add("qcow2.copied-flag", E, f"{len(copied)} L1/L2 entries have a COPIED flag that "
                   "disagrees with their cluster's refcount, first at "
                   f"0x{copied[0]:x}", copied[0], fixable=fixable_left, path=p)
    if m.dirty:
        report.add("qcow2.dirty", W, "the dirty bit is set: the image was not closed cleanly "
                   "and its refcounts may be stale", q.INCOMPAT_OFFSET, fixable=fixable_left,
                   path=p)
    if m.corrupt:
        report.add("qcow2.corrupt", E, "the corrupt bit is set: a writer found the metadata "
                   "inconsistent and stopped writing", q.INCOMPAT_OFFSET, fixable=fixable_left,
                   path=p)
    if fixable_left and (corrupt or leaked or copied or m.dirty or m.corrupt):
        report.rebuild_refcounts = True
    _check_backing(disk, dev, report, allow_outside)


def _check_backing(disk, dev: Qcow2Device, report, allow_outside: bool) -> None:
    from . import BACKING_FORMATS, backing_path
    name = dev.meta.backing_name
    if not name:
        return
    try:
        bpath = backing_path(disk.path, name, allow_outside)
    except ImageError as exc:
        report.add("qcow2.backing-outside", E, exc.message, path=disk.path)
        return
    if not os.path.exists(bpath):
        report.add("qcow2.backing-missing", E, f"backing file {name!r} does not exist",
                   path=disk.path)
        return
    from ..disk import open_image
    fmt = dev.meta.backing_format or None
    try:
        if fmt is not None and fmt not in BACKING_FORMATS:
            raise ImageError(f"format {fmt!r} is not one vdisk reads")
        with open_image(bpath, allow_outside=allow_outside, format=fmt,
                        _seen=frozenset({os.path.realpath(disk.path)})):
            pass
    except VdiskError as exc:
        report.add("qcow2.backing-unreadable", E, f"backing file {name!r}: {exc.message}",
                   path=disk.path)
