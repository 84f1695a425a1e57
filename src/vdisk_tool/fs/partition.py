"""MBR partition tables on a BlockDevice: read, check, write (specs/mbr.md)."""
from __future__ import annotations

from dataclasses import dataclass

from construct import ConstructError

from ..errors import Finding, FormatError, Severity
from ..formats import mbr as fm
from ..image.base import BlockDevice, SliceDevice

SECTOR = fm.SECTOR_BYTES


@dataclass(frozen=True)
class Partition:
    """One primary partition entry (index is 1-based, as users count)."""

    index: int
    status: int
    partition_type: int
    first_lba: int
    sectors: int
    chs_first: fm.Chs
    chs_last: fm.Chs

    @property
    def active(self) -> bool:
        return self.status == fm.STATUS_ACTIVE

    @property
    def start_bytes(self) -> int:
        return self.first_lba * SECTOR

    @property
    def length_bytes(self) -> int:
        return self.sectors * SECTOR

    @property
    def type_name(self) -> str:
        return fm.TYPE_NAMES.get(self.partition_type, f"0x{self.partition_type:02x}")

    def to_dict(self) -> dict[str, object]:
        return {"index": self.index, "active": self.active, "type": self.partition_type,
                "type_name": self.type_name, "first_lba": self.first_lba,
                "sectors": self.sectors}


@dataclass(frozen=True)
class PartitionTable:
    disk_signature: int
    partitions: tuple[Partition, ...]   # non-empty entries only

    def get(self, index: int) -> Partition:
        for p in self.partitions:
            if p.index == index:
                return p
        raise FormatError(f"partition {index} does not exist (the MBR has "
                          f"{', '.join(str(p.index) for p in self.partitions) or 'none'})")


def parse_partition_table(sector: bytes, path: str | None = None) -> PartitionTable:
    """Parse sector 0 as an MBR; raises FormatError without the 0x55AA signature."""
    try:
        mbr = fm.MasterBootRecord.parse(sector[:SECTOR])
    except ConstructError as exc:
        raise FormatError(f"MasterBootRecord: {str(exc).splitlines()[0]}", path=path,
                          offset=510) from None
    parts = []
    for i, e in enumerate(mbr.partitions, start=1):
        if e.partition_type == fm.TYPE_EMPTY and e.sectors == 0:
            continue
        parts.append(Partition(
            index=i, status=e.status, partition_type=e.partition_type, first_lba=e.first_lba,
            sectors=e.sectors,
            chs_first=fm.decode_chs(bytes([e.chs_first.head, e.chs_first.sector_cyl_high,
                                           e.chs_first.cyl_low])),
            chs_last=fm.decode_chs(bytes([e.chs_last.head, e.chs_last.sector_cyl_high,
                                          e.chs_last.cyl_low]))))
    return PartitionTable(mbr.disk_signature, tuple(parts))


def read_partition_table(dev: BlockDevice, path: str | None = None) -> PartitionTable:
    return parse_partition_table(dev.read_at(0, SECTOR), path)


def looks_like_mbr(sector: bytes, device_bytes: int) -> bool:
    """A plausible MBR: signature, sane status bytes, at least one entry inside the device."""
    if not fm.has_signature(sector):
        return False
    try:
        table = parse_partition_table(sector)
    except FormatError:
        return False
    if not table.partitions:
        return False
    for p in table.partitions:
        if p.status not in (0, 0x80) or p.first_lba == 0 or p.sectors == 0:
            return False
    return any(p.start_bytes < device_bytes for p in table.partitions)


def partition_device(dev: BlockDevice, part: Partition, path: str | None = None) -> SliceDevice:
    """The partition as a device; refuses an entry that reaches past the end of the disk."""
    if part.start_bytes + part.length_bytes > dev.size_bytes:
        raise FormatError(
            f"PartitionEntry[{part.index}]: LBA {part.first_lba} + {part.sectors} sectors reaches "
            f"past the end of the disk ({dev.size_bytes // SECTOR} sectors)", path=path,
            offset=fm.PARTITION_TABLE_OFFSET + (part.index - 1) * 16)
    return SliceDevice(dev, part.start_bytes, part.length_bytes)


def check_partition_table(table: PartitionTable, disk_sectors: int) -> list[Finding]:
    """Findings of an MBR: entries outside the disk, overlaps, bad status bytes,
    CHS fields that disagree with LBA ones."""
    out: list[Finding] = []
    for p in table.partitions:
        off = fm.PARTITION_TABLE_OFFSET + (p.index - 1) * fm.PARTITION_ENTRY_BYTES
        if p.status not in (0, 0x80):
            out.append(Finding("mbr.bad-status", Severity.WARNING,
                               f"partition {p.index}: boot indicator 0x{p.status:02x} "
                               "is neither 0x00 nor 0x80", offset=off))
        if p.first_lba + p.sectors > disk_sectors:
            out.append(Finding("mbr.partition-outside-disk", Severity.ERROR,
                               f"partition {p.index} ends at sector {p.first_lba + p.sectors}, "
                               f"the disk has {disk_sectors}", offset=off + 8))
        if p.first_lba == 0:
            out.append(Finding("mbr.partition-at-zero", Severity.ERROR,
                               f"partition {p.index} starts at LBA 0 (over the MBR)",
                               offset=off + 8))
    ordered = sorted(table.partitions, key=lambda q: q.first_lba)
    for a, b in zip(ordered, ordered[1:], strict=False):
        if a.first_lba + a.sectors > b.first_lba:
            out.append(Finding("mbr.partition-overlap", Severity.ERROR,
                               f"partitions {a.index} and {b.index} overlap"))
    if sum(1 for p in table.partitions if p.active) > 1:
        out.append(Finding("mbr.several-active", Severity.WARNING,
                           "more than one partition is marked active"))
    return out


def build_single_partition_mbr(disk_sectors: int, first_lba: int, partition_type: int,
                               active: bool, disk_signature: int) -> tuple[bytes, Partition]:
    """An MBR with one partition from first_lba to the end of the disk."""
    sectors = disk_sectors - first_lba
    if sectors <= 0:
        raise FormatError(f"disk of {disk_sectors} sectors is too small for a partition at "
                          f"LBA {first_lba}")
    entry = fm.build_partition_entry(first_lba, sectors, partition_type, active)
    raw = fm.build_mbr([entry], disk_signature=disk_signature)
    return raw, parse_partition_table(raw).partitions[0]
