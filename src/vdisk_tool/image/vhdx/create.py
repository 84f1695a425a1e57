"""Writing new VHDX files, dynamic, fixed or differencing (MS-VHDX §2; specs/vhdx.md
§Writer).

The layout is qemu's and Hyper-V's: file identifier, two headers, two region tables in
the first MiB; a 1 MiB log (empty) at 1 MiB; the metadata region at 2 MiB; the BAT at
3 MiB; payload blocks after it, 1 MiB aligned. A dynamic file stores only blocks that
hold non-zero data; a fixed file stores every block, contiguously, and sets
LeaveBlockAllocated. A differencing file (a child) is empty: HasParent, the parent's
block size and virtual-disk items (§2.6.1.2 IsVirtualDisk: size, id, sector sizes), a
parent locator naming the parent and its DataWriteGuid, every BAT entry not present.
The file is written under a temporary name and renamed into place.
"""
from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypedDict

from ...errors import RefusedError
from ...formats import vhdx as vx
from .. import hostio, platform
from ..base import BlockDevice
from .device import VhdxDevice

SUBFORMATS = ("vhdx-dynamic", "vhdx-fixed")
DIFFERENCING = "vhdx-differencing"
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


def bat_region_bytes(size_bytes: int, block_bytes: int, sector_bytes: int = 512,
                     has_parent: bool = False) -> int:
    n = vx.bat_entries(size_bytes, block_bytes, sector_bytes, has_parent)
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


Item = tuple[bytes, int, bytes]   # (ItemID, IsUser|IsVirtualDisk|IsRequired flags, value)


def build_metadata(size_bytes: int, block_bytes: int, fixed: bool, sector_bytes: int = 512,
                   disk_id: bytes | None = None) -> bytes:
    """The metadata table and its five system items (§2.6.2), items at 64 KiB."""
    req = vx.METADATA_IS_REQUIRED
    return metadata_region([
        (vx.FILE_PARAMETERS_GUID, req, vx.FileParameters.build(dict(
            block_bytes=block_bytes, flags=vx.PARAM_LEAVE_BLOCKS_ALLOCATED if fixed else 0))),
        *disk_items(size_bytes, disk_id or uuid.uuid4().bytes_le, sector_bytes,
                    4096 if sector_bytes == 4096 else 512)])


def disk_items(size_bytes: int, disk_id: bytes, logical: int, physical: int) -> list[Item]:
    """The four system items that describe the virtual disk (IsVirtualDisk, §2.6.2)."""
    vd = vx.METADATA_IS_VIRTUAL_DISK | vx.METADATA_IS_REQUIRED
    return [(vx.VIRTUAL_DISK_SIZE_GUID, vd, size_bytes.to_bytes(8, "little")),
            (vx.VIRTUAL_DISK_ID_GUID, vd, disk_id),
            (vx.LOGICAL_SECTOR_SIZE_GUID, vd, logical.to_bytes(4, "little")),
            (vx.PHYSICAL_SECTOR_SIZE_GUID, vd, physical.to_bytes(4, "little"))]


def metadata_region(items: list[Item]) -> bytes:
    """The metadata table (§2.6.1) and the items after it, from 64 KiB on; at most the
    1 MiB region."""
    table = bytearray(vx.METADATA_TABLE_BYTES)
    table[:32] = vx.MetadataTableHeader.build(dict(signature=vx.METADATA_SIGNATURE, reserved=0,
                                                   entry_count=len(items), reserved2=bytes(20)))
    body = bytearray()
    for i, (g, flags, value) in enumerate(items):
        table[32 + 32 * i:64 + 32 * i] = vx.MetadataTableEntry.build(dict(
            item_id=g, offset=vx.METADATA_TABLE_BYTES + len(body) if value else 0,
            length_bytes=len(value), flags=flags, reserved2=0))
        body += value
    if len(table) + len(body) > METADATA_BYTES:
        raise RefusedError(f"the metadata items ({len(body)} bytes) do not fit the 1 MiB "
                           "metadata region")
    return bytes(table + body)


