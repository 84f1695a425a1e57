"""The structure of a VHDX file: headers, region tables, metadata (MS-VHDX §2.2, §2.6).

read_layout() parses eagerly what is small (two 4 KiB headers, two 64 KiB region tables,
the 64 KiB metadata table and its items) and checks every size against the file before
anything is allocated. It runs in two modes: strict (open: the first fatal problem raises
FormatError, a damaged copy of a duplicated structure becomes a warning) and collecting
(check: every problem is recorded as a Problem with its finding code).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ...errors import FormatError, UnsupportedError
from ...formats import vhdx as vx

Reader = Callable[[int, int], bytes]   # (length, offset) -> bytes, short at the end


@dataclass(frozen=True)
class Problem:
    code: str
    message: str
    offset: int | None
    fatal: bool
    fixable: bool = False


class _Stop(Exception):
    """Parsing cannot go on (collecting mode)."""


@dataclass
class Problems:
    strict: bool
    path: str
    found: list[Problem] = field(default_factory=list)

    def add(self, code: str, message: str, offset: int | None = None, fatal: bool = True,
            fixable: bool = False, stop: bool = False) -> None:
        if self.strict and fatal:
            cls = UnsupportedError if code.endswith("unsupported") else FormatError
            raise cls(message, path=self.path, offset=offset)
        self.found.append(Problem(code, message, offset, fatal, fixable))
        if stop:
            raise _Stop


@dataclass
class HeaderCopy:
    slot: int                  # 0 or 1
    offset: int
    raw: bytes
    fields: Any                # the parsed Header, None if it does not verify
    problem: str | None


@dataclass
class Layout:
    file_bytes: int
    headers: list[HeaderCopy]
    current: int                              # slot of the current header
    region_slot: int = 0                      # which region table copy was used
    regions: dict[bytes, tuple[int, int]] = field(default_factory=dict)  # guid -> (offset, bytes)
    metadata_items: dict[bytes, tuple[int, int, int]] = field(default_factory=dict)
    block_bytes: int = 0
    leave_allocated: bool = False
    has_parent: bool = False
    virtual_bytes: int = 0
    logical_sector_bytes: int = 512
    physical_sector_bytes: int = 512
    disk_id: bytes = vx.ZERO_GUID
    locator: dict[str, str] = field(default_factory=dict)

    @property
    def header(self):
        return self.headers[self.current].fields

    @property
    def bat_offset(self) -> int:
        return self.regions[vx.BAT_GUID][0]

    @property
    def bat_bytes(self) -> int:
        return self.regions[vx.BAT_GUID][1]

    @property
    def chunk_ratio(self) -> int:
        return vx.chunk_ratio(self.block_bytes, self.logical_sector_bytes)

    @property
    def bat_count(self) -> int:
        return vx.bat_entries(self.virtual_bytes, self.block_bytes, self.logical_sector_bytes,
                              self.has_parent)

    @property
    def data_blocks(self) -> int:
        return vx.data_blocks(self.virtual_bytes, self.block_bytes)


def read_headers(read: Reader, file_bytes: int, probs: Problems) -> tuple[list[HeaderCopy], int]:
    """Both headers and the slot of the current one: the valid copy with the larger
    SequenceNumber (§2.2.2)."""
    ident = read(8, 0)
    if ident != vx.FILE_SIGNATURE:
        probs.add("vhdx.bad-file-identifier", f"FileIdentifier.Signature at 0x0: expected "
                  f"'vhdxfile', got {ident!r}", 0, stop=True)
    copies = []
    for slot, off in enumerate(vx.HEADER_OFFSETS):
        raw = read(vx.HEADER_BYTES, off)
        copies.append(_header_copy(slot, off, raw))
    good = [c for c in copies if c.fields is not None]
    if not good:
        probs.add("vhdx.no-valid-header", f"neither header verifies ({copies[0].problem}; "
                  f"{copies[1].problem})", vx.HEADER_OFFSETS[0], stop=True)
    current = max(good, key=lambda c: c.fields.sequence_number).slot
    for c in copies:
        if c.fields is None:
            probs.add("vhdx.header-damaged", f"header {c.slot + 1} at 0x{c.offset:x}: {c.problem}; "
                      "the other header is used", c.offset, fatal=False, fixable=True)
    h = copies[current].fields
    if h.version != 1:
        at = copies[current].offset + 0x42
        probs.add("vhdx.header-version-unsupported", f"Header.Version at 0x{at:x}: "
                  f"expected 1, got {h.version}", copies[current].offset, stop=True)
    return copies, current


def _header_copy(slot: int, off: int, raw: bytes) -> HeaderCopy:
    if len(raw) < vx.HEADER_BYTES:
        return HeaderCopy(slot, off, raw, None, "the file ends inside it")
    if raw[:4] != vx.HEADER_SIGNATURE:
        return HeaderCopy(slot, off, raw, None, f"signature is {raw[:4]!r}, not 'head'")
    if not vx.checksum_ok(raw):
        return HeaderCopy(slot, off, raw, None, "its CRC-32C does not match")
    return HeaderCopy(slot, off, raw, vx.Header.parse(raw), None)


def check_log_fields(h, file_bytes: int, probs: Problems, at: int) -> None:
    """LogOffset/LogLength alignment and placement (§2.2.2)."""
    if h.log_length_bytes % vx.MIB or h.log_offset % vx.MIB or (
            h.log_length_bytes and h.log_offset < vx.HEADER_SECTION_BYTES):
        probs.add("vhdx.log-misplaced", f"log at 0x{h.log_offset:x} ({h.log_length_bytes} bytes) "
                  "is not 1 MiB aligned after the header section", at, stop=True)
    if h.log_guid != vx.ZERO_GUID and h.log_version != 0:
        probs.add("vhdx.log-version-unsupported", f"Header.LogVersion is {h.log_version}, only "
                  "0 is defined, and the log is not empty", at, stop=True)
    if h.log_offset + h.log_length_bytes > file_bytes and h.log_guid != vx.ZERO_GUID:
        probs.add("vhdx.log-past-eof", f"the log (0x{h.log_offset:x} + {h.log_length_bytes}) "
                  f"reaches past the end of the file ({file_bytes} bytes)", at, stop=True)


def read_regions(read: Reader, lay: Layout, probs: Problems) -> None:
    """Both region table copies; the first that verifies is used (§2.2.3)."""
    tables: list[dict[bytes, tuple[int, int, int]] | None] = []
    errs = []
    for off in vx.REGION_TABLE_OFFSETS:
        raw = read(vx.REGION_TABLE_BYTES, off)
        err, table = _region_table(raw)
        tables.append(table)
        errs.append(err)
    if tables[0] is None and tables[1] is None:
        probs.add("vhdx.no-valid-region-table", f"neither region table verifies ({errs[0]}; "
                  f"{errs[1]})", vx.REGION_TABLE_OFFSETS[0], stop=True)
    for i, t in enumerate(tables):
        if t is None:
            probs.add("vhdx.region-table-damaged", f"region table {i + 1} at "
                      f"0x{vx.REGION_TABLE_OFFSETS[i]:x}: {errs[i]}; the other copy is used",
                      vx.REGION_TABLE_OFFSETS[i], fatal=False, fixable=True)
    slot = 0 if tables[0] is not None else 1
    table = tables[slot]
    assert table is not None
    if tables[0] is not None and tables[1] is not None and tables[0] != tables[1]:
        probs.add("vhdx.region-table-mismatch", "the two region tables verify but differ; "
                  "the first is used", vx.REGION_TABLE_OFFSETS[1], fatal=False)
    lay.region_slot = slot
    at = vx.REGION_TABLE_OFFSETS[slot]
    spans: list[tuple[int, int, str]] = []
    h = lay.header
    if h.log_length_bytes:
        spans.append((h.log_offset, h.log_offset + h.log_length_bytes, "the log"))
    for g, (start, length, required) in table.items():
        name = vx.KNOWN_REGIONS.get(g)
        if name is None:
            if required:
                probs.add("vhdx.region-unsupported", f"required region {vx.guid_text(g)} is "
                          "unknown: the file cannot be opened safely", at, stop=True)
            continue
        if start % vx.MIB or start < vx.HEADER_SECTION_BYTES or length % vx.MIB or not length:
            probs.add("vhdx.region-misaligned", f"{name} region at 0x{start:x} ({length} bytes) "
                      "is not 1 MiB aligned after the header section", at, stop=True)
        if start + length > lay.file_bytes:
            probs.add("vhdx.region-past-eof", f"{name} region (0x{start:x} + {length}) reaches "
                      f"past the end of the file ({lay.file_bytes} bytes)", at, stop=True)
        spans.append((start, start + length, f"the {name} region"))
        lay.regions[g] = (start, length)
    spans.sort()
    for (a0, a1, an), (b0, b1, bn) in zip(spans, spans[1:], strict=False):
        if b0 < a1:
            probs.add("vhdx.region-overlap", f"{an} (0x{a0:x}..0x{a1:x}) overlaps {bn} "
                      f"(0x{b0:x}..0x{b1:x})", at, stop=True)
    for g, name in vx.KNOWN_REGIONS.items():
        if g not in lay.regions:
            probs.add("vhdx.region-missing", f"the region table has no {name} region", at, stop=True)


def _region_table(raw: bytes) -> tuple[str | None, dict | None]:
    if len(raw) < vx.REGION_TABLE_BYTES:
        return "the file ends inside it", None
    if raw[:4] != vx.REGION_SIGNATURE:
        return f"signature is {raw[:4]!r}, not 'regi'", None
    if not vx.checksum_ok(raw):
        return "its CRC-32C does not match", None
    hdr = vx.RegionTableHeader.parse(raw)
    if hdr.entry_count > vx.MAX_REGION_ENTRIES:
        return f"EntryCount {hdr.entry_count} is more than {vx.MAX_REGION_ENTRIES}", None
    table: dict[bytes, tuple[int, int, int]] = {}
    for i in range(hdr.entry_count):
        e = vx.RegionTableEntry.parse(raw[16 + 32 * i:48 + 32 * i])
        if e.guid in table:
            return f"region {vx.guid_text(e.guid)} is listed twice", None
        table[e.guid] = (e.file_offset, e.length_bytes, e.required & 1)
    return None, table


def read_metadata(read: Reader, lay: Layout, probs: Problems) -> None:
    """The metadata table and the known items (§2.6)."""
    start, length = lay.regions[vx.METADATA_GUID]
    raw = read(vx.METADATA_TABLE_BYTES, start)
    hdr = vx.MetadataTableHeader.parse(raw.ljust(32, b"\0"))
    if hdr.signature != vx.METADATA_SIGNATURE:
        probs.add("vhdx.metadata-table-bad", f"MetadataTableHeader.Signature at 0x{start:x}: "
                  f"expected 'metadata', got {hdr.signature!r}", start, stop=True)
    if hdr.entry_count > vx.MAX_METADATA_ENTRIES:
        probs.add("vhdx.metadata-table-bad", f"MetadataTableHeader.EntryCount at 0x{start + 10:x}: "
                  f"{hdr.entry_count} is more than {vx.MAX_METADATA_ENTRIES}", start, stop=True)
    spans = []
    for i in range(hdr.entry_count):
        at = start + 32 + 32 * i
        e = vx.MetadataTableEntry.parse(raw[32 + 32 * i:64 + 32 * i])
        user = bool(e.flags & vx.METADATA_IS_USER)
        if e.length_bytes > vx.MAX_METADATA_ITEM_BYTES or (
                e.length_bytes and (e.offset < vx.METADATA_TABLE_BYTES
                                    or e.offset + e.length_bytes > length)) or (
                not e.length_bytes and e.offset):
            probs.add("vhdx.metadata-item-bad", f"metadata item {vx.guid_text(e.item_id)} at "
                      f"0x{at:x}: offset 0x{e.offset:x} length {e.length_bytes} does not lie in "
                      f"the metadata region ({length} bytes) after its table", at, stop=True)
        if e.length_bytes:
            spans.append((e.offset, e.offset + e.length_bytes))
        if user:
            continue
        if e.item_id in lay.metadata_items:
            probs.add("vhdx.metadata-item-bad", f"metadata item {vx.guid_text(e.item_id)} is "
                      "listed twice", at, stop=True)
        if e.item_id not in vx.KNOWN_METADATA and e.flags & vx.METADATA_IS_REQUIRED:
            probs.add("vhdx.metadata-unsupported", f"required metadata item "
                      f"{vx.guid_text(e.item_id)} is unknown: the file cannot be opened safely",
                      at, stop=True)
        lay.metadata_items[e.item_id] = (start + e.offset, e.length_bytes, at)
    spans.sort()
    for (a0, a1), (b0, _b1) in zip(spans, spans[1:], strict=False):
        if b0 < a1:
            probs.add("vhdx.metadata-item-bad", f"metadata items at 0x{start + a0:x} and "
                      f"0x{start + b0:x} overlap", start, stop=True)
    for g in vx.REQUIRED_METADATA:
        if g not in lay.metadata_items:
            probs.add("vhdx.metadata-missing", f"the metadata table has no {vx.KNOWN_METADATA[g]} "
                      "item", start, stop=True)
    _known_items(read, lay, probs)


def _item(read: Reader, lay: Layout, g: bytes, need: int, probs: Problems) -> bytes:
    off, n, at = lay.metadata_items[g]
    if n < need:
        probs.add("vhdx.metadata-item-bad", f"{vx.KNOWN_METADATA[g]} item at 0x{at:x} is "
                  f"{n} bytes, needs {need}", at, stop=True)
    return read(n, off)


def _known_items(read: Reader, lay: Layout, probs: Problems) -> None:
    fp = vx.FileParameters.parse(_item(read, lay, vx.FILE_PARAMETERS_GUID, 8, probs)[:8])
    at = lay.metadata_items[vx.FILE_PARAMETERS_GUID][0]
    b = fp.block_bytes
    if b < vx.MIN_BLOCK_BYTES or b > vx.MAX_BLOCK_BYTES or b & (b - 1):
        probs.add("vhdx.block-size-bad", f"FileParameters.BlockSize at 0x{at:x}: expected a "
                  f"power of two from 1 MiB to 256 MiB, got {b}", at, stop=True)
    lay.block_bytes = b
    lay.leave_allocated = bool(fp.flags & vx.PARAM_LEAVE_BLOCKS_ALLOCATED)
    lay.has_parent = bool(fp.flags & vx.PARAM_HAS_PARENT)
    for g, attr in ((vx.LOGICAL_SECTOR_SIZE_GUID, "logical_sector_bytes"),
                    (vx.PHYSICAL_SECTOR_SIZE_GUID, "physical_sector_bytes")):
        v = int.from_bytes(_item(read, lay, g, 4, probs)[:4], "little")
        if v not in (512, 4096):
            at = lay.metadata_items[g][0]
            probs.add("vhdx.sector-size-bad", f"{vx.KNOWN_METADATA[g]} at 0x{at:x}: expected "
                      f"512 or 4096, got {v}", at, stop=True)
        setattr(lay, attr, v)
    size = int.from_bytes(_item(read, lay, vx.VIRTUAL_DISK_SIZE_GUID, 8, probs)[:8], "little")
    at = lay.metadata_items[vx.VIRTUAL_DISK_SIZE_GUID][0]
    if not size or size > vx.MAX_VIRTUAL_BYTES or size % lay.logical_sector_bytes:
        probs.add("vhdx.disk-size-bad", f"VirtualDiskSize at 0x{at:x}: {size} is not a positive "
                  "multiple of the logical sector size of at most 64 TiB", at, stop=True)
    lay.virtual_bytes = size
    lay.disk_id = _item(read, lay, vx.VIRTUAL_DISK_ID_GUID, 16, probs)[:16]
    need = lay.bat_count * 8
    if lay.bat_bytes < need:
        probs.add("vhdx.bat-too-small", f"the BAT region holds {lay.bat_bytes // 8} entries, a "
                  f"disk of {size} bytes in blocks of {b} needs {lay.bat_count}",
                  lay.bat_offset, stop=True)
    if lay.has_parent:
        if vx.PARENT_LOCATOR_GUID not in lay.metadata_items:
            probs.add("vhdx.metadata-missing", "HasParent is set but there is no parent locator",
                      at, stop=True)
        lay.locator = _locator(read, lay, probs)


def _locator(read: Reader, lay: Layout, probs: Problems) -> dict[str, str]:
    """The key/value pairs of a VHDX parent locator (§2.6.2.6)."""
    raw = _item(read, lay, vx.PARENT_LOCATOR_GUID, 20, probs)
    at = lay.metadata_items[vx.PARENT_LOCATOR_GUID][0]
    hdr = vx.ParentLocatorHeader.parse(raw[:20])
    if hdr.locator_type != vx.VHDX_LOCATOR_TYPE_GUID:
        probs.add("vhdx.locator-unsupported", f"parent locator type "
                  f"{vx.guid_text(hdr.locator_type)} is not the VHDX locator", at, stop=True)
    if 20 + 12 * hdr.key_value_count > len(raw):
        probs.add("vhdx.locator-bad", f"parent locator at 0x{at:x}: {hdr.key_value_count} "
                  f"entries do not fit its {len(raw)} bytes", at, stop=True)
    out: dict[str, str] = {}
    for i in range(hdr.key_value_count):
        e = vx.ParentLocatorEntry.parse(raw[20 + 12 * i:32 + 12 * i])
        try:
            if (not e.key_length or not e.value_length or e.key_offset + e.key_length > len(raw)
                    or e.value_offset + e.value_length > len(raw)):
                raise ValueError("outside the item")
            key = raw[e.key_offset:e.key_offset + e.key_length].decode("utf-16-le")
            val = raw[e.value_offset:e.value_offset + e.value_length].decode("utf-16-le")
        except (ValueError, UnicodeDecodeError) as exc:
            probs.add("vhdx.locator-bad", f"parent locator entry {i} at 0x{at:x}: {exc}", at,
                      stop=True)
            continue
        if key in out:
            probs.add("vhdx.locator-bad", f"parent locator key {key!r} appears twice", at, stop=True)
        out[key] = val
    if "parent_linkage" not in out:
        probs.add("vhdx.locator-bad", "parent locator has no parent_linkage", at, stop=True)
    if not any(k in out for k in ("relative_path", "volume_path", "absolute_win32_path")):
        probs.add("vhdx.locator-bad", "parent locator names no path to the parent", at, stop=True)
    return out


def parse_guid_text(text: str) -> bytes | None:
    import uuid
    try:
        return uuid.UUID(text.strip().strip("{}")).bytes_le
    except ValueError:
        return None
