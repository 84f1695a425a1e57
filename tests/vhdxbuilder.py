"""An independent VHDX builder for tests, written from MS-VHDX with struct only (none of
vdisk's code): dynamic and differencing files, logs with entries to replay, and the
knobs to break each structure. qemu-img writes neither logs nor differencing files, so
these inputs come from here.

parse() reads a VHDX back the same way (struct only, every MUST of MS-VHDX §2.2 and §2.6 it
meets asserted), so files vdisk writes can be judged without vdisk.

Layout: identifier 0, headers 64/128 KiB, region tables 192/256 KiB, log at 1 MiB,
metadata at LOG+log_bytes, BAT after it, payload blocks after the BAT.
"""
from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass, field

import crcmod.predefined

MIB = 1 << 20
_crc = crcmod.predefined.mkCrcFun("crc-32c")

BAT = "2DC27766-F623-4200-9D64-115E9BFD4A08"
META = "8B7CA206-4790-4B9A-B8FE-575F050F886E"
FILE_PARAMS = "CAA16737-FA36-4D43-B3B6-33F0AA44E76B"
DISK_SIZE = "2FA54224-CD1B-4876-B211-5DBED83BF4B8"
DISK_ID = "BECA12AB-B2E6-4523-93EF-C309E000C746"
LOGICAL = "8141BF1D-A96F-4709-BA47-F233A8FAAB5F"
PHYSICAL = "CDA348C7-445D-4471-9CC9-E9885251C556"
LOCATOR = "A8D35F2D-B30B-454D-ABF7-D3D84834AB0C"
VHDX_LOCATOR = "B04AEFB7-D19E-4A81-B789-25B8E9445913"


def g(text: str) -> bytes:
    return uuid.UUID(text).bytes_le


def crc_into(buf: bytearray, at: int = 4) -> None:
    buf[at:at + 4] = b"\0\0\0\0"
    struct.pack_into("<I", buf, at, _crc(bytes(buf)))


def header(seq: int, log_guid: bytes = bytes(16), data_guid: bytes | None = None,
           log_offset: int = MIB, log_bytes: int = MIB, version: int = 1) -> bytearray:
    buf = bytearray(4096)
    struct.pack_into("<4sIQ16s16s16sHHIQ", buf, 0, b"head", 0, seq, uuid.uuid4().bytes_le,
                     data_guid or uuid.uuid4().bytes_le, log_guid, 0, version, log_bytes,
                     log_offset)
    crc_into(buf)
    return buf


def region_table(entries: list[tuple[str, int, int, int]]) -> bytearray:
    buf = bytearray(64 * 1024)
    struct.pack_into("<4sIII", buf, 0, b"regi", 0, len(entries), 0)
    for i, (guid, off, n, req) in enumerate(entries):
        struct.pack_into("<16sQII", buf, 16 + 32 * i, g(guid), off, n, req)
    crc_into(buf)
    return buf


def locator_item(pairs: dict[str, str]) -> bytes:
    keys = bytearray()
    table = bytearray()
    base = 20 + 12 * len(pairs)
    for k, v in pairs.items():
        kb, vb = k.encode("utf-16-le"), v.encode("utf-16-le")
        ko = base + len(keys)
        keys += kb
        vo = base + len(keys)
        keys += vb
        table += struct.pack("<IIHH", ko, vo, len(kb), len(vb))
    return g(VHDX_LOCATOR) + struct.pack("<HH", 0, len(pairs)) + bytes(table) + bytes(keys)


def metadata(size: int, block: int, sector: int = 512, parent: dict[str, str] | None = None,
             extra: list[tuple[bytes, int, bytes]] = (), lengths: dict[str, int] | None = None
             ) -> bytearray:
    """Table + items; `lengths` overrides the Length of an item (bogus lengths)."""
    items = [(g(FILE_PARAMS), 4, struct.pack("<II", block, 2 if parent else 0)),
             (g(DISK_SIZE), 6, struct.pack("<Q", size)),
             (g(DISK_ID), 6, uuid.uuid4().bytes_le),
             (g(LOGICAL), 6, struct.pack("<I", sector)),
             (g(PHYSICAL), 6, struct.pack("<I", 4096))]
    if parent is not None:
        items.append((g(LOCATOR), 4, locator_item(parent)))
    items += list(extra)
    buf = bytearray(MIB)
    struct.pack_into("<8sHH", buf, 0, b"metadata", 0, len(items))
    at = 64 * 1024
    names = {g(FILE_PARAMS): "params", g(DISK_SIZE): "size", g(LOCATOR): "locator"}
    for i, (guid, flags, value) in enumerate(items):
        n = (lengths or {}).get(names.get(guid, ""), len(value))
        struct.pack_into("<16sIIII", buf, 32 + 32 * i, guid, at, n, flags, 0)
        buf[at:at + len(value)] = value
        at += len(value)
    return buf


