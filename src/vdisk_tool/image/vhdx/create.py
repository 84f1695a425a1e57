"""Writing new VHDX files, dynamic or fixed (MS-VHDX §2; specs/vhdx.md §Writer).

The layout is qemu's and Hyper-V's: file identifier, two headers, two region tables in
the first MiB; a 1 MiB log (empty) at 1 MiB; the metadata region at 2 MiB; the BAT at
3 MiB; payload blocks after it, 1 MiB aligned. A dynamic file stores only blocks that
hold non-zero data; a fixed file stores every block, contiguously, and sets
LeaveBlockAllocated. The file is written under a temporary name and renamed into place.
"""
from __future__ import annotations

import os
import uuid
from collections.abc import Callable

from ...errors import RefusedError
from ...formats import vhdx as vx
from .. import hostio
from ..base import BlockDevice

SUBFORMATS = ("vhdx-dynamic", "vhdx-fixed")
LOG_OFFSET = 1 * vx.MIB
LOG_BYTES = 1 * vx.MIB
METADATA_OFFSET = 2 * vx.MIB
METADATA_BYTES = 1 * vx.MIB
BAT_OFFSET = 3 * vx.MIB
CREATOR = "vdisk"
Progress = Callable[[int, int], None]


def default_block_bytes(size_bytes: int) -> int:
    """qemu-img's choice when block_size is not given."""
    if size_bytes > 32 * (1 << 40):
        return 64 * vx.MIB
    if size_bytes > 100 * (1 << 30):
        return 32 * vx.MIB
    if size_bytes > 1 << 30:
        return 16 * vx.MIB
    return 8 * vx.MIB


def check_shape(size_bytes: int, block_bytes: int, sector_bytes: int = 512) -> None:
    if block_bytes < vx.MIN_BLOCK_BYTES or block_bytes > vx.MAX_BLOCK_BYTES or \
            block_bytes & (block_bytes - 1):
        raise RefusedError(f"block size must be a power of two from 1 MiB to 256 MiB, got {block_bytes}")
    if size_bytes <= 0 or size_bytes > vx.MAX_VIRTUAL_BYTES or size_bytes % sector_bytes:
        raise RefusedError(f"a VHDX holds a positive multiple of {sector_bytes} bytes up to "
                           f"64 TiB, not {size_bytes}")


