"""Checks of a FAT volume's metadata sectors: the boot sector and its FAT32 backup, the FAT
copies against each other, the FSInfo sector, the label copies, the dirty flags
(specs/fat.md "Invariants")."""
from __future__ import annotations

from ..errors import Finding, FormatError, Severity
from ..formats import fat as ff
from ..image.base import BlockDevice
from .dirent import LABEL_INVALID
from .format import build_fsinfo
from .layout import parse_boot_sector
from .partition import looks_like_mbr, partition_device, read_partition_table
from .volume import FatVolume, label_text
from .writer import boot_sectors, write_boot_label

COMPARE_CHUNK = 1 << 20
BACKUP_BOOT_SECTOR = 6


def _base(vol: FatVolume) -> int:
    return vol.partition.start_bytes if vol.partition is not None else 0


def recover_boot_sector(dev: BlockDevice, partition: int | None, path: str | None,
                        exc: FormatError, fix: bool, findings: list[Finding],
                        actions: list[str]) -> FatVolume | None:
    """The primary boot sector is unusable: use the FAT32 backup (sector 6) if it is good."""
    part = None
    vdev: BlockDevice = dev
    try:
        sector0 = dev.read_at(0, 512)
        if partition is not None or (sector0[0] not in (0xEB, 0xE9)
                                     and looks_like_mbr(sector0, dev.size_bytes)):
            table = read_partition_table(dev, path)
            part = table.get(partition) if partition is not None else (
                table.partitions[0] if len(table.partitions) == 1 else None)
            if part is None:
                raise exc
            vdev = partition_device(dev, part, path)
        backup = vdev.read_at(BACKUP_BOOT_SECTOR * 512, 512)
        layout = parse_boot_sector(backup, vdev.size_bytes, path)
        if layout.fat_type != 32 or layout.backup_boot_sector != BACKUP_BOOT_SECTOR:
            raise exc
    except (FormatError, OSError):
        findings.append(Finding("fat.boot-sector-invalid", Severity.ERROR, str(exc.message),
                                exc.offset, False, path))
        return None
    base = part.start_bytes if part is not None else 0
    findings.append(Finding("fat.boot-sector-invalid", Severity.ERROR,
                            f"{exc.message}; the backup boot sector is good", base, True, path))
    if fix:
        vdev.write_at(0, backup)
        actions.append("restore the boot sector from its backup (sector 6)")
    return FatVolume(vdev, layout, path, part)


def check_backup_boot(vol: FatVolume, fix: bool, actions: list[str]) -> list[Finding]:
    lay = vol.layout
    if lay.fat_type != 32 or not 0 < lay.backup_boot_sector < lay.reserved_sectors:
        return []
    bps = lay.bytes_per_sector
    primary = vol.dev.read_at(0, bps)
    backup = vol.dev.read_at(lay.backup_boot_sector * bps, bps)
    if primary == backup:
        return []
    if fix:
        vol.dev.write_at(lay.backup_boot_sector * bps, primary)
        actions.append("copy the boot sector over its backup")
    return [Finding("fat.backup-boot-mismatch", Severity.WARNING,
                    f"the boot sector and its backup (sector {lay.backup_boot_sector}) differ",
                    _base(vol) + lay.backup_boot_sector * bps, True, vol.path)]


def check_fat_copies(vol: FatVolume) -> tuple[int, bool]:
    """(the copy to trust by default, do the copies differ?)."""
    lay = vol.layout
    if lay.fat_count < 2 or lay.active_fat is not None:
        return lay.active_fat or 0, False
    pos = 0
    while pos < lay.fat_bytes:
        n = min(COMPARE_CHUNK, lay.fat_bytes - pos)
        first = vol.dev.read_at(lay.fat_copy_offset(0) + pos, n)
        for k in range(1, lay.fat_count):
            if vol.dev.read_at(lay.fat_copy_offset(k) + pos, n) != first:
                return 0, True
        pos += n
    return 0, False


def check_fsinfo(vol: FatVolume, fix: bool, actions: list[str]) -> list[Finding]:
    """FAT32 FSInfo: signatures, free cluster count, next-free hint."""
    lay = vol.layout
    if lay.fat_type != 32 or not 0 < lay.fsinfo_sector < lay.reserved_sectors:
        return []
    off = lay.fsinfo_sector * lay.bytes_per_sector
    fs = ff.FsInfo.parse(vol.dev.read_at(off, 512))
    out: list[Finding] = []
    where = _base(vol) + off
    free = vol.fat.count_free()
    rebuild = False
    if (fs.lead_signature, fs.struct_signature, fs.trail_signature) != (
            ff.FSINFO_LEAD_SIG, ff.FSINFO_STRUCT_SIG, ff.FSINFO_TRAIL_SIG):
        out.append(Finding("fat.fsinfo-signature", Severity.WARNING,
                           "FSInfo sector signatures are wrong", where, True, vol.path))
        rebuild = True
    else:
        if fs.free_count != ff.FSINFO_UNKNOWN and fs.free_count != free:
            out.append(Finding("fat.fsinfo-free-count", Severity.WARNING,
                               f"FSInfo says {fs.free_count} free clusters, the FAT has {free}",
                               where + 488, True, vol.path))
            rebuild = True
        if fs.next_free != ff.FSINFO_UNKNOWN and not 2 <= fs.next_free <= lay.max_cluster:
            out.append(Finding("fat.fsinfo-next-free", Severity.WARNING,
                               f"FSInfo next-free hint {fs.next_free:#x} is outside the volume",
                               where + 492, True, vol.path))
            rebuild = True
    if fix and rebuild:
        hint = vol.fat.find_free(2) or 2
        vol.dev.write_at(off, build_fsinfo(free, hint))
        actions.append(f"rewrite the FSInfo sector (free clusters {free}, next free {hint})")
    return out


