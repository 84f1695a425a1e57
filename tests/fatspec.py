"""A minimal FAT reader/poker for building damaged volumes in tests, written from
Microsoft's "FAT: General Overview of On-Disk Format" (fatgen103) and independent of
vdisk's code: every offset below is the specification's.

- BPB (§3.1): BPB_BytsPerSec 0x0B, BPB_SecPerClus 0x0D, BPB_RsvdSecCnt 0x0E,
  BPB_NumFATs 0x10, BPB_RootEntCnt 0x11, BPB_TotSec16 0x13, BPB_FATSz16 0x16,
  BPB_TotSec32 0x20; FAT32 (§3.3): BPB_FATSz32 0x24, BPB_RootClus 0x2C, BPB_BkBootSec 0x32.
- BS_Reserved1 (the byte Windows NT uses for the dirty flag): 0x25 (FAT12/16), 0x41 (FAT32);
  BS_VolLab: 0x2B (FAT12/16), 0x47 (FAT32).
- FAT type by count of clusters (§3.5): < 4085 FAT12, < 65525 FAT16, else FAT32.
- FAT entry of cluster N (§4): FAT16 at N*2, FAT32 at N*4 (low 28 bits), FAT12 at N + N/2
  (the high 12 bits of the 16-bit word when N is odd, the low 12 when even).
- FAT[1] (§4.1): FAT16 ClnShutBitMask 0x8000, HrdErrBitMask 0x4000; FAT32 0x08000000 and
  0x04000000.
- Directory entry (§6): DIR_Name 0x00 (11), DIR_Attr 0x0B, DIR_FstClusHI 0x14,
  DIR_FstClusLO 0x1A, DIR_FileSize 0x1C; long-name entry (§7): LDIR_Ord 0x00,
  LDIR_Name1 0x01 (UTF-16LE), LDIR_Attr 0x0B = 0x0F.
"""
from __future__ import annotations

import struct
from pathlib import Path

DIRTY_OFFSET = {12: 0x25, 16: 0x25, 32: 0x41}
LABEL_OFFSET = {12: 0x2B, 16: 0x2B, 32: 0x47}
CLEAN_SHUTDOWN = {16: 0x8000, 32: 0x08000000}
HARD_ERROR = {16: 0x4000, 32: 0x04000000}
EOC = {12: 0xFFF, 16: 0xFFFF, 32: 0x0FFFFFFF}
ATTR_LONG_NAME = 0x0F
ATTR_VOLUME_ID = 0x08


