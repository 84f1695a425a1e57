"""Growing a VHDX in place (MS-VHDX §2.5, §2.6.2.2; specs/vhdx.md §Grow).

qemu-img cannot resize VHDX; the format allows it: VirtualDiskSize changes, and the BAT
must hold the entries the new size needs. The payload entries keep their indexes (the
interleaving depends on the chunk ratio only), so when the BAT region is too small a
larger one is written at the end of the file, the old entries copied, and both region
tables pointed at it. A fixed file gets its new blocks allocated. All of it runs under
the edit's undo journal (image/edit.py), so an interruption leaves the old file.
"""
from __future__ import annotations

from ...errors import RefusedError
from ...formats import vhdx as vx
from .. import hostio
from .device import VhdxDevice

PIECE = vx.MIB


def grow_device(dev: VhdxDevice, new_bytes: int) -> None:
    """Make `dev` `new_bytes` long; the old content stays, the new part reads as zeros."""
    lay = dev.layout
    if new_bytes % lay.logical_sector_bytes or new_bytes > vx.MAX_VIRTUAL_BYTES:
        raise RefusedError(f"a VHDX holds a multiple of {lay.logical_sector_bytes} bytes up to "
                           f"64 TiB, not {new_bytes}", path=dev.path)
    old_bytes, old_count = lay.virtual_bytes, lay.bat_count
    dev._start_session()
    _clear_tail(dev, old_bytes)
    lay.virtual_bytes = new_bytes
    new_count = lay.bat_count
    if new_count * 8 > lay.bat_bytes:
        _move_bat(dev, new_count)
    for first in range(old_count, new_count, PIECE // 8):   # entries past the old end: unused
        n = min(PIECE // 8, new_count - first)
        hostio.pwrite(dev.fd, bytes(n * 8), lay.bat_offset + first * 8)
    dev._bat_pages.clear()
    off = lay.metadata_items[vx.VIRTUAL_DISK_SIZE_GUID][0]
    hostio.pwrite(dev.fd, new_bytes.to_bytes(8, "little"), off)
    dev.size_bytes = new_bytes
    if lay.leave_allocated and not lay.has_parent:
        first_new = -(-old_bytes // lay.block_bytes)
        for block in range(first_new, lay.data_blocks):
            at = dev._allocate(lay.block_bytes)
            dev._set_entry(vx.payload_index(block, dev.ratio),
                           vx.bat_entry(vx.PAYLOAD_BLOCK_FULLY_PRESENT, at))


def _clear_tail(dev: VhdxDevice, old_bytes: int) -> None:
    """The bytes of the last block past the old end become disk content: make them zeros."""
    block, within = divmod(old_bytes, dev.block_bytes)
    if not within:
        return
    e = dev.entry(vx.payload_index(block, dev.ratio))
    if vx.bat_state(e) not in (vx.PAYLOAD_BLOCK_FULLY_PRESENT, vx.PAYLOAD_BLOCK_PARTIALLY_PRESENT):
        return
    base = vx.bat_offset(e)
    end = min(base + dev.block_bytes, hostio.file_bytes(dev.fd))
    for pos in range(base + within, end, PIECE):
        hostio.pwrite(dev.fd, bytes(min(PIECE, end - pos)), pos)


def _move_bat(dev: VhdxDevice, count: int) -> None:
    lay = dev.layout
    new_len = -(-count * 8 // vx.MIB) * vx.MIB
    if new_len > 0xFFFFFFFF // vx.MIB * vx.MIB:
        raise RefusedError("the BAT of that size does not fit a region (4 GiB)", path=dev.path)
    at = dev._allocate(new_len)
    for pos in range(0, lay.bat_bytes, PIECE):
        n = min(PIECE, lay.bat_bytes - pos)
        hostio.pwrite(dev.fd, dev.pread(n, lay.bat_offset + pos), at + pos)
    table = bytearray(dev.pread(vx.REGION_TABLE_BYTES, vx.REGION_TABLE_OFFSETS[lay.region_slot]))
    n = vx.RegionTableHeader.parse(table).entry_count
    for i in range(n):
        o = 16 + 32 * i
        if bytes(table[o:o + 16]) == vx.BAT_GUID:
            table[o + 16:o + 28] = at.to_bytes(8, "little") + new_len.to_bytes(4, "little")
    raw = vx.with_checksum(table)
    for off in vx.REGION_TABLE_OFFSETS:
        hostio.pwrite(dev.fd, raw, off)
    lay.regions[vx.BAT_GUID] = (at, new_len)
