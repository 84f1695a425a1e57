"""The crash-dump store of hd-dump: store header and record header (specs/dump-store.md).

A raw disk without a partition table. Sector 0 holds the StoreHeader; slots of
`slot_sectors` sectors follow from LBA 2048; each used slot starts with a RecordHeader
followed by the payload (the appliance's `crash_dump.txt`). Schemas and checks only: no I/O.
"""
from __future__ import annotations

from dataclasses import dataclass

import crcmod.predefined
from construct import Bytes, Int16ul, Int32ul, Int64ul, StreamError, Struct

from ..errors import FormatError

SECTOR_BYTES = 512
STORE_MAGIC = b"IPVADUMP"
RECORD_MAGIC = b"IPVACRSH"
STORE_VERSION = 1
HEADER_BYTES = 512
FIRST_SLOT_LBA = 2048
DEFAULT_SLOT_SECTORS = 2048
CRC_OFFSET = 0x1FC
VERSION_TEXT_BYTES = 32
# A slot larger than this is not plausible for a dump disk; it bounds every allocation.
MAX_SLOT_SECTORS = 1 << 17  # 64 MiB

crc32c = crcmod.predefined.mkCrcFun("crc-32c")

StoreHeader = Struct(
    "magic" / Bytes(8) * "magic: IPVADUMP",
    "version" / Int16ul * "version: 1",
    "header_size" / Int16ul * "header_size: 512",
    "slot_sectors" / Int32ul * "slot_sectors: sectors per slot (default 2048)",
    "slot_count" / Int32ul * "slot_count: slots that fit after LBA 2048",
    "next_slot" / Int32ul * "next_slot: the ring index written next",
    "reserved" / Bytes(CRC_OFFSET - 0x18) * "reserved: zero",
    "header_crc32c" / Int32ul * "header_crc32c: CRC-32C of bytes [0, 0x1FC)",
)

RecordHeader = Struct(
    "magic" / Bytes(8) * "magic: IPVACRSH",
    "sequence" / Int32ul * "sequence: 1, 2, ... over the store's life; 0 = empty",
    "build" / Int32ul * "build: firmware build number",
    "time" / Int64ul * "time: seconds since 1970 UTC",
    "payload_size" / Int32ul * "payload_size: bytes of text after the header",
    "payload_crc32c" / Int32ul * "payload_crc32c: CRC-32C of the payload",
    "version" / Bytes(VERSION_TEXT_BYTES) * "version: firmware version, ASCII, NUL padded",
    "reserved" / Bytes(CRC_OFFSET - 0x40) * "reserved: zero",
    "header_crc32c" / Int32ul * "header_crc32c: CRC-32C of bytes [0, 0x1FC)",
)

# Field offsets, for findings that point at a byte.
STORE_FIELD_OFFSETS = {"magic": 0x00, "version": 0x08, "header_size": 0x0A, "slot_sectors": 0x0C,
                       "slot_count": 0x10, "next_slot": 0x14, "reserved": 0x18,
                       "header_crc32c": 0x1FC}
RECORD_FIELD_OFFSETS = {"magic": 0x00, "sequence": 0x08, "build": 0x0C, "time": 0x10,
                        "payload_size": 0x18, "payload_crc32c": 0x1C, "version": 0x20,
                        "reserved": 0x40, "header_crc32c": 0x1FC}


@dataclass(frozen=True)
class StoreFields:
    """The store header's values, whatever their validity."""

    magic: bytes
    version: int
    header_size: int
    slot_sectors: int
    slot_count: int
    next_slot: int
    reserved_zero: bool
    header_crc32c: int
    computed_crc32c: int

    @property
    def crc_ok(self) -> bool:
        return self.header_crc32c == self.computed_crc32c


@dataclass(frozen=True)
class RecordFields:
    """A record header's values, whatever their validity."""

    magic: bytes
    sequence: int
    build: int
    time: int
    payload_size: int
    payload_crc32c: int
    version: str
    version_ok: bool
    reserved_zero: bool
    header_crc32c: int
    computed_crc32c: int

    @property
    def crc_ok(self) -> bool:
        return self.header_crc32c == self.computed_crc32c


