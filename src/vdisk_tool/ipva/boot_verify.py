"""The boot disk hd-boot: find IPVA.BIN and verify it (specs/ipva-firmware.md §Boot disk).

`verify_target` accepts what a user has at hand: a boot disk (any image vdisk opens), a bare
ipva.bin, an appliance folder or its vmx (then the disk at ide0:0).
"""
from __future__ import annotations

import bisect
import enum
import os
from array import array
from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import Finding, ImageError, Severity, VdiskError
from ..formats import ipva_firmware as fw
from ..fs.dirent import DirEntryInfo
from ..fs.layout import FatLayout, parse_boot_sector
from ..fs.partition import (
    looks_like_mbr,
    parse_partition_table,
    partition_device,
)
from ..fs.volume import FatVolume
from ..image.base import SECTOR_BYTES, BlockDevice, FileDevice, SliceDevice
from ..image.disk import open_image
from .direct_reader import DirectReader
from .firmware import FirmwareReport, Progress, check_firmware

BOOT_SLOT = "ide0:0"
MAX_FAT_COMPARE_BYTES = 64 << 20
BOOT_FILE_NAME = "IPVA.BIN"



class TargetKind(str, enum.Enum):
    FIRMWARE = "firmware"   # a bare ipva.bin
    DISK = "disk"           # a boot disk image


@dataclass(frozen=True)
class ResolvedTarget:
    kind: TargetKind
    path: str
    via: str | None = None  # the vmx that named the disk


@dataclass(frozen=True)
class VerifyResult:
    """The verdict on a target: problems around the file (boot.*), then the firmware's."""

    target: str
    kind: TargetKind
    path: str
    via: str | None
    volume: dict[str, object] | None
    firmware: FirmwareReport | None
    findings: tuple[Finding, ...]

    @property
    def ok(self) -> bool:
        return not any(f.severity == Severity.ERROR for f in self.findings)

    def to_dict(self) -> dict[str, object]:
        return {"target": self.target, "kind": self.kind.value, "path": self.path,
                "via": self.via, "ok": self.ok, "volume": self.volume,
                "firmware": None if self.firmware is None else self.firmware.to_dict(),
                "findings": [f.to_dict() for f in self.findings]}


def boot_disk_of(dir_or_vmx: str) -> tuple[str, str]:
    """(vmx path, boot disk path) of an appliance folder or vmx."""
    from .vmx import Vmx, find_vmx
    vmx_path = find_vmx(dir_or_vmx)
    disk = Vmx.read(vmx_path).disk_for_slot(BOOT_SLOT)
    if disk is None:
        raise ImageError(f"the vmx attaches no disk at {BOOT_SLOT} (the boot disk)", path=vmx_path)
    return vmx_path, disk


def _looks_like_firmware(path: str) -> bool:
    if path.lower().endswith(".bin"):
        return True
    try:
        with open(path, "rb") as f:
            return f.read(len(fw.MAGIC)) == fw.MAGIC
    except OSError as exc:
        raise ImageError(f"cannot open: {exc.strerror}", path=path) from None


def resolve_target(target: str) -> ResolvedTarget:
    """What kind of thing `target` is, and which file to read."""
    if os.path.isdir(target) or target.lower().endswith(".vmx"):
        vmx_path, disk = boot_disk_of(target)
        return ResolvedTarget(TargetKind.DISK, disk, vmx_path)
    if not os.path.exists(target):
        raise ImageError("no such file", path=target)
    if _looks_like_firmware(target):
        return ResolvedTarget(TargetKind.FIRMWARE, target)
    return ResolvedTarget(TargetKind.DISK, target)


def verify_firmware_file(path: str, progress: Progress | None = None) -> FirmwareReport:
    with FileDevice(path) as dev:
        return check_firmware(dev, path, progress)


def verify_target(target: str, progress: Progress | None = None,
                  allow_outside: bool = False) -> VerifyResult:
    """Verify a boot disk, a bare firmware file, or the boot disk of an appliance."""
    res = resolve_target(target)
    if res.kind == TargetKind.FIRMWARE:
        report = verify_firmware_file(res.path, progress)
        return VerifyResult(target, res.kind, res.path, res.via, None, report, report.findings)
    return verify_boot_disk(target, res, progress, allow_outside)


# -- the boot volume ----------------------------------------------------------------------

@dataclass(frozen=True)
class BootVolume:
    """Where the FAT volume of a boot disk is and what it is."""

    start_bytes: int
    length_bytes: int
    partition: int | None      # 1-based MBR entry, None for a volume at sector 0
    layout: FatLayout

    def to_dict(self) -> dict[str, object]:
        lay = self.layout
        return {"partition": self.partition, "start_bytes": self.start_bytes,
                "length_bytes": self.length_bytes, "fat_type": lay.fat_type,
                "label": lay.label, "cluster_bytes": lay.cluster_bytes,
                "summary": self.summary}

    @property
    def summary(self) -> str:
        where = f"partition {self.partition}" if self.partition else "volume at sector 0"
        label = f" {self.layout.label!r}" if self.layout.label else ""
        return f"{where} FAT{self.layout.fat_type}{label}"