def check_label(vol: FatVolume, fix: bool, actions: list[str]) -> list[Finding]:
    """The boot sector's BS_VolLab copies the root directory's label entry, which is the
    label (Windows, fatlabel): a volume without that entry has none ("NO NAME")."""
    lay = vol.layout
    sector0 = vol.dev.read_at(0, ff.SECTOR_BYTES)
    if sector0[ff.BOOT_SIG_OFFSET[lay.fat_type]] != ff.EXT_BOOT_SIGNATURE:
        return []
    at = ff.BOOT_LABEL_OFFSET[lay.fat_type]
    boot = sector0[at:at + 11]
    entry = vol.root_label_entry()
    root = entry.raw_name if entry is not None else None
    out: list[Finding] = []
    if entry is not None and root is not None and not label_valid(root):
        out.append(Finding("fat.label-invalid", Severity.WARNING,
                           f"the root directory's label {root!r} holds bytes a label cannot",
                           _base(vol) + entry.entry_offset, True, vol.path))
        if fix:
            gone = bytearray(entry.raw_entry)
            gone[0] = ff.DELETED_MARK
            vol.directory(vol.root_first_cluster).write_slot(entry.slot, bytes(gone))
            actions.append("remove the invalid label entry from the root directory")
        root = None
    if root is not None and root[:1] == bytes([ff.KANJI_E5]):
        root = bytes([ff.DELETED_MARK]) + root[1:]
    want = root if root is not None else ff.NO_NAME_LABEL
    if boot == want:
        return out
    shown = boot.decode("cp437").rstrip()
    if root is None:
        msg = (f"the boot sector names the label {shown!r}, the root directory has no label "
               "entry (so the volume has no label)")
        act = "set the boot sector's label to NO NAME"
    elif boot == ff.NO_NAME_LABEL:
        msg = f"the root directory's label is {label_text(root)!r}, the boot sector says NO NAME"
        act = f"copy the label {label_text(root)!r} into the boot sector"
    else:
        msg = f"the root directory's label {label_text(root)!r} and the boot sector's {shown!r} differ"
        act = f"copy the label {label_text(root)!r} into the boot sector"
    if fix:
        write_boot_label(vol.dev, lay, want)
        actions.append(act)
    return out + [Finding("fat.label-mismatch", Severity.WARNING, msg, _base(vol) + at, True,
                          vol.path)]


def label_valid(raw: bytes) -> bool:
    """An 11-byte label: no control bytes (0x05 first stands for 0xE5), none of the bytes
    fatgen103 §6.1 forbids in names, not blank, not starting with a space."""
    body = raw[1:] if raw[:1] == bytes([ff.KANJI_E5]) else raw
    return (raw[:1] != b" " and raw.strip(b" ") != b""
            and all(b >= 0x20 and chr(b) not in LABEL_INVALID for b in body))


def check_dirty(vol: FatVolume, fix: bool, actions: list[str]) -> list[Finding]:
    """The volume-dirty flag (bit 0 of BS_Reserved1) and FAT[1]'s clean-shutdown and
    hard-error bits (fatgen103 §4.1). A repair clears them last, once the rest is sound."""
    lay = vol.layout
    t = lay.fat_type
    out: list[Finding] = []
    at = ff.BOOT_FLAGS_OFFSET[t]
    if vol.dev.read_at(at, 1)[0] & ff.BOOT_FLAG_DIRTY:
        out.append(Finding("fat.dirty-flag", Severity.WARNING,
                           "the boot sector's volume-dirty flag is set: the volume was not "
                           "unmounted cleanly", _base(vol) + at, True, vol.path))
        if fix:
            for s in boot_sectors(lay):
                pos = s * lay.bytes_per_sector + at
                flags = vol.dev.read_at(pos, 1)[0]
                if flags & ff.BOOT_FLAG_DIRTY:
                    vol.dev.write_at(pos, bytes([flags & ~ff.BOOT_FLAG_DIRTY]))
            actions.append("clear the boot sector's volume-dirty flag")
    if t == 12:
        return out
    fat1 = vol.fat.get(1)
    where = _base(vol) + lay.fat_offset + t // 8
    missing = 0
    if not fat1 & ff.FAT1_CLEAN_SHUTDOWN[t]:
        out.append(Finding("fat.dirty-fat", Severity.WARNING,
                           f"FAT[1] ({fat1:#x}) has its clean-shutdown bit cleared: the volume "
                           "was not unmounted cleanly", where, True, vol.path))
        missing |= ff.FAT1_CLEAN_SHUTDOWN[t]
    if not fat1 & ff.FAT1_NO_HARD_ERROR[t]:
        out.append(Finding("fat.hard-error", Severity.WARNING,
                           f"FAT[1] ({fat1:#x}) has its hard-error bit cleared: a disk I/O "
                           "error was met", where, True, vol.path))
        missing |= ff.FAT1_NO_HARD_ERROR[t]
    if fix and missing:
        vol.fat.set(1, fat1 | missing)
        vol.fat.flush()
        actions.append("set FAT[1]'s clean-shutdown and hard-error bits")
    return out
