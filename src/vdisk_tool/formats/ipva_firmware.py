"""The firmware image `ipva.bin` (specs/ipva-firmware.md; ipva-model.md §3).

Schemas, constants and pure helpers only: no file I/O. A 512-byte header with a table of
up to 16 sections, then the section bytes. All integers little-endian; CRC-32 is the
reflected 0x04C11DB7 polynomial (zlib.crc32).
"""
from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from construct import Array, Bytes, Int16ul, Int32ul, Int64ul, StreamError, Struct

from ..errors import FormatError

MAGIC = b"IPVA-FW\0"
HEADER_VERSION = 1
HEADER_BYTES = 512
HEADER_CRC_OFFSET = 0x1FC
SECTIONS_OFFSET = 0x060
MAX_SECTIONS = 16
SECTION_ENTRY_BYTES = 24
NAME_BYTES = 8
VERSION_BYTES = 32
PRODUCT_BYTES = 16
PRODUCT = "IPVA"
#: The 8.3 directory entry name the boot loader loads from the boot volume's root.
BOOT_FILE_NAME_83 = b"IPVA    BIN"
#: What the loader prints when any check of §3 fails.
LOADER_FAILURE = "checksum wrong! Loading failed for image=IPVA    BIN"

SectionEntry = Struct(
    "name" / Bytes(NAME_BYTES) * "name: ASCII, NUL-padded",
    "offset" / Int32ul * "offset: from the start of the file",
    "size_bytes" / Int32ul * "size",
    "crc32" / Int32ul * "crc32: CRC-32 of the section's bytes",
    "flags" / Int32ul * "flags: 0",
)
assert SectionEntry.sizeof() == SECTION_ENTRY_BYTES

FirmwareHeader = Struct(
    "magic" / Bytes(8) * "magic: IPVA-FW\\0",
    "header_version" / Int16ul * "header_version: 1",
    "header_bytes" / Int16ul * "header_size: 512",
    "build" / Int32ul * "build",
    "version" / Bytes(VERSION_BYTES) * "version: ASCII",
    "product" / Bytes(PRODUCT_BYTES) * "product: ASCII, IPVA",
    "image_bytes" / Int64ul * "image_size: total file size, header included",
    "image_crc32" / Int32ul * "image_crc32: CRC-32 of bytes [512, image_size)",
    "section_count" / Int16ul * "section_count: 1..16",
    "flags" / Int16ul * "flags: 0",
    "timestamp" / Int32ul * "timestamp: seconds since 1970 UTC",
    "reserved1" / Bytes(12) * "reserved: zero",
    "sections" / Array(MAX_SECTIONS, SectionEntry) * "sections",
    "reserved2" / Bytes(28) * "reserved: zero",
    "header_crc32" / Int32ul * "header_crc32: CRC-32 of bytes [0, 0x1FC)",
)
assert FirmwareHeader.sizeof() == HEADER_BYTES


@dataclass(frozen=True)
class SectionSpec:
    """One section to place in a new image: its name, where it goes, its length and CRC."""

    name: str
    offset: int
    size_bytes: int
    crc32: int


def parse_header(data: bytes) -> Any:
    """Parse the 512-byte header (no validation: ipva/firmware.py judges the values)."""
    if len(data) < HEADER_BYTES:
        raise FormatError(f"FirmwareHeader: needs {HEADER_BYTES} bytes, got {len(data)}", offset=0)
    try:
        return FirmwareHeader.parse(data[:HEADER_BYTES])
    except StreamError as exc:  # pragma: no cover - the length is checked above
        raise FormatError(f"FirmwareHeader: {exc}", offset=0) from None


def header_crc(data: bytes) -> int:
    """The CRC the header should carry: CRC-32 of bytes [0, 0x1FC)."""
    return zlib.crc32(memoryview(data)[:HEADER_CRC_OFFSET])


def stored_header_crc(data: bytes) -> int:
    return int.from_bytes(data[HEADER_CRC_OFFSET:HEADER_BYTES], "little")