def locator_item(pairs: dict[str, str]) -> bytes:
    """A VHDX parent locator (§2.6.2.6): header, 12-byte entries, then the UTF-16LE keys
    and values (no NUL terminators)."""
    head = vx.ParentLocatorHeader.build(dict(locator_type=vx.VHDX_LOCATOR_TYPE_GUID,
                                             reserved=0, key_value_count=len(pairs)))
    entries, strings = bytearray(), bytearray()
    base = len(head) + 12 * len(pairs)
    for key, value in pairs.items():
        kb, vb = key.encode("utf-16-le"), value.encode("utf-16-le")
        if not kb or not vb or len(kb) > 0xFFFF or len(vb) > 0xFFFF or "\0" in key + value:
            raise RefusedError(f"parent locator entry {key!r} cannot be stored")
        entries += vx.ParentLocatorEntry.build(dict(
            key_offset=base + len(strings), value_offset=base + len(strings) + len(kb),
            key_length=len(kb), value_length=len(vb)))
        strings += kb + vb
    return head + bytes(entries) + bytes(strings)


def file_identifier() -> bytes:
    return vx.FileIdentifier.build(dict(signature=vx.FILE_SIGNATURE,
                                        creator=CREATOR.encode("utf-16-le").ljust(512, b"\0")))


def write_head(fd: int, bat_bytes: int, metadata: bytes) -> None:
    """The file identifier, both headers, both region tables and the metadata region."""
    hostio.pwrite(fd, file_identifier(), 0)
    for off, raw in zip(vx.HEADER_OFFSETS, build_headers(), strict=True):
        hostio.pwrite(fd, raw, off)
    for off in vx.REGION_TABLE_OFFSETS:
        hostio.pwrite(fd, build_region_table(BAT_OFFSET, bat_bytes), off)
    hostio.pwrite(fd, metadata, METADATA_OFFSET)


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
    fd = platform.open_fd(tmp, os.O_RDWR)
    try:
        write_head(fd, bat_bytes, build_metadata(size_bytes, block_bytes, fixed))
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


@dataclass(frozen=True)
class ParentFacts:
    """What a child takes from its VHDX parent (specs/vhdx.md §Writer, differencing)."""

    path: str                  # the parent on this host
    size_bytes: int
    block_bytes: int
    logical_sector_bytes: int
    physical_sector_bytes: int
    disk_id: bytes
    data_write_guid: bytes
    items: list[Item] = field(default_factory=list)   # other IsVirtualDisk items, copied
    locator: dict[str, str] = field(default_factory=dict)


# the items a child writes itself; every other IsVirtualDisk item of the parent is copied
_OWN_ITEMS = (vx.FILE_PARAMETERS_GUID, vx.VIRTUAL_DISK_SIZE_GUID, vx.VIRTUAL_DISK_ID_GUID,
              vx.LOGICAL_SECTOR_SIZE_GUID, vx.PHYSICAL_SECTOR_SIZE_GUID, vx.PARENT_LOCATOR_GUID)


def parent_facts(child: str, name: str, parent_format: str | None = None,
                 allow_outside: bool = False) -> ParentFacts:
    """Open the parent `name` (as -o backing_file gives it: relative to the child's folder,
    or a host path) with the path safety of parent locators, and take what the child needs."""
    from ..disk import _resolve, open_image
    if parent_format not in (None, "", "vhdx"):
        raise RefusedError(f"a differencing VHDX takes only a VHDX parent, not backing_fmt="
                           f"{parent_format}", path=child)
    base = os.path.dirname(os.path.abspath(child))
    given = name
    if os.path.isabs(name):
        try:
            given = os.path.relpath(name, base)
        except ValueError:   # another drive (Windows): stays absolute, so outside
            pass
    found = _resolve(base, given, allow_outside, "parent (backing_file)", child)
    if not os.path.isfile(found):
        raise RefusedError(f"parent {name!r} is not a file", path=child)
    if os.path.realpath(found) == os.path.realpath(child):
        raise RefusedError("a differencing VHDX cannot be its own parent", path=child)
    with open_image(found, allow_outside=allow_outside) as disk:
        if disk.format != "vhdx":
            raise RefusedError(f"a differencing VHDX takes only a VHDX parent; {name} is a "
                               f"{disk.format} image", path=child)
        dev = disk.extents[0].device
        assert isinstance(dev, VhdxDevice)
        lay = dev.layout
        facts = ParentFacts(found, lay.virtual_bytes, lay.block_bytes, lay.logical_sector_bytes,
                            lay.physical_sector_bytes, bytes(lay.disk_id),
                            bytes(dev.data_write_guid), _virtual_disk_items(dev))
    return ParentFacts(**{**vars(facts), "locator": locator_pairs(facts, base)})


