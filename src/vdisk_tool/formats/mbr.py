"""The classic Master Boot Record: four primary partition entries and the 0x55AA signature
(specs/mbr.md). Schemas and pure helpers only; no file I/O.
"""
from __future__ import annotations

from dataclasses import dataclass

from construct import Array, Bytes, Const, Int8ul, Int32ul, Struct

SECTOR_BYTES = 512
SIGNATURE = b"\x55\xaa"
BOOT_CODE_BYTES = 446
PARTITION_TABLE_OFFSET = 446
PARTITION_ENTRY_BYTES = 16

STATUS_ACTIVE = 0x80
STATUS_INACTIVE = 0x00

TYPE_EMPTY = 0x00
TYPE_FAT12 = 0x01
TYPE_FAT16_SMALL = 0x04
TYPE_EXTENDED = 0x05
TYPE_FAT16 = 0x06
TYPE_FAT32_CHS = 0x0B
TYPE_FAT32_LBA = 0x0C
TYPE_FAT16_LBA = 0x0E
TYPE_EXTENDED_LBA = 0x0F
TYPE_GPT_PROTECTIVE = 0xEE

FAT_TYPES = frozenset({TYPE_FAT12, TYPE_FAT16_SMALL, TYPE_FAT16, TYPE_FAT32_CHS, TYPE_FAT32_LBA,
                       TYPE_FAT16_LBA})
EXTENDED_TYPES = frozenset({TYPE_EXTENDED, TYPE_EXTENDED_LBA, 0x85})

TYPE_NAMES = {
    TYPE_EMPTY: "empty", TYPE_FAT12: "FAT12", TYPE_FAT16_SMALL: "FAT16 <32M",
    TYPE_EXTENDED: "extended", TYPE_FAT16: "FAT16", 0x07: "NTFS/exFAT",
    TYPE_FAT32_CHS: "FAT32", TYPE_FAT32_LBA: "FAT32 LBA", TYPE_FAT16_LBA: "FAT16 LBA",
    TYPE_EXTENDED_LBA: "extended LBA", 0x82: "Linux swap", 0x83: "Linux", 0x85: "Linux extended",
    TYPE_GPT_PROTECTIVE: "GPT protective", 0xEF: "EFI system",
}

#: CHS triple as stored: head, then sector (bits 0-5) with cylinder bits 8-9 (bits 6-7), then
#: cylinder bits 0-7.
ChsAddress = Struct(
    "head" / Int8ul * "head",
    "sector_cyl_high" / Int8ul * "sector (bits 0-5), cylinder bits 8-9 (bits 6-7)",
    "cyl_low" / Int8ul * "cylinder bits 0-7",
)

PartitionEntry = Struct(
    "status" / Int8ul * "boot indicator (0x80 active, 0x00 inactive)",
    "chs_first" / ChsAddress * "CHS address of the first sector",
    "partition_type" / Int8ul * "partition type",
    "chs_last" / ChsAddress * "CHS address of the last sector",
    "first_lba" / Int32ul * "LBA of the first sector",
    "sectors" / Int32ul * "number of sectors",
)
assert PartitionEntry.sizeof() == PARTITION_ENTRY_BYTES

MasterBootRecord = Struct(
    "boot_code" / Bytes(440) * "bootstrap code",
    "disk_signature" / Int32ul * "disk signature (Windows)",
    "reserved" / Bytes(2) * "copy-protect / reserved",
    "partitions" / Array(4, PartitionEntry) * "primary partition table",
    "signature" / Const(SIGNATURE) * "boot signature 0x55AA",
)
assert MasterBootRecord.sizeof() == SECTOR_BYTES


@dataclass(frozen=True)
class Chs:
    cylinder: int
    head: int
    sector: int


def decode_chs(raw: bytes) -> Chs:
    """Decode the packed 3-byte CHS form."""
    head, sc, cl = raw[0], raw[1], raw[2]
    return Chs(cylinder=((sc & 0xC0) << 2) | cl, head=head, sector=sc & 0x3F)


def encode_chs(chs: Chs) -> bytes:
    return bytes([chs.head & 0xFF, (chs.sector & 0x3F) | ((chs.cylinder >> 2) & 0xC0),
                  chs.cylinder & 0xFF])


def lba_to_chs(lba: int, heads: int = 255, sectors_per_track: int = 63) -> Chs:
    """The CHS form of an LBA; addresses past cylinder 1023 saturate at 1023/254/63 as the
    partitioning tools write them."""
    cylinder, rest = divmod(lba, heads * sectors_per_track)
    head, sector = divmod(rest, sectors_per_track)
    if cylinder > 1023:
        return Chs(1023, heads - 1 if heads <= 255 else 254, sectors_per_track)
    return Chs(cylinder, head, sector + 1)


def chs_dict(chs: Chs) -> dict[str, int]:
    raw = encode_chs(chs)
    return {"head": raw[0], "sector_cyl_high": raw[1], "cyl_low": raw[2]}


def build_partition_entry(first_lba: int, sectors: int, partition_type: int,
                          active: bool = False, heads: int = 255,
                          sectors_per_track: int = 63) -> dict[str, object]:
    """A PartitionEntry container with CHS fields computed from the LBA fields."""
    return {
        "status": STATUS_ACTIVE if active else STATUS_INACTIVE,
        "chs_first": chs_dict(lba_to_chs(first_lba, heads, sectors_per_track)),
        "partition_type": partition_type,
        "chs_last": chs_dict(lba_to_chs(first_lba + sectors - 1, heads, sectors_per_track)),
        "first_lba": first_lba,
        "sectors": sectors,
    }


def empty_partition_entry() -> dict[str, object]:
    zero = {"head": 0, "sector_cyl_high": 0, "cyl_low": 0}
    return {"status": 0, "chs_first": zero, "partition_type": 0, "chs_last": dict(zero),
            "first_lba": 0, "sectors": 0}


def build_mbr(entries: list[dict[str, object]], disk_signature: int = 0,
              boot_code: bytes = bytes(440)) -> bytes:
    """A 512-byte MBR holding up to four entries (missing ones are empty)."""
    parts = list(entries) + [empty_partition_entry() for _ in range(4 - len(entries))]
    return MasterBootRecord.build({"boot_code": boot_code, "disk_signature": disk_signature,
                                   "reserved": b"\0\0", "partitions": parts})


def has_signature(sector: bytes) -> bool:
    return len(sector) >= SECTOR_BYTES and sector[510:512] == SIGNATURE
