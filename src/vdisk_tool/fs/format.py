"""Making a new FAT volume (optionally inside a one-partition MBR) with the layout mkfs.fat
would choose, writing only sectors that must hold non-zero bytes (specs/fat.md "Format")."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .. import clock
from ..errors import FormatError
from ..formats import fat as ff
from ..formats import mbr as fm
from ..image.base import BlockDevice, RunKind, SliceDevice
from .layout import FatLayout, parse_boot_sector
from .partition import Partition, build_single_partition_mbr
from .writer import encode_label

SECTOR = 512
PARTITION_LBA = 2048
FAT32_THRESHOLD_BYTES = 512 * 1024 * 1024      # ipva-model §2
BOOT_STUB = b"\xcd\x18\xeb\xfe"                 # int 18h (try the next boot device); jmp $


@dataclass(frozen=True)
class FormatResult:
    layout: FatLayout
    partition: Partition | None
    label: str


@dataclass(frozen=True)
class FormatPlan:
    """The numbers of a new volume, decided before anything is written."""

    fat_type: int
    total_sectors: int
    sectors_per_cluster: int
    reserved_sectors: int
    fat_sectors: int
    root_entries: int
    heads: int
    sectors_per_track: int
    cluster_count: int


def default_geometry(sectors: int) -> tuple[int, int]:
    """(heads, sectors per track) mkfs.fat reports for an image file of this size."""
    for limit, heads, spt in ((4096, 2, 16), (32768, 2, 32), (65536, 4, 32),
                              (262144, 8, 32), (524288, 16, 32), (1032192, 16, 63),
                              (2064384, 32, 63), (4128768, 64, 63), (8257536, 128, 63)):
        if sectors <= limit:
            return heads, spt
    return 255, 63


def default_fat_type(volume_bytes: int) -> int:
    """ipva-model §2: FAT32 from 512 MiB on, FAT16 below (FAT12 when FAT16 cannot fit)."""
    if volume_bytes >= FAT32_THRESHOLD_BYTES:
        return 32
    try:
        plan_volume(volume_bytes // SECTOR, 16)
    except FormatError:
        return 12
    return 16


def _align(n: int, to: int) -> int:
    return -(-n // to) * to


def _fat32_cluster_sectors(total: int) -> int:
    mib = total * SECTOR // (1024 * 1024)
    if mib > 32 * 1024:
        return 64
    if mib > 16 * 1024:
        return 32
    if mib > 8 * 1024:
        return 16
    if mib > 260:
        return 8
    return 1


def _layout_for(total: int, bits: int, spc: int, align: bool) -> tuple[int, int, int, int]:
    """(reserved, root entries, FAT sectors, clusters) for one cluster size."""
    reserved = 32 if bits == 32 else 1
    root_entries = 0 if bits == 32 else 512
    if align:
        reserved = _align(reserved, spc)
        if root_entries:
            root_entries = _align(root_entries * 32 // SECTOR, spc) * SECTOR // 32
    root_sectors = root_entries * 32 // SECTOR
    step = spc if align else 1

    def clusters_for(fat: int) -> int:
        return (total - reserved - 2 * fat - root_sectors) // spc

    def fits(fat: int) -> bool:
        c = clusters_for(fat)
        return c > 0 and fat * SECTOR * 8 >= (c + 2) * bits

    lo, hi = 1, max(1, (total - reserved - root_sectors - spc) // (2 * step))  # in `step`s
    if not fits(hi * step):
        raise FormatError(f"a FAT{bits} volume does not fit in {total} sectors")
    while lo < hi:
        mid = (lo + hi) // 2
        if fits(mid * step):
            hi = mid
        else:
            lo = mid + 1
    fat = lo * step
    return reserved, root_entries, fat, clusters_for(fat)


def plan_volume(sectors: int, fat_type: int) -> FormatPlan:
    """Choose cluster size, reserved area, FAT size the way mkfs.fat does."""
    heads, spt = default_geometry(sectors)
    total = sectors // spt * spt
    align = total > 8192
    if fat_type == 32:
        spc = _fat32_cluster_sectors(total)
    elif fat_type in (12, 16):
        spc = 4
    else:
        raise FormatError(f"FAT type must be 12, 16 or 32, not {fat_type}")
    limit = {12: ff.MAX_CLUSTERS_12, 16: ff.MAX_CLUSTERS_16, 32: ff.MAX_CLUSTERS_32}[fat_type]
    while True:
        reserved, root_entries, fat, clusters = _layout_for(total, fat_type, spc, align)
        if clusters <= limit:
            break
        if spc >= 128:
            raise FormatError(f"{sectors} sectors are too many for FAT{fat_type}")
        spc *= 2
    minimum = {12: 1, 16: ff.FAT12_MIN_CLUSTERS_16, 32: ff.MIN_CLUSTERS_32}[fat_type]
    if clusters < minimum:
        raise FormatError(f"a volume of {total * SECTOR // 1024} KiB is too small for "
                          f"FAT{fat_type} ({clusters} clusters, at least {minimum} needed)",
                          hint="choose a smaller FAT type with --fat")
    return FormatPlan(fat_type, total, spc, reserved, fat, root_entries, heads, spt, clusters)


def build_boot_sector(plan: FormatPlan, hidden: int, volume_id: int, label: bytes) -> bytes:
    bpb = {
        "jump": b"\xeb\x58\x90" if plan.fat_type == 32 else b"\xeb\x3c\x90",
        "oem_name": b"MSWIN4.1", "bytes_per_sector": SECTOR,
        "sectors_per_cluster": plan.sectors_per_cluster,
        "reserved_sectors": plan.reserved_sectors, "fat_count": 2,
        "root_entries": plan.root_entries,
        "total_sectors_16": plan.total_sectors if plan.total_sectors < 0x10000 and
        plan.fat_type != 32 else 0,
        "media": 0xF8, "fat_sectors_16": 0 if plan.fat_type == 32 else plan.fat_sectors,
        "sectors_per_track": plan.sectors_per_track, "heads": plan.heads,
        "hidden_sectors": hidden,
        "total_sectors_32": 0 if plan.total_sectors < 0x10000 and plan.fat_type != 32
        else plan.total_sectors,
    }
    common = {"drive_number": 0x80, "reserved1": 0, "boot_signature": ff.EXT_BOOT_SIGNATURE,
              "volume_id": volume_id, "volume_label": label,
              "fs_type": f"FAT{plan.fat_type}".ljust(8).encode()}
    if plan.fat_type == 32:
        ext = dict(common, fat_sectors_32=plan.fat_sectors, ext_flags=0, fs_version=0,
                   root_cluster=2, fsinfo_sector=1, backup_boot_sector=6, reserved=bytes(12))
        return ff.BootSector32.build({"bpb": bpb, "ext": ext,
                                      "boot_code": BOOT_STUB.ljust(420, b"\0"),
                                      "signature": ff.BOOT_SIGNATURE})
    return ff.BootSector16.build({"bpb": bpb, "ext": common,
                                  "boot_code": BOOT_STUB.ljust(448, b"\0"),
                                  "signature": ff.BOOT_SIGNATURE})


def build_fsinfo(free: int, next_free: int) -> bytes:
    return ff.FsInfo.build({"lead_signature": ff.FSINFO_LEAD_SIG, "reserved1": bytes(480),
                            "struct_signature": ff.FSINFO_STRUCT_SIG, "free_count": free,
                            "next_free": next_free, "reserved2": bytes(12),
                            "trail_signature": ff.FSINFO_TRAIL_SIG})


def zero_stored(dev: BlockDevice, start: int, length: int) -> None:
    """Make [start, start+length) read as zeros, writing only where the device stores data
    (holes and unallocated grains already read as zeros and stay unallocated)."""
    end = start + length
    for run in dev.runs():
        if run.kind in (RunKind.ZERO, RunKind.UNALLOCATED):
            continue
        a, b = max(run.offset, start), min(run.end, end)
        pos = a
        while pos < b:
            n = min(1 << 20, b - pos)
            if dev.read_at(pos, n).count(0) != n:
                dev.write_at(pos, bytes(n))
            pos += n


def format_volume(dev: BlockDevice, fat_type: int | None = None, label: str = "",
                  partition: bool = True, active: bool = False, volume_id: int | None = None,
                  progress: Callable[[int, int], None] | None = None) -> FormatResult:
    """Write a new, empty FAT volume (and with `partition`, an MBR with one partition from
    LBA 2048 of type 0x0E/0x0C, as ipva-model §2 describes)."""
    if not dev.writable:
        raise FormatError("device is read-only")
    raw_label = encode_label(label) if label else b"NO NAME    "
    volume_id = clock.unix_time_ms() & 0xFFFFFFFF if volume_id is None else volume_id
    disk_sectors = dev.size_bytes // SECTOR
    part: Partition | None = None
    if partition:
        vol_sectors = disk_sectors - PARTITION_LBA
        if vol_sectors <= 0:
            raise FormatError(f"disk of {disk_sectors} sectors is too small for a partition "
                              f"at LBA {PARTITION_LBA}")
        bits = fat_type or default_fat_type(vol_sectors * SECTOR)
        plan = plan_volume(vol_sectors, bits)
        ptype = {12: fm.TYPE_FAT12, 16: fm.TYPE_FAT16_LBA, 32: fm.TYPE_FAT32_LBA}[bits]
        mbr, part = build_single_partition_mbr(disk_sectors, PARTITION_LBA, ptype, active,
                                               volume_id ^ 0x5A5A5A5A)
        dev.write_at(0, mbr)
        vdev: BlockDevice = SliceDevice(dev, PARTITION_LBA * SECTOR, vol_sectors * SECTOR)
        hidden = PARTITION_LBA
    else:
        bits = fat_type or default_fat_type(disk_sectors * SECTOR)
        plan = plan_volume(disk_sectors, bits)
        vdev, hidden = dev, 0
    meta_end = (plan.reserved_sectors + 2 * plan.fat_sectors
                + plan.root_entries * 32 // SECTOR) * SECTOR
    if bits == 32:
        meta_end += plan.sectors_per_cluster * SECTOR
    zero_stored(vdev, 0, meta_end)
    if progress:
        progress(meta_end // 2, meta_end)
    boot = build_boot_sector(plan, hidden, volume_id, raw_label)
    vdev.write_at(0, boot)
    media = 0xF8
    if bits == 32:
        fsinfo = build_fsinfo(plan.cluster_count - 1, 3)
        vdev.write_at(SECTOR, fsinfo)
        vdev.write_at(6 * SECTOR, boot)
        vdev.write_at(7 * SECTOR, fsinfo)
        fat_head = (0x0FFFFF00 | media).to_bytes(4, "little") + b"\xff\xff\xff\x0f" * 2
    elif bits == 16:
        fat_head = bytes([media, 0xFF, 0xFF, 0xFF])
    else:
        fat_head = bytes([media, 0xFF, 0xFF])
    for k in range(2):
        vdev.write_at((plan.reserved_sectors + k * plan.fat_sectors) * SECTOR, fat_head)
    if label:

        from .dirent import build_entry
        root_off = (plan.reserved_sectors + 2 * plan.fat_sectors) * SECTOR
        vdev.write_at(root_off, build_entry(raw_label, ff.ATTR_VOLUME_ID, 0, 0,
                                            clock.now()))
    vdev.flush()
    if progress:
        progress(meta_end, meta_end)
    layout = parse_boot_sector(vdev.read_at(0, SECTOR), vdev.size_bytes)
    return FormatResult(layout, part, label.upper())