def chunk_ratio(block: int, sector: int = 512) -> int:
    return (1 << 23) * sector // block


@dataclass
class Vhdx:
    """A VHDX to build. blocks: payload block index -> (state, bytes of the block or None).
    bitmaps: chunk -> bytes of the sector bitmap block (differencing)."""

    size: int
    block: int = MIB
    sector: int = 512
    parent: dict[str, str] | None = None
    blocks: dict[int, tuple[int, bytes | None]] = field(default_factory=dict)
    bitmaps: dict[int, bytes] = field(default_factory=dict)
    log_bytes: int = MIB
    data_guid: bytes = field(default_factory=lambda: uuid.uuid4().bytes_le)
    bat_override: dict[int, int] = field(default_factory=dict)   # BAT index -> raw entry
    meta_lengths: dict[str, int] | None = None
    meta_extra: list[tuple[bytes, int, bytes]] = field(default_factory=list)  # (id, flags, value)

    # offsets, known after build()
    meta_offset: int = 0
    bat_offset: int = 0
    payload_offset: int = 0

    def bat_count(self) -> int:
        n = -(-self.size // self.block)
        r = chunk_ratio(self.block, self.sector)
        if self.parent is not None:
            return -(-n // r) * (r + 1)
        return n + (n - 1) // r

    def build(self, log: bytes = b"", log_guid: bytes = bytes(16), regions=None) -> bytes:
        r = chunk_ratio(self.block, self.sector)
        self.meta_offset = MIB + self.log_bytes
        self.bat_offset = self.meta_offset + MIB
        bat_bytes = max(MIB, -(-self.bat_count() * 8 // MIB) * MIB)
        self.payload_offset = self.bat_offset + bat_bytes
        out = bytearray(self.payload_offset)
        out[0:8] = b"vhdxfile"
        out[8:8 + 10] = "tests".encode("utf-16-le")
        out[64 * 1024:68 * 1024] = header(1, log_guid, self.data_guid, MIB, self.log_bytes)
        out[128 * 1024:132 * 1024] = header(2, log_guid, self.data_guid, MIB, self.log_bytes)
        regs = regions or [(BAT, self.bat_offset, bat_bytes, 1), (META, self.meta_offset, MIB, 1)]
        rt = region_table(regs)
        out[192 * 1024:256 * 1024] = rt
        out[256 * 1024:320 * 1024] = rt
        out[MIB:MIB + len(log)] = log
        out[self.meta_offset:self.meta_offset + MIB] = metadata(
            self.size, self.block, self.sector, self.parent, extra=self.meta_extra,
            lengths=self.meta_lengths)
        bat = bytearray(bat_bytes)
        for blk, (state, data) in sorted(self.blocks.items()):
            off = 0
            if data is not None:
                off = len(out)
                out += data.ljust(self.block, b"\0")
            struct.pack_into("<Q", bat, 8 * (blk + blk // r), (off // MIB) << 20 | state)
        for chunk, bits in sorted(self.bitmaps.items()):
            off = len(out)
            out += bits.ljust(MIB, b"\0")
            struct.pack_into("<Q", bat, 8 * (chunk * (r + 1) + r), (off // MIB) << 20 | 6)
        for idx, raw in self.bat_override.items():
            struct.pack_into("<Q", bat, 8 * idx, raw)
        out[self.bat_offset:self.bat_offset + bat_bytes] = bat
        return bytes(out)


def log_entry(seq: int, tail: int, log_guid: bytes, writes: list[tuple[int, bytes | int]],
              flushed: int, last: int) -> bytes:
    """One log entry: writes are (file offset, 4 KiB of data) or (file offset, zero length)."""
    data = [(o, w) for o, w in writes if isinstance(w, bytes)]
    ndesc = len(writes)
    desc_sectors = -(-(64 + 32 * ndesc) // 4096)
    length = (desc_sectors + len(data)) * 4096
    buf = bytearray(length)
    struct.pack_into("<4sIIIQII16sQQ", buf, 0, b"loge", 0, length, tail, seq, ndesc, 0,
                     log_guid, flushed, last)
    at = desc_sectors * 4096
    for i, (off, w) in enumerate(writes):
        d = 64 + 32 * i
        if isinstance(w, bytes):
            assert len(w) == 4096
            struct.pack_into("<4s4s8sQQ", buf, d, b"desc", w[-4:], w[:8], off, seq)
            struct.pack_into("<4sI", buf, at, b"data", seq >> 32)
            buf[at + 8:at + 4092] = w[8:-4]
            struct.pack_into("<I", buf, at + 4092, seq & 0xFFFFFFFF)
            at += 4096
        else:
            struct.pack_into("<4sIQQQ", buf, d, b"zero", 0, w, off, seq)
    crc_into(buf)
    return bytes(buf)


# -- an independent parser ------------------------------------------------------------------
class Invalid(Exception):
    """A MUST of MS-VHDX that the parsed file breaks."""


def _need(ok: bool, what: str) -> None:
    if not ok:
        raise Invalid(what)


def _crc_ok(buf: bytes, at: int = 4) -> bool:
    stored = struct.unpack_from("<I", buf, at)[0]
    return _crc(buf[:at] + b"\0\0\0\0" + buf[at + 4:]) == stored


@dataclass
class Parsed:
    """What parse() found; GUIDs as upper-case text, items by GUID text."""

    headers: list[dict]
    current: dict
    regions: dict[str, tuple[int, int, int]]          # guid -> (offset, length, required)
    items: dict[str, tuple[int, bytes]]               # system items: guid -> (flags, value)
    user_items: list[tuple[str, int, bytes]]          # (guid, flags, value)
    block: int
    size: int
    sector: int
    physical: int
    flags: int
    disk_id: str
    locator_type: str | None
    locator: dict[str, str]
    bat: list[int]

    @property
    def has_parent(self) -> bool:
        return bool(self.flags & 2)


def _guid_text(raw: bytes) -> str:
    return str(uuid.UUID(bytes_le=bytes(raw))).upper()


def parse(data: bytes) -> Parsed:
    """Parse a whole VHDX held in memory; raise Invalid at the first MUST it breaks."""
    _need(data[:8] == b"vhdxfile", "file type identifier")
    headers = []
    for off in (64 * 1024, 128 * 1024):
        h = data[off:off + 4096]
        _need(h[:4] == b"head" and _crc_ok(h), f"header at 0x{off:x} verifies")
        seq, fw, dw, lg, lv, ver, ll, lo = struct.unpack_from("<Q16s16s16sHHIQ", h, 8)
        _need(ver == 1 and lv == 0, "header version 1, log version 0")
        _need(ll % MIB == 0 and lo % MIB == 0 and lo >= MIB, "log 1 MiB aligned after the header section")
        headers.append(dict(seq=seq, file_write=_guid_text(fw), data_write=_guid_text(dw),
                            log_guid=_guid_text(lg), log_length=ll, log_offset=lo))
    current = max(headers, key=lambda h: h["seq"])
    _need(headers[0]["seq"] != headers[1]["seq"], "header sequence numbers differ")
    tables = []
    for off in (192 * 1024, 256 * 1024):
        t = data[off:off + 64 * 1024]
        _need(t[:4] == b"regi" and _crc_ok(t), f"region table at 0x{off:x} verifies")
        tables.append(t)
    _need(tables[0] == tables[1], "the two region tables are the same")
    count = struct.unpack_from("<I", tables[0], 8)[0]
    _need(count <= 2047, "region entry count")
    regions = {}
    for i in range(count):
        gid, off, n, req = struct.unpack_from("<16sQII", tables[0], 16 + 32 * i)
        _need(off % MIB == 0 and n % MIB == 0 and off >= MIB and n > 0, "region 1 MiB aligned")
        _need(off + n <= len(data), "region inside the file")
        regions[_guid_text(gid)] = (off, n, req & 1)
    _need(BAT in regions and META in regions, "BAT and metadata regions")
    spans = sorted([(o, o + n) for o, n, _ in regions.values()]
                   + [(current["log_offset"], current["log_offset"] + current["log_length"])])
    _need(all(b[0] >= a[1] for a, b in zip(spans, spans[1:], strict=False)), "regions and log do not overlap")
    moff, mlen, _ = regions[META]
    meta = data[moff:moff + mlen]
    _need(meta[:8] == b"metadata", "metadata table signature")
    mcount = struct.unpack_from("<H", meta, 10)[0]
    _need(mcount <= 2047, "metadata entry count")
    items: dict[str, tuple[int, bytes]] = {}
    user: list[tuple[str, int, bytes]] = []
    used = []
    for i in range(mcount):
        gid, off, n, flags, _r2 = struct.unpack_from("<16sIIII", meta, 32 + 32 * i)
        _need(n <= MIB and (n == 0 and off == 0 or off >= 64 * 1024 and off + n <= mlen),
              "metadata item inside the region after the table")
        _need(flags & ~7 == 0, "metadata entry reserved bits")
        if n:
            used.append((off, off + n))
        key = _guid_text(gid)
        if flags & 1:
            user.append((key, flags, meta[off:off + n]))
        else:
            _need(key not in items, "system item listed once")
            items[key] = (flags, meta[off:off + n])
    used.sort()
    _need(all(b[0] >= a[1] for a, b in zip(used, used[1:], strict=False)), "metadata items do not overlap")
    for k in (FILE_PARAMS, DISK_SIZE, DISK_ID, LOGICAL, PHYSICAL):
        _need(k in items and items[k][0] & 4, f"required item {k}")
    block, flags = struct.unpack("<II", items[FILE_PARAMS][1][:8])
    _need(flags & ~3 == 0, "file parameter reserved bits")
    _need(MIB <= block <= 256 * MIB and block & (block - 1) == 0, "block size")
    size = struct.unpack("<Q", items[DISK_SIZE][1][:8])[0]
    sector = struct.unpack("<I", items[LOGICAL][1][:4])[0]
    physical = struct.unpack("<I", items[PHYSICAL][1][:4])[0]
    _need(sector in (512, 4096) and physical in (512, 4096), "sector sizes")
    _need(0 < size <= 64 << 40 and size % sector == 0, "virtual disk size")
    loc_type, pairs = None, {}
    if flags & 2:
        _need(LOCATOR in items, "a differencing file has a parent locator")
        loc_type, pairs = _parse_locator(items[LOCATOR][1])
    n_blocks = -(-size // block)
    ratio = chunk_ratio(block, sector)
    need = -(-n_blocks // ratio) * (ratio + 1) if flags & 2 else n_blocks + (n_blocks - 1) // ratio
    boff, blen, _ = regions[BAT]
    _need(blen >= need * 8, "the BAT region holds every entry")
    bat = list(struct.unpack_from(f"<{need}Q", data, boff))
    return Parsed(headers, current, regions, items, user, block, size, sector, physical, flags,
                  _guid_text(items[DISK_ID][1][:16]), loc_type, pairs, bat)


def _parse_locator(raw: bytes) -> tuple[str, dict[str, str]]:
    """§2.6.2.6: a 20-byte header, 12-byte entries, UTF-16LE keys and values."""
    loc_type = _guid_text(raw[:16])
    reserved, count = struct.unpack_from("<HH", raw, 16)
    _need(reserved == 0 and 20 + 12 * count <= len(raw), "locator header")
    out: dict[str, str] = {}
    for i in range(count):
        ko, vo, kl, vl = struct.unpack_from("<IIHH", raw, 20 + 12 * i)
        _need(ko > 0 and vo > 0 and kl > 0 and vl > 0, "locator entry fields greater than zero")
        _need(ko + kl <= len(raw) and vo + vl <= len(raw) and kl % 2 == 0 and vl % 2 == 0,
              "locator key and value inside the item")
        key = raw[ko:ko + kl].decode("utf-16-le")
        value = raw[vo:vo + vl].decode("utf-16-le")
        _need("\0" not in key + value, "no NUL in locator strings")
        _need(key not in out, "locator keys unique")
        out[key] = value
    return loc_type, out