def _virtual_disk_items(dev: VhdxDevice) -> list[Item]:
    """The parent's other items with IsVirtualDisk set, which a fork copies (§2.6.1.2);
    the layout parse has checked every entry's offset and length against the region."""
    start = dev.layout.regions[vx.METADATA_GUID][0]
    raw = dev.pread(vx.METADATA_TABLE_BYTES, start)
    count = vx.MetadataTableHeader.parse(raw[:32]).entry_count
    out: list[Item] = []
    total = 0
    for i in range(count):
        e = vx.MetadataTableEntry.parse(raw[32 + 32 * i:64 + 32 * i])
        user = e.flags & vx.METADATA_IS_USER
        if not e.flags & vx.METADATA_IS_VIRTUAL_DISK or (not user and e.item_id in _OWN_ITEMS):
            continue
        total += e.length_bytes
        if total > METADATA_BYTES - vx.METADATA_TABLE_BYTES:
            raise RefusedError("the parent's virtual-disk metadata items do not fit a child's "
                               "1 MiB metadata region", path=dev.path)
        out.append((bytes(e.item_id), e.flags, dev.pread(e.length_bytes, start + e.offset)
                    if e.length_bytes else b""))
    return out


def locator_pairs(facts: ParentFacts, child_dir: str) -> dict[str, str]:
    """parent_linkage (the parent's DataWriteGuid, lowercase in braces) and the paths one
    can derive on this host: relative_path always where the two share a root,
    absolute_win32_path and volume_path on Windows (§2.6.2.6.3)."""
    pairs = {"parent_linkage": "{" + vx.guid_text(facts.data_write_guid) + "}"}
    try:
        rel = os.path.relpath(facts.path, child_dir)
    except ValueError:
        rel = None
    if rel is not None:
        pairs["relative_path"] = rel.replace(os.sep, "\\")
    if platform.FEATURES.windows:
        absolute = os.path.abspath(facts.path)
        volume = platform.volume_path(absolute)
        if volume:
            pairs["volume_path"] = volume
        pairs["absolute_win32_path"] = win32_extended(absolute)
    return pairs


def win32_extended(path: str) -> str:
    """An absolute Windows path in its extended-length form: \\\\?\\d:\\... or
    \\\\?\\UNC\\server\\share\\..."""
    if path.startswith("\\\\?\\"):
        return path
    if path.startswith("\\\\"):
        return "\\\\?\\UNC\\" + path[2:]
    return "\\\\?\\" + path


def write_child(tmp: str, parent: ParentFacts) -> None:
    """Write an empty differencing VHDX over `parent` into the (empty) file `tmp`."""
    size, block, sector = parent.size_bytes, parent.block_bytes, parent.logical_sector_bytes
    bat_bytes = bat_region_bytes(size, block, sector, has_parent=True)
    meta = metadata_region([
        (vx.FILE_PARAMETERS_GUID, vx.METADATA_IS_REQUIRED,
         vx.FileParameters.build(dict(block_bytes=block, flags=vx.PARAM_HAS_PARENT))),
        *disk_items(size, parent.disk_id, sector, parent.physical_sector_bytes),
        (vx.PARENT_LOCATOR_GUID, vx.METADATA_IS_REQUIRED, locator_item(parent.locator)),
        *parent.items])
    fd = platform.open_fd(tmp, os.O_RDWR)
    try:
        write_head(fd, bat_bytes, meta)
        hostio.ftruncate(fd, BAT_OFFSET + bat_bytes)   # the BAT: zeros, every block not present
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


