"""Whole-image changes of a qcow2 (specs/qcow2.md §Writing): growing the virtual size (the
L1 table grows or moves; over a larger backing file the new area becomes zero clusters, as
qemu-img resize makes it) and preallocation (qemu-img create -o preallocation=...).
All I/O goes through the device, so an edit's undo journal records every change.
"""
from __future__ import annotations

from array import array

from ...errors import UnsupportedError
from ...formats import qcow2 as q
from .. import hostio
from .device import ALL_ALLOC, COMPRESSED, ZERO, Qcow2Device
from .header import l1_entries_for
from .refcount import u64s_be


def preallocate(dev: Qcow2Device, mode: str) -> None:
    """Give every virtual cluster a host cluster of its own, as qemu-img create's
    preallocation does: per L2 table, the table and then its data clusters in one run;
    entries point at them with COPIED (extended: no subcluster allocated yet, so they
    still read as zeros or from the backing file). `metadata` leaves the data clusters
    as holes at the end of the file, `falloc` reserves their space, `full` writes
    zeros into them."""
    clusters = -(-dev.size_bytes // dev.cs)
    step = 2 if dev.ext else 1
    for li in range(-(-clusters // dev.l2n)):
        first = li * dev.l2n
        n = min(dev.l2n, clusters - first)
        table_off = dev._writable_l2(li)
        t = dev.l2_table(li)
        assert t is not None
        start = dev.refs.alloc(n, zero=False)
        for k in range(n):
            t[k * step] = (start + k * dev.cs) | q.OFLAG_COPIED
        dev.pwrite(u64s_be(t), table_off)
        if mode == "falloc":
            hostio.allocate(dev._fd, start, n * dev.cs)
        elif mode == "full":
            zeros = bytes(min(n * dev.cs, 1 << 20))
            for pos in range(start, start + n * dev.cs, len(zeros)):
                dev.pwrite(zeros[:min(len(zeros), start + n * dev.cs - pos)], pos)
    end = dev.refs.end
    if end > dev.file_bytes:
        hostio.ftruncate(dev._fd, end)
        dev.file_bytes = end


def backing_bytes(dev: Qcow2Device) -> int:
    """The virtual size of the backing file (0 without one)."""
    if dev.backing is None:
        return 0
    return getattr(dev.backing, "dev", dev.backing).size_bytes


def check_resize(dev: Qcow2Device, new_bytes: int) -> None:
    """Refuse a resize before anything changes: a shrink, an L1 table past qemu's limit,
    or a version 2 image over a larger backing file (it has no zero clusters to hide
    the backing file's data past the old size; qemu-img resize refuses it too)."""
    if new_bytes < dev.size_bytes:
        raise UnsupportedError("a qcow2 image is never shrunk", path=dev.path)
    if dev.meta.bitmaps and dev.meta.bitmaps[0]:
        raise UnsupportedError(
            "the image has persistent dirty bitmaps, which vdisk does not resize",
            path=dev.path, hint="remove them first with qemu-img bitmap (qemu-img info lists "
            "their names), or grow with qemu-img resize")
    need = l1_entries_for(new_bytes, dev.cb, dev.meta.l2_entry_bytes)
    if need * 8 > q.MAX_L1_BYTES:
        raise UnsupportedError(f"{new_bytes} bytes need an L1 table larger than qemu's "
                               f"limit ({q.MAX_L1_BYTES >> 20} MiB)", path=dev.path)
    if new_bytes > dev.size_bytes and dev.meta.version < 3 \
            and backing_bytes(dev) > dev.size_bytes:
        raise UnsupportedError(
            f"the backing file ({backing_bytes(dev)} bytes) is larger than this "
            f"version 2 (compat=0.10) image ({dev.size_bytes} bytes), which cannot mark "
            "the new area as zeros: it would show the backing file's data", path=dev.path,
            hint="upgrade the image to compat=1.1 (qemu-img amend -o compat=1.1), or grow "
                 "the backing file's copy instead")


def resize(dev: Qcow2Device, new_bytes: int) -> None:
    """Grow the virtual size; the L1 table grows (and moves when its clusters are full).
    Over a backing file larger than the old size the new area is made to read as zeros,
    as qemu-img resize does: explicit zeros up to the next cluster boundary, zero
    clusters from there on (the backing file is never written)."""
    m = dev.meta
    check_resize(dev, new_bytes)
    old_bytes = dev.size_bytes
    hide = new_bytes > old_bytes and backing_bytes(dev) > old_bytes
    need = l1_entries_for(new_bytes, dev.cb, m.l2_entry_bytes)
    if need > m.l1_size:
        room = -(-m.l1_size * 8 // dev.cs) * dev.cs // 8 if m.l1_size else 0
        table = array("Q", dev.l1)
        table.extend([0] * (need - len(table)))
        if need <= room:
            dev.pwrite(bytes((need - m.l1_size) * 8), m.l1_table_offset + m.l1_size * 8)
        else:
            old_off, old_clusters = m.l1_table_offset, -(-m.l1_size * 8 // dev.cs)
            new_off = dev.refs.alloc(-(-need * 8 // dev.cs))
            dev.pwrite(u64s_be(table), new_off)
            m.l1_table_offset = new_off
            dev.pwrite(new_off.to_bytes(8, "big"), q.L1_SIZE_OFFSET + 4)
            for k in range(old_clusters if m.l1_size else 0):
                dev.refs.add(old_off + k * dev.cs, -1)
        dev.l1, m.l1_size = table, need
        dev.pwrite(need.to_bytes(4, "big"), q.L1_SIZE_OFFSET)
    dev.pwrite(new_bytes.to_bytes(8, "big"), q.SIZE_OFFSET)
    m.size_bytes = dev.size_bytes = new_bytes
    if dev.backing is not None and hasattr(dev.backing, "size_bytes"):
        dev.backing.size_bytes = new_bytes   # the padded view of the backing file
    if hide:
        head_end = min(-(-old_bytes // dev.cs) * dev.cs, new_bytes)
        if head_end > old_bytes:
            dev.write_at(old_bytes, bytes(head_end - old_bytes))
        zero_clusters(dev, head_end // dev.cs, -(-new_bytes // dev.cs))


def zero_clusters(dev: Qcow2Device, first: int, stop: int) -> None:
    """Make virtual clusters [first, stop) read as zeros (version 3): zero entries (all
    subclusters zero when extended); a data cluster this image owns keeps its host
    cluster, as qemu keeps it; any other reference is dropped. A missing L2 table is
    written whole, full of zero entries."""
    step = 2 if dev.ext else 1
    zero_word = (ALL_ALLOC << 32) if dev.ext else q.OFLAG_ZERO
    vc = first
    while vc < stop:
        li, j = divmod(vc, dev.l2n)
        n = min(dev.l2n - j, stop - vc)
        if dev.l1[li] & q.L1E_OFFSET_MASK == 0 and n == dev.l2n:
            _new_zero_l2(dev, li, zero_word)
        else:
            table_off = dev._writable_l2(li)
            t = dev.l2_table(li)
            assert t is not None
            for k in range(j, j + n):
                entry, bitmap = t[k * step], (t[k * step + 1] if dev.ext else 0)
                kind = dev.classify(entry, bitmap)
                if kind == ZERO:
                    continue
                keep = kind != COMPRESSED and entry & q.OFLAG_COPIED \
                    and entry & q.L2E_OFFSET_MASK
                if not keep:
                    dev._drop_reference(entry)
                host = entry & (q.L2E_OFFSET_MASK | q.OFLAG_COPIED) if keep else 0
                if dev.ext:
                    dev._set_entry(li * dev.l2n + k, table_off, host, zero_word)
                else:
                    dev._set_entry(li * dev.l2n + k, table_off, host | q.OFLAG_ZERO, 0)
        vc += n


def _new_zero_l2(dev: Qcow2Device, l1_index: int, zero_word: int) -> None:
    """A new L2 table whose every entry reads as zeros, written in one piece."""
    words = array("Q", [0, zero_word] * dev.l2n) if dev.ext \
        else array("Q", [zero_word] * dev.l2n)
    new = dev.refs.alloc(1, zero=False)
    dev.pwrite(u64s_be(words), new)
    dev.l1[l1_index] = new | q.OFLAG_COPIED
    dev.pwrite((new | q.OFLAG_COPIED).to_bytes(8, "big"),
               dev.meta.l1_table_offset + l1_index * 8)