class SpecVolume:
    """A FAT volume at byte `offset` of the image file `path`, edited in place."""

    def __init__(self, path: Path, offset: int = 0) -> None:
        self.path, self.offset = path, offset
        b = self.read(0, 512)
        u16 = lambda at: struct.unpack_from("<H", b, at)[0]  # noqa: E731
        u32 = lambda at: struct.unpack_from("<I", b, at)[0]  # noqa: E731
        self.bps, self.spc = u16(0x0B), b[0x0D]
        self.rsvd, self.nfats, self.root_ents = u16(0x0E), b[0x10], u16(0x11)
        self.fatsz = u16(0x16) or u32(0x24)
        tot = u16(0x13) or u32(0x20)
        root_secs = (self.root_ents * 32 + self.bps - 1) // self.bps
        self.first_data = self.rsvd + self.nfats * self.fatsz + root_secs
        clusters = (tot - self.first_data) // self.spc
        self.fat_type = 12 if clusters < 4085 else 16 if clusters < 65525 else 32
        self.clusters = clusters
        self.root_clus = u32(0x2C) if self.fat_type == 32 else 0
        self.bk_boot = u16(0x32) if self.fat_type == 32 else 0
        self.cluster_bytes = self.bps * self.spc

    # -- raw bytes ----------------------------------------------------------------------
    def read(self, at: int, n: int) -> bytes:
        with open(self.path, "rb") as f:
            f.seek(self.offset + at)
            return f.read(n)

    def write(self, at: int, data: bytes) -> None:
        with open(self.path, "r+b") as f:
            f.seek(self.offset + at)
            f.write(data)

    def boot_sectors(self) -> list[int]:
        """Byte offsets of the boot sector and (FAT32) its backup."""
        return [0] + ([self.bk_boot * self.bps] if self.bk_boot else [])

    # -- the FAT ------------------------------------------------------------------------
    def _fat_at(self, copy: int, n: int) -> int:
        base = (self.rsvd + copy * self.fatsz) * self.bps
        return base + (n + n // 2 if self.fat_type == 12 else n * self.fat_type // 8)

    def fat_get(self, n: int, copy: int = 0) -> int:
        at = self._fat_at(copy, n)
        if self.fat_type == 12:
            w = struct.unpack("<H", self.read(at, 2))[0]
            return w >> 4 if n & 1 else w & 0xFFF
        if self.fat_type == 16:
            return struct.unpack("<H", self.read(at, 2))[0]
        return struct.unpack("<I", self.read(at, 4))[0] & 0x0FFFFFFF

    def fat_set(self, n: int, value: int) -> None:
        """Set entry N in every FAT copy (FAT32 keeps the top 4 bits)."""
        for copy in range(self.nfats):
            at = self._fat_at(copy, n)
            if self.fat_type == 12:
                w = struct.unpack("<H", self.read(at, 2))[0]
                w = (w & 0x000F) | (value << 4) if n & 1 else (w & 0xF000) | value
                self.write(at, struct.pack("<H", w))
            elif self.fat_type == 16:
                self.write(at, struct.pack("<H", value))
            else:
                top = struct.unpack("<I", self.read(at, 4))[0] & 0xF0000000
                self.write(at, struct.pack("<I", top | value))

    def chain(self, first: int) -> list[int]:
        out, c = [], first
        while 2 <= c < self.clusters + 2 and len(out) <= self.clusters:
            out.append(c)
            c = self.fat_get(c)
        return out

    def free_clusters(self, start: int, count: int) -> list[int]:
        out = []
        for c in range(start, self.clusters + 2):
            if self.fat_get(c) == 0:
                out.append(c)
                if len(out) == count:
                    return out
        raise AssertionError("not enough free clusters")

    def cluster_offset(self, n: int) -> int:
        return (self.first_data + (n - 2) * self.spc) * self.bps

    # -- directories --------------------------------------------------------------------
    def dir_slots(self, first_cluster: int = 0) -> list[int]:
        """Byte offsets of every 32-byte slot of a directory (0 = the root)."""
        if first_cluster == 0 and self.fat_type != 32:
            base = (self.rsvd + self.nfats * self.fatsz) * self.bps
            return [base + 32 * i for i in range(self.root_ents)]
        start = first_cluster or self.root_clus
        return [self.cluster_offset(c) + 32 * i for c in self.chain(start)
                for i in range(self.cluster_bytes // 32)]

    def find(self, name83: bytes, first_cluster: int = 0) -> int:
        """Offset of the live 8.3 entry DIR_Name == name83 (11 bytes)."""
        for at in self.dir_slots(first_cluster):
            e = self.read(at, 32)
            if e[0] == 0:
                break
            if e[0:11] == name83 and e[11] != ATTR_LONG_NAME:
                return at
        raise AssertionError(f"no entry {name83!r}")

    def label_slot(self) -> int:
        for at in self.dir_slots(0):
            e = self.read(at, 32)
            if e[0] == 0:
                break
            if e[0] != 0xE5 and e[11] == ATTR_VOLUME_ID:
                return at
        raise AssertionError("no label entry")

    def lfn_first_part(self, prefix: str, first_cluster: int = 0) -> int:
        """Offset of the long-name entry with LDIR_Ord 1 whose name starts with `prefix`."""
        want = prefix[:5].encode("utf-16-le")          # LDIR_Name1 holds 5 characters
        for at in self.dir_slots(first_cluster):
            e = self.read(at, 32)
            if e[0] == 0:
                break
            if e[11] == ATTR_LONG_NAME and e[0] & 0x1F == 1 and e[1:1 + len(want)] == want:
                return at
        raise AssertionError(f"no long name {prefix!r}")

    def start_cluster(self, entry_at: int) -> int:
        e = self.read(entry_at, 32)
        hi = struct.unpack_from("<H", e, 0x14)[0] if self.fat_type == 32 else 0
        return hi << 16 | struct.unpack_from("<H", e, 0x1A)[0]
