"""An independent builder of ipva.bin test images, written from ipva-model.md §3 with
`struct` and crcmod (not vdisk's schemas), so tests compare two readings of the spec.

`FwImage` is a plain description; `.to_bytes()` lays it out. Corruptions are applied by
the tests to the resulting bytes (or by overriding fields here) so that each §3 failure
can be produced on purpose.

Boot disks are made without vdisk's writer too: sfdisk + mkfs.fat + mcopy on a raw file,
then qemu-img convert; `Fat16` makes small struct-level edits to simulate a crashed update.
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field

import crcmod.predefined
from conftest import need_tool, run

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
                                                                             self.layout, strict=False)]
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


# -- boot disks ---------------------------------------------------------------------------

MIB = 1 << 20
PART_OFFSET = 2048 * 512


def make_raw_boot(path: str, firmware: bytes | None, size_mib: int = 32, *,
                  superfloppy: bool = False, name: str = "IPVA.BIN",
                  extra: dict[str, bytes] | None = None) -> str:
    """A raw boot disk: MBR (one active FAT16 LBA partition at LBA 2048) + FAT16 IPVABOOT."""
    for tool in ("sfdisk", "mkfs.fat", "mcopy"):
        need_tool(tool)
    with open(path, "wb") as f:
        f.truncate(size_mib * MIB)
    small = ["-s", "1"] if size_mib < 16 else []   # FAT16 needs 4085+ clusters
    if superfloppy:
        run("mkfs.fat", "-F", "16", *small, "-n", "IPVABOOT", path)
        spec = path
    else:
        run("sfdisk", "-q", path, input="start=2048, type=e, bootable\n")
        run("mkfs.fat", "-F", "16", *small, "-n", "IPVABOOT", "--offset", "2048", path)
        spec = f"{path}@@{PART_OFFSET}"
    files = dict(extra or {})
    if firmware is not None:
        files[name] = firmware
    folder = os.path.dirname(path)
    for fname, data in files.items():
        src = os.path.join(folder, ".src-" + fname)
        with open(src, "wb") as f:
            f.write(data)
        run("mcopy", "-i", spec, src, "::" + fname)
        os.unlink(src)
    return path


def to_vmdk(raw: str, out: str, subformat: str = "monolithicSparse") -> str:
    need_tool("qemu-img")
    run("qemu-img", "convert", "-f", "raw", "-O", "vmdk", "-o", f"subformat={subformat}",
        raw, out)
    return out


def to_raw(image: str, out: str) -> str:
    run("qemu-img", "convert", "-O", "raw", image, out)
    return out


@dataclass
class Fat16:
    """Just enough FAT16 to find a root entry and edit its chain (both FAT copies)."""

    path: str
    base: int = PART_OFFSET

    def __post_init__(self) -> None:
        with open(self.path, "rb") as f:
            f.seek(self.base)
            bs = f.read(512)
        (self.bps, self.spc, self.reserved, self.nfats, self.root_entries, _tot16, _media,
         self.fat_sectors) = struct.unpack_from("<HBHBHHBH", bs, 11)
        self.fat_off = self.base + self.reserved * self.bps
        self.root_off = self.fat_off + self.nfats * self.fat_sectors * self.bps
        self.data_off = self.root_off + self.root_entries * 32
        self.cluster_bytes = self.bps * self.spc

    def _rw(self, off: int, data: bytes | None = None, n: int = 0) -> bytes:
        with open(self.path, "r+b") as f:
            f.seek(off)
            if data is None:
                return f.read(n)
            f.write(data)
            return b""

    def entry(self, raw_name: bytes = b"IPVA    BIN") -> tuple[int, int, int]:
        """(entry offset, first cluster, size)."""
        root = self._rw(self.root_off, n=self.root_entries * 32)
        for i in range(self.root_entries):
            e = root[i * 32:(i + 1) * 32]
            if e[:11] == raw_name:
                return self.root_off + i * 32, struct.unpack_from("<H", e, 26)[0], \
                    struct.unpack_from("<I", e, 28)[0]
        raise KeyError(raw_name)

    def get(self, cluster: int, copy: int = 0) -> int:
        off = self.fat_off + copy * self.fat_sectors * self.bps + 2 * cluster
        return struct.unpack("<H", self._rw(off, n=2))[0]

    def set(self, cluster: int, value: int, copies: tuple[int, ...] = (0, 1)) -> None:
        for k in copies:
            off = self.fat_off + k * self.fat_sectors * self.bps + 2 * cluster
            self._rw(off, struct.pack("<H", value))

    def chain(self, first: int) -> list[int]:
        out = []
        c = first
        while 2 <= c < 0xFFF8 and len(out) < 70000:
            out.append(c)
            c = self.get(c)
        return out

    def cut_chain(self, keep: int) -> None:
        """Keep the first `keep` clusters of IPVA.BIN's chain (EOC after them), free the
        rest, leave the entry's size alone: the entry is larger than its chain."""
        _, first, _ = self.entry()
        chain = self.chain(first)
        self.set(chain[keep - 1], 0xFFFF)
        for c in chain[keep:]:
            self.set(c, 0)

    def set_size(self, size: int) -> None:
        off, _, _ = self.entry()
        self._rw(off + 28, struct.pack("<I", size))

    def read_file(self) -> bytes:
        _, first, size = self.entry()
        out = bytearray()
        for c in self.chain(first):
            out += self._rw(self.data_off + (c - 2) * self.cluster_bytes, n=self.cluster_bytes)
        return bytes(out[:size])
