"""FAT12/16/32 on-disk structures (Microsoft FAT specification, "fatgen103"; specs/fat.md):
the boot sector with its BIOS Parameter Block, the FAT32 FSInfo sector, 8.3 directory
entries, VFAT long-name entries, DOS dates and times. Schemas and pure helpers; no I/O.
"""
from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass

from construct import Bytes, Int8ul, Int16ul, Int32ul, Struct

SECTOR_BYTES = 512
DIR_ENTRY_BYTES = 32
BOOT_SIGNATURE = b"\x55\xaa"
EXT_BOOT_SIGNATURE = 0x29

# Cluster count limits that decide the FAT type (fatgen103 §3.5).
MAX_CLUSTERS_12 = 4084
MAX_CLUSTERS_16 = 65524
MAX_CLUSTERS_32 = 0x0FFFFFF5 - 2
FAT12_MIN_CLUSTERS_16 = 4085
MIN_CLUSTERS_32 = 65525

ENTRY_MASK = {12: 0xFFF, 16: 0xFFFF, 32: 0x0FFFFFFF}
#: First value that means "bad cluster" / "end of chain" for each FAT type.
BAD_CLUSTER = {12: 0xFF7, 16: 0xFFF7, 32: 0x0FFFFFF7}
EOC_MIN = {12: 0xFF8, 16: 0xFFF8, 32: 0x0FFFFFF8}
EOC = {12: 0xFFF, 16: 0xFFFF, 32: 0x0FFFFFFF}

ATTR_READ_ONLY = 0x01
ATTR_HIDDEN = 0x02
ATTR_SYSTEM = 0x04
ATTR_VOLUME_ID = 0x08
ATTR_DIRECTORY = 0x10
ATTR_ARCHIVE = 0x20
ATTR_LONG_NAME = 0x0F
ATTR_LONG_NAME_MASK = 0x3F

#: DIR_NTRes bits used by Windows NT and mtools for all-lowercase base name / extension.
NTRES_LOWER_BASE = 0x08
NTRES_LOWER_EXT = 0x10

DELETED_MARK = 0xE5
KANJI_E5 = 0x05
LFN_LAST = 0x40
LFN_CHARS_PER_ENTRY = 13
MAX_LFN_CHARS = 255

FSINFO_LEAD_SIG = 0x41615252
FSINFO_STRUCT_SIG = 0x61417272
FSINFO_TRAIL_SIG = 0xAA550000
FSINFO_UNKNOWN = 0xFFFFFFFF

#: BS_Reserved1 (fatgen103 §3.2: "Reserved. Must be set to 0x0"): Windows NT and Linux keep
#: the volume-dirty flag in its bit 0. Offset in the boot sector by FAT type.
BOOT_FLAGS_OFFSET = {12: 0x25, 16: 0x25, 32: 0x41}
BOOT_FLAG_DIRTY = 0x01
#: FAT[1] (fatgen103 §4.1): the clean-shutdown bit (set = clean) and the hard-error bit
#: (set = no disk I/O error was met). FAT12 has neither.
FAT1_CLEAN_SHUTDOWN = {16: 0x8000, 32: 0x08000000}
FAT1_NO_HARD_ERROR = {16: 0x4000, 32: 0x04000000}
#: BS_VolLab when a volume has no label.
NO_NAME_LABEL = b"NO NAME    "
#: Offsets of BS_BootSig and BS_VolLab in the boot sector by FAT type (fatgen103 §3.2-3.3).
BOOT_SIG_OFFSET = {12: 0x26, 16: 0x26, 32: 0x42}
BOOT_LABEL_OFFSET = {12: 0x2B, 16: 0x2B, 32: 0x47}

BiosParameterBlock = Struct(
    "jump" / Bytes(3) * "BS_jmpBoot",
    "oem_name" / Bytes(8) * "BS_OEMName",
    "bytes_per_sector" / Int16ul * "BPB_BytsPerSec",
    "sectors_per_cluster" / Int8ul * "BPB_SecPerClus",
    "reserved_sectors" / Int16ul * "BPB_RsvdSecCnt",
    "fat_count" / Int8ul * "BPB_NumFATs",
    "root_entries" / Int16ul * "BPB_RootEntCnt",
    "total_sectors_16" / Int16ul * "BPB_TotSec16",
    "media" / Int8ul * "BPB_Media",
    "fat_sectors_16" / Int16ul * "BPB_FATSz16",
    "sectors_per_track" / Int16ul * "BPB_SecPerTrk",
    "heads" / Int16ul * "BPB_NumHeads",
    "hidden_sectors" / Int32ul * "BPB_HiddSec",
    "total_sectors_32" / Int32ul * "BPB_TotSec32",
)
assert BiosParameterBlock.sizeof() == 36