@dataclass(frozen=True)
class BootFile:
    """The IPVA.BIN entry and the clusters its chain really has."""

    entry: DirEntryInfo
    clusters: tuple[int, ...]
    chain_end: int            # the FAT value after the last cluster (EOC when healthy)


def _bad(code: str, message: str, offset: int | None = None, path: str | None = None,
         severity: Severity = Severity.ERROR) -> Finding:
    return Finding(code, severity, message, offset, True, path)


def find_volume(dev: BlockDevice, path: str | None = None) -> tuple[BootVolume | None,
                                                                   list[Finding]]:
    """The boot FAT volume: the active (else first) FAT partition of the MBR, or a volume
    starting at sector 0. Findings say why none was found."""
    if dev.size_bytes < SECTOR_BYTES:
        return None, [_bad("boot.no-partition", "the disk is smaller than one sector", 0, path)]
    sector0 = dev.read_at(0, SECTOR_BYTES)
    if looks_like_mbr(sector0, dev.size_bytes):
        table = parse_partition_table(sector0, path)
        parts = sorted(table.partitions, key=lambda p: (not p.active, p.index))
        problems: list[Finding] = []
        for part in parts:
            try:
                sub = partition_device(dev, part, path)
                layout = parse_boot_sector(sub.read_at(0, SECTOR_BYTES), sub.size_bytes, path)
            except VdiskError as exc:
                problems.append(_bad("boot.no-fat", f"partition {part.index} "
                                     f"({part.type_name}) holds no readable FAT volume: "
                                     f"{exc.message}", part.start_bytes, path))
                continue
            return BootVolume(part.start_bytes, part.length_bytes, part.index, layout), []
        return None, problems or [_bad("boot.no-partition", "the MBR has no partition", 0, path)]
    try:
        layout = parse_boot_sector(sector0, dev.size_bytes, path)
    except VdiskError:
        return None, [_bad("boot.no-partition", "no partition table and no FAT volume at "
                           "sector 0", 0, path)]
    return BootVolume(0, dev.size_bytes, None, layout), []


