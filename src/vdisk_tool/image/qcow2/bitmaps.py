"""Persistent dirty bitmaps of a qcow2 image (header extension 0x23852875; specs/qcow2.md,
"Persistent bitmaps").

vdisk reads the bitmap directory but does not keep bitmap contents up to date. A bitmap
with the `auto` flag must record every write to the image, so the first write of an edit
sets its `in_use` flag, as qemu does while it has an image open: qemu and libvirt then
treat the bitmap as inconsistent (an incremental backup from it is refused, a full one
is needed) instead of trusting a bitmap that misses vdisk's writes. Bitmaps without
`auto` record nothing and are left alone. The flags are written through the edit's undo
journal like every other change.
"""
from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

ENTRY_HEAD = struct.Struct(">QIIBBHI")     # table offset, table size, flags, type, ...
FLAG_IN_USE = 1 << 0
FLAG_AUTO = 1 << 1
MAX_DIRECTORY_BYTES = 64 << 20             # qemu's limit on the directory
MAX_BITMAPS = 65535


@dataclass(frozen=True)
class Entry:
    """One bitmap directory entry: where it lies in the directory and what it says."""

    at: int                 # byte offset of the entry within the directory
    table_offset: int
    table_size: int         # entries (8 bytes each)
    flags: int
    granularity_bits: int
    name: str


def entries(raw: bytes, count: int) -> Iterator[Entry]:
    """The directory's entries, as far as `raw` holds them (at most MAX_BITMAPS)."""
    pos = 0
    for _ in range(min(count, MAX_BITMAPS)):
        if pos + ENTRY_HEAD.size > len(raw):
            return
        t_off, t_size, flags, _typ, gran, name_size, extra = ENTRY_HEAD.unpack_from(raw, pos)
        start = pos + ENTRY_HEAD.size + extra
        name = raw[start:start + name_size].decode("utf-8", "replace")
        yield Entry(pos, t_off, t_size, flags, gran, name)
        pos = start + name_size
        pos += -pos % 8


def directory(dev: Any) -> tuple[int, list[Entry]]:
    """(directory offset, entries) of a device's bitmaps; (0, []) without any."""
    found = dev.meta.bitmaps
    if not found:
        return 0, []
    count, off, nbytes = found
    if not nbytes or nbytes > MAX_DIRECTORY_BYTES or off + nbytes > dev.file_bytes:
        return 0, []
    return off, list(entries(dev.pread(nbytes, off), count))


def mark_auto_in_use(dev: Any) -> list[str]:
    """Set `in_use` on every `auto` bitmap that lacks it; return their names."""
    off, found = directory(dev)
    marked = []
    for e in found:
        if e.flags & FLAG_AUTO and not e.flags & FLAG_IN_USE:
            dev.pwrite(struct.pack(">I", e.flags | FLAG_IN_USE), off + e.at + 12)
            marked.append(e.name)
    return marked