#: The fields that end both extended BPBs (drive number to file-system type).
_BootRecordTail = (
    "drive_number" / Int8ul * "BS_DrvNum",
    "reserved1" / Int8ul * "BS_Reserved1",
    "boot_signature" / Int8ul * "BS_BootSig",
    "volume_id" / Int32ul * "BS_VolID",
    "volume_label" / Bytes(11) * "BS_VolLab",
    "fs_type" / Bytes(8) * "BS_FilSysType",
)

#: The extended BPB of FAT12/16 (offset 36).
ExtendedBpb16 = Struct(*_BootRecordTail)

#: The extended BPB of FAT32 (offset 36).
ExtendedBpb32 = Struct(
    "fat_sectors_32" / Int32ul * "BPB_FATSz32",
    "ext_flags" / Int16ul * "BPB_ExtFlags",
    "fs_version" / Int16ul * "BPB_FSVer",
    "root_cluster" / Int32ul * "BPB_RootClus",
    "fsinfo_sector" / Int16ul * "BPB_FSInfo",
    "backup_boot_sector" / Int16ul * "BPB_BkBootSec",
    "reserved" / Bytes(12) * "BPB_Reserved",
    *_BootRecordTail,
)

BootSector16 = Struct(
    "bpb" / BiosParameterBlock,
    "ext" / ExtendedBpb16,
    "boot_code" / Bytes(448) * "boot code",
    "signature" / Bytes(2) * "signature 0x55AA",
)
BootSector32 = Struct(
    "bpb" / BiosParameterBlock,
    "ext" / ExtendedBpb32,
    "boot_code" / Bytes(420) * "boot code",
    "signature" / Bytes(2) * "signature 0x55AA",
)
assert BootSector16.sizeof() == BootSector32.sizeof() == SECTOR_BYTES

FsInfo = Struct(
    "lead_signature" / Int32ul * "FSI_LeadSig",
    "reserved1" / Bytes(480) * "FSI_Reserved1",
    "struct_signature" / Int32ul * "FSI_StrucSig",
    "free_count" / Int32ul * "FSI_Free_Count",
    "next_free" / Int32ul * "FSI_Nxt_Free",
    "reserved2" / Bytes(12) * "FSI_Reserved2",
    "trail_signature" / Int32ul * "FSI_TrailSig",
)
assert FsInfo.sizeof() == SECTOR_BYTES

DirectoryEntry = Struct(
    "name" / Bytes(11) * "DIR_Name",
    "attributes" / Int8ul * "DIR_Attr",
    "nt_reserved" / Int8ul * "DIR_NTRes",
    "create_time_tenth" / Int8ul * "DIR_CrtTimeTenth",
    "create_time" / Int16ul * "DIR_CrtTime",
    "create_date" / Int16ul * "DIR_CrtDate",
    "access_date" / Int16ul * "DIR_LstAccDate",
    "first_cluster_high" / Int16ul * "DIR_FstClusHI",
    "write_time" / Int16ul * "DIR_WrtTime",
    "write_date" / Int16ul * "DIR_WrtDate",
    "first_cluster_low" / Int16ul * "DIR_FstClusLO",
    "file_size" / Int32ul * "DIR_FileSize",
)
assert DirectoryEntry.sizeof() == DIR_ENTRY_BYTES

LongNameEntry = Struct(
    "order" / Int8ul * "LDIR_Ord",
    "name1" / Bytes(10) * "LDIR_Name1",
    "attributes" / Int8ul * "LDIR_Attr",
    "entry_type" / Int8ul * "LDIR_Type",
    "checksum" / Int8ul * "LDIR_Chksum",
    "name2" / Bytes(12) * "LDIR_Name2",
    "first_cluster_low" / Int16ul * "LDIR_FstClusLO",
    "name3" / Bytes(4) * "LDIR_Name3",
)
assert LongNameEntry.sizeof() == DIR_ENTRY_BYTES


def lfn_checksum(short_name: bytes | bytearray) -> int:
    """The checksum of an 11-byte 8.3 name that every long-name entry repeats (fatgen103 §7)."""
    total = 0
    for b in short_name:
        total = (((total & 1) << 7) | (total >> 1)) + b
        total &= 0xFF
    return total


def lfn_chars(entry: bytes | bytearray | memoryview) -> bytes:
    """The 26 UTF-16LE bytes one long-name entry carries, in order."""
    return bytes(entry[1:11]) + bytes(entry[14:26]) + bytes(entry[28:32])


def build_lfn_entries(long_name: str, short_name: bytes) -> list[bytes]:
    """The long-name entries for `long_name`, in on-disk order (last part first)."""
    units = long_name.encode("utf-16-le")
    if len(units) // 2 > MAX_LFN_CHARS:
        raise ValueError("long name longer than 255 characters")
    if len(units) % (2 * LFN_CHARS_PER_ENTRY):
        units += b"\0\0"
    while len(units) % (2 * LFN_CHARS_PER_ENTRY):
        units += b"\xff\xff"
    count = len(units) // (2 * LFN_CHARS_PER_ENTRY)
    csum = lfn_checksum(short_name)
    out = []
    for i in range(count, 0, -1):
        part = units[(i - 1) * 26:i * 26]
        out.append(LongNameEntry.build({
            "order": i | (LFN_LAST if i == count else 0), "name1": part[0:10],
            "attributes": ATTR_LONG_NAME, "entry_type": 0, "checksum": csum,
            "name2": part[10:22], "first_cluster_low": 0, "name3": part[22:26]}))
    return out