def _sector(data: bytes, what: str) -> bytes:
    if len(data) < HEADER_BYTES:
        raise FormatError(f"{what}: need {HEADER_BYTES} bytes, got {len(data)}", offset=0)
    return bytes(data[:HEADER_BYTES])


def parse_store_header(data: bytes) -> StoreFields:
    """Decode sector 0 (no validity judgement beyond the CRC computation)."""
    raw = _sector(data, "StoreHeader")
    try:
        c = StoreHeader.parse(raw)
    except StreamError as exc:  # pragma: no cover - 512 bytes always parse
        raise FormatError(f"StoreHeader: {exc}", offset=0) from None
    return StoreFields(c.magic, c.version, c.header_size, c.slot_sectors, c.slot_count,
                       c.next_slot, c.reserved.count(0) == len(c.reserved), c.header_crc32c,
                       crc32c(raw[:CRC_OFFSET]))


def parse_record_header(data: bytes) -> RecordFields:
    """Decode a slot's first sector."""
    raw = _sector(data, "RecordHeader")
    c = RecordHeader.parse(raw)
    text, ok = decode_ascii(c.version)
    return RecordFields(c.magic, c.sequence, c.build, c.time, c.payload_size, c.payload_crc32c,
                        text, ok, c.reserved.count(0) == len(c.reserved), c.header_crc32c,
                        crc32c(raw[:CRC_OFFSET]))


def decode_ascii(field: bytes) -> tuple[str, bool]:
    """A NUL-padded ASCII field: (text, valid). Invalid bytes are shown escaped."""
    text = field.split(b"\0", 1)[0]
    padding_ok = field[len(text):].count(0) == len(field) - len(text)
    ok = padding_ok and all(0x20 <= b < 0x7F for b in text)
    return text.decode("ascii", "backslashreplace"), ok


def _with_crc(body: bytes) -> bytes:
    return body[:CRC_OFFSET] + crc32c(body[:CRC_OFFSET]).to_bytes(4, "little")


def build_store_header(*, slot_sectors: int, slot_count: int, next_slot: int = 0) -> bytes:
    """Sector 0 of a store, CRC included."""
    body = StoreHeader.build({"magic": STORE_MAGIC, "version": STORE_VERSION,
                              "header_size": HEADER_BYTES, "slot_sectors": slot_sectors,
                              "slot_count": slot_count, "next_slot": next_slot,
                              "reserved": bytes(CRC_OFFSET - 0x18), "header_crc32c": 0})
    return _with_crc(body)


def build_record_header(*, sequence: int, build: int, time: int, payload: bytes,
                        version: str) -> bytes:
    """A slot's first sector for `payload`, CRCs included."""
    raw_version = version.encode("ascii")
    if len(raw_version) > VERSION_TEXT_BYTES or not decode_ascii(raw_version)[1]:
        raise FormatError(f"version {version!r} is not printable ASCII of at most "
                          f"{VERSION_TEXT_BYTES} bytes")
    body = RecordHeader.build({"magic": RECORD_MAGIC, "sequence": sequence, "build": build,
                               "time": time, "payload_size": len(payload),
                               "payload_crc32c": crc32c(payload),
                               "version": raw_version.ljust(VERSION_TEXT_BYTES, b"\0"),
                               "reserved": bytes(CRC_OFFSET - 0x40), "header_crc32c": 0})
    return _with_crc(body)


def slots_that_fit(device_bytes: int, slot_sectors: int) -> int:
    """How many slots of `slot_sectors` fit on a device after LBA 2048."""
    if slot_sectors <= 0:
        return 0
    return max(0, device_bytes // SECTOR_BYTES - FIRST_SLOT_LBA) // slot_sectors


def slot_offset(index: int, slot_sectors: int) -> int:
    """Byte offset of slot `index`."""
    return (FIRST_SLOT_LBA + index * slot_sectors) * SECTOR_BYTES


def max_payload_bytes(slot_sectors: int) -> int:
    return slot_sectors * SECTOR_BYTES - HEADER_BYTES