class ChainSource:
    """A file's bytes read through its cluster chain, as a ByteSource: contiguous clusters
    are read together, so a contiguous file costs one read per MiB."""

    def __init__(self, vol: BlockDevice, layout: FatLayout, clusters: Sequence[int],
                 size_bytes: int) -> None:
        self.vol = vol
        self.size_bytes = size_bytes
        cb = layout.cluster_bytes
        base = layout.data_offset - 2 * cb
        self.runs: list[tuple[int, int, int]] = []   # (file offset, volume offset, length)
        pos, start, prev, count = 0, -1, -2, 0
        for c in clusters:
            if c != prev + 1:
                if count:
                    self.runs.append((pos - count * cb, base + start * cb, count * cb))
                start, count = c, 0
            prev = c
            count += 1
            pos += cb
        if count:
            self.runs.append((pos - count * cb, base + start * cb, count * cb))
        self._starts = [r[0] for r in self.runs]

    def read_at(self, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0 or offset + length > self.size_bytes:
            raise ImageError(f"read of {length} bytes at {offset} outside the file")
        out = bytearray()
        i = bisect.bisect_right(self._starts, offset) - 1
        while length > 0:
            f, v, n = self.runs[i]
            k = min(length, f + n - offset)
            out += self.vol.read_at(v + offset - f, k)
            offset += k
            length -= k
            i += 1
        return bytes(out)


def inspect_boot_volume(disk: BlockDevice, path: str | None = None
                        ) -> tuple[BootVolume | None, BootFile | None, list[Finding]]:
    """Find the volume and IPVA.BIN; findings for everything around the file."""
    volinfo, findings = find_volume(disk, path)
    if volinfo is None:
        return None, None, findings
    layout = volinfo.layout
    vol = FatVolume(SliceDevice(disk, volinfo.start_bytes, layout.volume_bytes), layout, path)
    fat = vol.fat
    fat_copy: list[bytes] = []
    findings += _compare_fats(vol.dev, layout, path, fat_copy)
    try:
        entries = list(vol.directory(vol.root_first_cluster).entries())
    except VdiskError as exc:
        return volinfo, None, findings + [_bad("boot.fat-damaged", f"root directory "
                                                 f"unreadable: {exc.message}", None, path)]
    entry = next((e for e in entries if e.raw_name == fw.BOOT_FILE_NAME_83), None)
    if entry is None or entry.is_dir or entry.is_label:
        findings.append(_bad("boot.no-file", "the root directory has no file IPVA.BIN "
                             "(8.3 entry 'IPVA    BIN')", None, path))
        return volinfo, None, findings
    need = -(-entry.size_bytes // layout.cluster_bytes)
    if fat_copy and layout.fat_type != 12:
        clusters, after = _follow(fat_copy[0], layout, entry.first_cluster, need + 1)
    else:
        clusters = fat.chain_list(entry.first_cluster, limit=need + 1)
        after = fat.get(clusters[-1]) if clusters else 0
    if not need:
        clusters, after = [], 0
    last = after
    file = BootFile(entry, tuple(clusters[:need]), last)
    if len(clusters) < need:
        have = len(clusters) * layout.cluster_bytes
        findings.append(_bad("boot.chain-short", f"IPVA.BIN's directory entry says "
                             f"{entry.size_bytes} bytes, its cluster chain holds {have} "
                             f"({len(clusters)} of {need} clusters)", entry.entry_offset, path))
    elif len(set(clusters)) != len(clusters):
        findings.append(_bad("boot.fat-damaged", "IPVA.BIN's cluster chain loops back on "
                             "itself", entry.entry_offset, path))
    elif len(clusters) > need:
        findings.append(_bad("boot.chain-long", f"IPVA.BIN's cluster chain goes on past "
                             f"its {entry.size_bytes} bytes", entry.entry_offset, path,
                             Severity.WARNING))
    elif need and not fat.is_eoc(last):
        findings.append(_bad("boot.fat-damaged", f"IPVA.BIN's cluster chain ends with "
                             f"0x{last:x}, not an end-of-chain mark", entry.entry_offset, path,
                             Severity.WARNING))
    return volinfo, file, findings


def _follow(fat_bytes: bytes, layout: FatLayout, first: int, limit: int
            ) -> tuple[list[int], int]:
    """A FAT16/32 chain followed in a copy of the FAT held in memory: (clusters, the value
    after the last one). Stops at an end mark, a free or bad value, or `limit` clusters."""
    width = layout.fat_type // 8
    table = array("H" if width == 2 else "I", fat_bytes[:len(fat_bytes) // width * width])
    mask = 0xFFFF if width == 2 else 0x0FFFFFFF
    top = min(layout.max_cluster, len(table) - 1)
    out: list[int] = []
    c = first
    while 2 <= c <= top and len(out) < limit:
        out.append(c)
        c = table[c] & mask
    return out, c


def _compare_fats(vol: BlockDevice, layout: FatLayout, path: str | None,
                  keep: list[bytes] | None = None) -> list[Finding]:
    """FAT copies that disagree mean a damaged FAT (an interrupted write). The first
    copy's bytes are appended to `keep` for the caller."""
    if layout.fat_bytes > MAX_FAT_COMPARE_BYTES:
        return []
    first = vol.read_at(layout.fat_copy_offset(0), layout.fat_bytes)
    if keep is not None:
        keep.append(first)
    out = []
    for k in range(1, layout.fat_count):
        other = vol.read_at(layout.fat_copy_offset(k), layout.fat_bytes)
        if other != first:
            out.append(_bad("boot.fat-damaged", f"FAT copy {k + 1} differs from FAT 1",
                            layout.fat_copy_offset(k), path))
    media = first[0] if first else 0
    if first and media != layout.media:
        out.append(_bad("boot.fat-damaged", f"FAT 1 starts with 0x{media:02x}, the media "
                        f"byte is 0x{layout.media:02x}", layout.fat_offset, path))
    return out


def verify_boot_disk(target: str, res: ResolvedTarget, progress: Progress | None,
                     allow_outside: bool) -> VerifyResult:
    with open_image(res.path, allow_outside=allow_outside) as disk:
        return verify_boot_device(disk, target, res, progress)


def verify_boot_device(disk: BlockDevice, target: str, res: ResolvedTarget,
                       progress: Progress | None = None) -> VerifyResult:
    """Verify the IPVA.BIN on an opened boot disk (also one inside a package)."""
    volinfo, file, findings = inspect_boot_volume(disk, res.path)
    report = None
    if volinfo is not None and file is not None:
        direct = DirectReader(disk)
        vol = SliceDevice(direct, volinfo.start_bytes, volinfo.layout.volume_bytes)
        cb = volinfo.layout.cluster_bytes
        size = min(file.entry.size_bytes, len(file.clusters) * cb)
        src = ChainSource(vol, volinfo.layout, file.clusters, size)
        try:
            report = check_firmware(src, "IPVA.BIN", progress)
        finally:
            direct.close()
        findings += report.findings
    return VerifyResult(target, res.kind, res.path, res.via,
                        volinfo.to_dict() if volinfo else None, report, tuple(findings))