def decode_lfn(parts: list[bytes]) -> str | None:
    """Join the character parts of long-name entries (order 1 first); None if not UTF-16."""
    raw = b"".join(parts)
    end = len(raw)
    for i in range(0, len(raw), 2):
        if raw[i:i + 2] == b"\0\0":
            end = i
            break
    try:
        return raw[:end].decode("utf-16-le")
    except UnicodeDecodeError:
        return None


# -- 8.3 names ------------------------------------------------------------------------------
#: Bytes allowed in a short name besides A-Z, 0-9 and >= 0x80 (fatgen103 §6.1).
SHORT_NAME_SPECIALS = frozenset(b"$%'-_@~`!(){}^#&")
SHORT_NAME_INVALID = frozenset(b'"*+,./:;<=>?[\\]|') | frozenset(range(0x20)) | {0x7F}


def short_name_valid(raw: bytes) -> bool:
    """Is an 11-byte 8.3 name well formed? (spaces only as padding, no forbidden bytes)."""
    if len(raw) != 11 or raw[0] == 0x20:
        return False
    first = raw[0] if raw[0] != KANJI_E5 else DELETED_MARK
    body = bytes([first]) + raw[1:]
    for part in (body[:8].rstrip(b" "), body[8:].rstrip(b" ")):
        if b" " in part:
            return False
        for b in part:
            if b in SHORT_NAME_INVALID or 0x61 <= b <= 0x7A:
                return False
    return True


def format_short_name(raw: bytes, nt_reserved: int = 0) -> str:
    """The display form "NAME.EXT" of an 11-byte name, honouring the NT lower-case bits."""
    base = raw[:8]
    if base[:1] == bytes([KANJI_E5]):
        base = bytes([DELETED_MARK]) + base[1:]
    b = base.rstrip(b" ").decode("cp437")
    e = raw[8:].rstrip(b" ").decode("cp437")
    if nt_reserved & NTRES_LOWER_BASE:
        b = b.lower()
    if nt_reserved & NTRES_LOWER_EXT:
        e = e.lower()
    return f"{b}.{e}" if e else b


def parse_short_name(text: str) -> bytes | None:
    """The raw 11 bytes of a name that is already a valid upper-case 8.3 name, else None."""
    if text in (".", ".."):
        return text.encode().ljust(11, b" ")
    if text != text.upper() or text.startswith(".") or text.count(".") > 1:
        return None
    base, _, ext = text.partition(".")
    if not base or len(base) > 8 or len(ext) > 3 or (text.endswith(".")):
        return None
    try:
        raw = base.encode("ascii").ljust(8, b" ") + ext.encode("ascii").ljust(3, b" ")
    except UnicodeEncodeError:
        return None
    if raw[0] == DELETED_MARK:
        raw = bytes([KANJI_E5]) + raw[1:]
    return raw if short_name_valid(raw) else None


# -- dates and times --------------------------------------------------------------------------
DOS_EPOCH = _dt.datetime(1980, 1, 1)
DOS_MAX = _dt.datetime(2107, 12, 31, 23, 59, 58)


@dataclass(frozen=True)
class DosStamp:
    date: int
    time: int
    tenth: int = 0


def encode_dos_datetime(when: _dt.datetime) -> DosStamp:
    """DOS date/time (local time, 2 s resolution) plus the 10 ms create-time field."""
    when = min(max(when.replace(tzinfo=None), DOS_EPOCH), DOS_MAX)
    date = ((when.year - 1980) << 9) | (when.month << 5) | when.day
    time = (when.hour << 11) | (when.minute << 5) | (when.second // 2)
    tenth = (when.second % 2) * 100 + when.microsecond // 10000
    return DosStamp(date, time, tenth)


def decode_dos_datetime(date: int, time: int = 0, tenth: int = 0) -> _dt.datetime | None:
    """The datetime a DOS date/time pair means, or None when it is zero or out of range."""
    if date == 0:
        return None
    year, month, day = 1980 + (date >> 9), (date >> 5) & 0xF, date & 0x1F
    hour, minute, sec2 = time >> 11, (time >> 5) & 0x3F, time & 0x1F
    try:
        base = _dt.datetime(year, month, day, hour, minute, min(sec2 * 2, 58))
    except ValueError:
        return None
    if tenth and tenth < 200:
        base += _dt.timedelta(milliseconds=tenth * 10)
    return base


def fat_type_for_clusters(clusters: int) -> int:
    """FAT type by cluster count (fatgen103 §3.5): the only rule that decides it."""
    if clusters <= MAX_CLUSTERS_12:
        return 12
    if clusters <= MAX_CLUSTERS_16:
        return 16
    return 32