def encode_text(text: str, length: int, what: str) -> bytes:
    """ASCII, NUL-padded to `length`; refuses what the format cannot hold."""
    raw = text.encode("ascii", "strict") if is_printable_ascii(text) else b""
    if not raw and text:
        raise FormatError(f"{what} {text!r}: must be printable ASCII")
    if len(raw) > length:
        raise FormatError(f"{what} {text!r}: longer than {length} bytes")
    return raw.ljust(length, b"\0")


def decode_text(raw: bytes) -> str | None:
    """A NUL-padded ASCII field as text; None when it is not printable ASCII (or has bytes
    after the padding starts)."""
    text, _, pad = raw.partition(b"\0")
    if pad.strip(b"\0"):
        return None
    try:
        s = text.decode("ascii")
    except UnicodeDecodeError:
        return None
    return s if is_printable_ascii(s) else None


def is_printable_ascii(s: str) -> bool:
    return all(0x20 <= ord(c) < 0x7F for c in s)


def build_header(*, build: int, version: str, image_bytes: int, image_crc32: int,
                 sections: Sequence[SectionSpec], timestamp: int, product: str = PRODUCT,
                 flags: int = 0) -> bytes:
    """A complete header with its header CRC, for the given section table."""
    if not 1 <= len(sections) <= MAX_SECTIONS:
        raise FormatError(f"section_count {len(sections)}: must be 1..{MAX_SECTIONS}")
    entries = [{"name": encode_text(s.name, NAME_BYTES, "section name"), "offset": s.offset,
                    "size_bytes": s.size_bytes, "crc32": s.crc32, "flags": 0} for s in sections]
    entries += [{"name": bytes(NAME_BYTES), "offset": 0, "size_bytes": 0, "crc32": 0, "flags": 0}
                for _ in range(MAX_SECTIONS - len(sections))]
    raw = FirmwareHeader.build({
        "magic": MAGIC, "header_version": HEADER_VERSION, "header_bytes": HEADER_BYTES, "build": build,
        "version": encode_text(version, VERSION_BYTES, "version"),
        "product": encode_text(product, PRODUCT_BYTES, "product"), "image_bytes": image_bytes,
        "image_crc32": image_crc32, "section_count": len(sections), "flags": flags, "timestamp": timestamp,
        "reserved1": bytes(12), "sections": entries, "reserved2": bytes(28), "header_crc32": 0})
    return raw[:HEADER_CRC_OFFSET] + header_crc(raw).to_bytes(4, "little")


# -- CRC-32 arithmetic: combining the CRCs of adjacent pieces -----------------------------
# In zlib's reflected representation bit 31 stands for x^0 and bit 0 for x^31.
_POLY_REFLECTED = 0xEDB88320
_X0 = 1 << 31


def _mult_mod_p(a: int, b: int) -> int:
    """a(x) * b(x) modulo the CRC polynomial (both reflected)."""
    product = 0
    mask = _X0
    while a:
        if a & mask:
            product ^= b
            a ^= mask
        mask >>= 1
        b = (b >> 1) ^ _POLY_REFLECTED if b & 1 else b >> 1
    return product


def _powers() -> list[int]:
    table = [1 << 30]  # x^1
    for _ in range(71):
        table.append(_mult_mod_p(table[-1], table[-1]))
    return table  # table[k] = x^(2^k) mod P, enough for any 64-bit length


_X_POW_2K = _powers()


def _x_pow_8n(nbytes: int) -> int:
    """x^(8*nbytes) mod P."""
    result, k = _X0, 3
    while nbytes:
        if nbytes & 1:
            result = _mult_mod_p(_X_POW_2K[k], result)
        nbytes >>= 1
        k += 1
    return result


def crc32_combine(crc_a: int, crc_b: int, len_b: int) -> int:
    """CRC-32 of A||B from CRC-32(A), CRC-32(B) and len(B), without the bytes."""
    return _mult_mod_p(_x_pow_8n(len_b), crc_a) ^ crc_b