def bat_region_bytes(size_bytes: int, block_bytes: int, sector_bytes: int = 512) -> int:
    n = vx.bat_entries(size_bytes, block_bytes, sector_bytes, False)
    return max(vx.MIB, -(-n * 8 // vx.MIB) * vx.MIB)


def build_headers(seq: int = 1) -> list[bytes]:
    """Two fresh headers (slots 1 and 2), the second current, empty log."""
    file_guid, data_guid = uuid.uuid4().bytes_le, uuid.uuid4().bytes_le
    out = []
    for i in range(2):
        raw = vx.Header.build(dict(
            signature=vx.HEADER_SIGNATURE, checksum=0, sequence_number=seq + i,
            file_write_guid=file_guid, data_write_guid=data_guid, log_guid=vx.ZERO_GUID,
            log_version=0, version=1, log_length_bytes=LOG_BYTES, log_offset=LOG_OFFSET,
            reserved=bytes(4016)))
        out.append(vx.with_checksum(raw))
    return out


def build_region_table(bat_offset: int, bat_bytes: int) -> bytes:
    buf = bytearray(vx.REGION_TABLE_BYTES)
    buf[:16] = vx.RegionTableHeader.build(dict(signature=vx.REGION_SIGNATURE, checksum=0,
                                               entry_count=2, reserved=0))
    for i, (g, off, n) in enumerate(((vx.BAT_GUID, bat_offset, bat_bytes),
                                     (vx.METADATA_GUID, METADATA_OFFSET, METADATA_BYTES))):
        buf[16 + 32 * i:48 + 32 * i] = vx.RegionTableEntry.build(
            dict(guid=g, file_offset=off, length_bytes=n, required=1))
    return vx.with_checksum(buf)


def build_metadata(size_bytes: int, block_bytes: int, fixed: bool, sector_bytes: int = 512,
                   disk_id: bytes | None = None) -> bytes:
    """The metadata table and its five system items (§2.6.2), items at 64 KiB."""
    req, vd = vx.METADATA_IS_REQUIRED, vx.METADATA_IS_VIRTUAL_DISK | vx.METADATA_IS_REQUIRED
    items = [
        (vx.FILE_PARAMETERS_GUID, req, vx.FileParameters.build(dict(
            block_bytes=block_bytes, flags=vx.PARAM_LEAVE_BLOCKS_ALLOCATED if fixed else 0))),
        (vx.VIRTUAL_DISK_SIZE_GUID, vd, size_bytes.to_bytes(8, "little")),
        (vx.VIRTUAL_DISK_ID_GUID, vd, disk_id or uuid.uuid4().bytes_le),
        (vx.LOGICAL_SECTOR_SIZE_GUID, vd, sector_bytes.to_bytes(4, "little")),
        (vx.PHYSICAL_SECTOR_SIZE_GUID, vd, (4096 if sector_bytes == 4096 else 512)
         .to_bytes(4, "little")),
    ]
    table = bytearray(vx.METADATA_TABLE_BYTES)
    table[:32] = vx.MetadataTableHeader.build(dict(signature=vx.METADATA_SIGNATURE, reserved=0,
                                                   entry_count=len(items), reserved2=bytes(20)))
    body = bytearray()
    for i, (g, flags, value) in enumerate(items):
        table[32 + 32 * i:64 + 32 * i] = vx.MetadataTableEntry.build(dict(
            item_id=g, offset=vx.METADATA_TABLE_BYTES + len(body), length_bytes=len(value),
            flags=flags, reserved2=0))
        body += value
    return bytes(table + body)


def file_identifier() -> bytes:
    return vx.FileIdentifier.build(dict(signature=vx.FILE_SIGNATURE,
                                        creator=CREATOR.encode("utf-16-le").ljust(512, b"\0")))


def write_vhdx(tmp: str, size_bytes: int, subformat: str, block_bytes: int | None,
               source: BlockDevice | None, progress: Progress | None = None) -> None:
    """Write a complete VHDX into the (empty) file `tmp`."""
    from ..create import data_pieces
    block_bytes = block_bytes or default_block_bytes(size_bytes)
    check_shape(size_bytes, block_bytes)
    fixed = subformat == "vhdx-fixed"
    ratio = vx.chunk_ratio(block_bytes, 512)
    blocks = vx.data_blocks(size_bytes, block_bytes)
    bat_bytes = bat_region_bytes(size_bytes, block_bytes)
    payload = BAT_OFFSET + bat_bytes
    bat = bytearray(bat_bytes)
    fd = os.open(tmp, os.O_RDWR | getattr(os, "O_CLOEXEC", 0))
    try:
        hostio.pwrite(fd, file_identifier(), 0)
        for off, raw in zip(vx.HEADER_OFFSETS, build_headers(), strict=True):
            hostio.pwrite(fd, raw, off)
        for off in vx.REGION_TABLE_OFFSETS:
            hostio.pwrite(fd, build_region_table(BAT_OFFSET, bat_bytes), off)
        hostio.pwrite(fd, build_metadata(size_bytes, block_bytes, fixed), METADATA_OFFSET)
        where: dict[int, int] = {}
        if fixed:
            for b in range(blocks):
                where[b] = payload + b * block_bytes
            end = payload + blocks * block_bytes
        else:
            end = payload
        hostio.ftruncate(fd, end)
        if source is not None:
            for off, piece in data_pieces(source, 0, size_bytes, vx.MIB):
                b, within = divmod(off, block_bytes)
                if b not in where:
                    where[b] = end
                    end += block_bytes
                    hostio.ftruncate(fd, end)
                hostio.pwrite(fd, piece, where[b] + within)
                if progress:
                    progress(off + len(piece), size_bytes)
        for b, at in where.items():
            i = vx.payload_index(b, ratio) * 8
            bat[i:i + 8] = vx.bat_entry(vx.PAYLOAD_BLOCK_FULLY_PRESENT, at).to_bytes(8, "little")
        hostio.pwrite(fd, bytes(bat), BAT_OFFSET)
        hostio.fsync(fd)
    finally:
        os.close(fd)


def _bytes(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    try:
        return int(t[:-1]) * units[t[-1]] if t and t[-1] in units else int(t)
    except ValueError:
        raise RefusedError(f"not a size: {text!r} (use e.g. 1M, 32M)") from None


def parse_options(options: dict[str, str] | None) -> dict[str, int | None]:
    """qemu-img style creation options (-o block_size=8M) as create_vhdx arguments."""
    out: dict[str, int | None] = {}
    for key, value in (options or {}).items():
        if key == "block_size":
            out["block_bytes"] = _bytes(value) or None
        elif key != "subformat":
            raise RefusedError(f"unknown VHDX option {key!r}; vdisk takes subformat and block_size")
    return out


def create_vhdx(path: str, size_bytes: int, subformat: str, *, block_bytes: int | None = None,
                source: BlockDevice | None = None, progress: Progress | None = None,
                backup: str | None = None) -> list[str]:
    """Create `path` as a VHDX of `subformat` ('vhdx-dynamic' or 'vhdx-fixed'), filled from
    `source` if given (image/create.py create_image checks the target first). Returns the
    files written."""
    from ..safe import Replacement, create_temp
    if subformat not in SUBFORMATS:
        raise RefusedError(f"unknown VHDX subformat {subformat!r}; choose dynamic or fixed")
    check_shape(size_bytes, block_bytes or default_block_bytes(size_bytes))
    target = os.path.abspath(path)
    rep = Replacement()
    try:
        tmp = create_temp(path)
        rep.add(tmp, target)
        write_vhdx(tmp, size_bytes, subformat, block_bytes, source, progress)
        rep.commit(backup=backup)
    except BaseException:
        rep.abort()
        raise
    return [target]