class VhdxOptions(TypedDict, total=False):
    block_bytes: int | None
    parent: str
    parent_format: str


def parse_options(options: dict[str, str] | None) -> VhdxOptions:
    """qemu-img style creation options (-o block_size=8M, backing_file=..., backing_fmt=vhdx)
    as create_vhdx arguments."""
    out: VhdxOptions = {}
    for key, value in (options or {}).items():
        if key == "block_size":
            out["block_bytes"] = _bytes(value) or None
        elif key == "backing_file":
            if not value:
                raise RefusedError("backing_file needs the parent's name")
            out["parent"] = value
        elif key == "backing_fmt":
            out["parent_format"] = value
        elif key != "subformat":
            raise RefusedError(f"unknown VHDX option {key!r}; vdisk takes subformat, block_size, "
                               "backing_file and backing_fmt")
    if "parent_format" in out and "parent" not in out:
        raise RefusedError("backing_fmt is given without backing_file")
    return out


def create_vhdx(path: str, size_bytes: int | None, subformat: str, *,
                block_bytes: int | None = None, source: BlockDevice | None = None,
                progress: Progress | None = None, backup: str | None = None,
                parent: str | None = None, parent_format: str | None = None,
                allow_outside: bool = False) -> list[str]:
    """Create `path` as a VHDX of `subformat` ('vhdx-dynamic', 'vhdx-fixed', or
    'vhdx-differencing' with `parent`), filled from `source` if given (image/create.py
    create_image checks the target first). A child's size and block size are its parent's:
    `size_bytes` and `block_bytes` may be None, any other value must match. Returns the
    files written."""
    from ..safe import Replacement, create_temp
    facts = None
    if parent is not None or subformat == DIFFERENCING:
        if parent is None:
            raise RefusedError("a differencing VHDX needs -o backing_file=PARENT")
        if source is not None:
            raise RefusedError("convert does not write differencing VHDX files; create the "
                               "child with `vdisk create CHILD.vhdx -o backing_file=PARENT`")
        facts = parent_facts(path, parent, parent_format, allow_outside)
        _match_parent(facts, size_bytes, block_bytes)
    elif subformat not in SUBFORMATS:
        raise RefusedError(f"unknown VHDX subformat {subformat!r}; choose dynamic or fixed")
    else:
        assert size_bytes is not None
        check_shape(size_bytes, block_bytes or default_block_bytes(size_bytes))
    target = os.path.abspath(path)
    rep = Replacement()
    try:
        tmp = create_temp(path)
        rep.add(tmp, target)
        if facts is not None:
            write_child(tmp, facts)
        else:
            assert size_bytes is not None
            write_vhdx(tmp, size_bytes, subformat, block_bytes, source, progress)
        rep.commit(backup=backup)
    except BaseException:
        rep.abort()
        raise
    return [target]


def _match_parent(facts: ParentFacts, size_bytes: int | None, block_bytes: int | None) -> None:
    """A child has its parent's virtual size (IsVirtualDisk, §2.6.1.2) and, in vdisk, its
    block size: a child block then lies over one parent block."""
    if size_bytes is not None and size_bytes != facts.size_bytes:
        raise RefusedError(f"a differencing VHDX has its parent's size ({facts.size_bytes} "
                           f"bytes), not {size_bytes}; leave --size out")
    if block_bytes is not None and block_bytes != facts.block_bytes:
        raise RefusedError(f"a differencing VHDX has its parent's block size "
                           f"({facts.block_bytes} bytes), not {block_bytes}; leave block_size out")
