"""An independent builder of ipva.bin test images, written from ipva-model.md §3 with
`struct` and crcmod (not vdisk's schemas), so tests compare two readings of the spec.

`FwImage` is a plain description; `.to_bytes()` lays it out. Corruptions are applied by
the tests to the resulting bytes (or by overriding fields here) so that each §3 failure
can be produced on purpose.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field

import crcmod.predefined

crc32 = crcmod.predefined.mkCrcFun("crc-32")

HEADER = 512
ENTRY = 24


@dataclass
class FwImage:
    sections: list[tuple[str, bytes]]
    build: int = 90468
    version: str = "9.00 hotfix4"
    product: str = "IPVA"
    timestamp: int = 1_700_000_000
    gap: int = 0                      # zero bytes put before each section
    # overrides, applied after the honest values are computed:
    image_size: int | None = None
    image_crc: int | None = None
    header_crc: int | None = None
    magic: bytes = b"IPVA-FW\x00"
    header_version: int = 1
    section_count: int | None = None
    entries: list[tuple[str, int, int, int]] | None = None  # (name, offset, size, crc)
    layout: list[tuple[int, int, int]] = field(default_factory=list)  # filled: (off, size, crc)

    def body(self) -> bytes:
        out = bytearray()
        self.layout = []
        for _, data in self.sections:
            out += bytes(self.gap)
            self.layout.append((HEADER + len(out), len(data), crc32(data)))
            out += data
        return bytes(out)

    def to_bytes(self) -> bytes:
        body = self.body()
        size = HEADER + len(body) if self.image_size is None else self.image_size
        icrc = crc32(body) if self.image_crc is None else self.image_crc
        entries = self.entries
        if entries is None:
            entries = [(name, off, ln, c) for (name, _), (off, ln, c) in zip(self.sections,
                                                                             self.layout)]
        count = len(entries) if self.section_count is None else self.section_count
        head = bytearray(HEADER)
        head[0:8] = self.magic
        struct.pack_into("<HHI", head, 8, self.header_version, 512, self.build)
        head[0x10:0x30] = self.version.encode().ljust(32, b"\0")
        head[0x30:0x40] = self.product.encode().ljust(16, b"\0")
        struct.pack_into("<QIHHI", head, 0x40, size, icrc, count, 0, self.timestamp)
        for i, (name, off, ln, c) in enumerate(entries):
            struct.pack_into("<8sIIII", head, 0x60 + i * ENTRY, name.encode(), off, ln, c, 0)
        hcrc = crc32(bytes(head[:0x1FC])) if self.header_crc is None else self.header_crc
        struct.pack_into("<I", head, 0x1FC, hcrc)
        return bytes(head) + body


def standard(scale: int = 1) -> FwImage:
    """Four sections of distinct, non-zero patterns, `scale` KiB-ish each."""
    names = ["LOADER", "KERNEL", "PBX", "WEBUI"]
    return FwImage([(n, bytes((i * 37 + j) % 251 + 1 for j in range(1000 * scale + i * 7)))
                    for i, n in enumerate(names)], gap=13)
