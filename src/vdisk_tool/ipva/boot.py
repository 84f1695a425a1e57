"""The boot disk hd-boot: find IPVA.BIN and verify it (specs/ipva-firmware.md §Boot disk).

`verify_target` accepts what a user has at hand: a boot disk (any image vdisk opens), a bare
ipva.bin, an appliance folder or its vmx (then the disk at ide0:0).
"""
from __future__ import annotations

import bisect
import enum
import os
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from ..errors import Finding, ImageError, RefusedError, RepairError, Severity, VdiskError
from ..formats import ipva_firmware as fw
from ..fs.dirent import DirEntryInfo
from ..fs.layout import FatLayout, parse_boot_sector
from ..fs.partition import (
    looks_like_mbr,
    parse_partition_table,
    partition_device,
)
from ..fs.volume import FatVolume, open_volume
from ..image.base import (
    SECTOR_BYTES,
    BlockDevice,
    FileDevice,
    Run,
    RunKind,
    SliceDevice,
    check_range,
    merge_runs,
)
from ..image.disk import open_image
from .firmware import FirmwareReport, Progress, check_firmware

BOOT_SLOT = "ide0:0"
MAX_FAT_COMPARE_BYTES = 64 << 20
BOOT_LABEL = "IPVABOOT"
BOOT_FILE_NAME = "IPVA.BIN"
BOOT_FIRST_LBA = 2048
ROOT_ENTRIES = 512
DEFAULT_BOOT_BYTES = 32 << 20
MIN_BOOT_BYTES = 4 << 20
#: Findings after which the volume is rebuilt rather than edited.
REBUILD_CODES = frozenset({"boot.no-partition", "boot.no-fat", "boot.fat-damaged"})


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


class DirectReader:
    """Reads of a disk served straight from its host files where the disk's runs say where
    the bytes are (os.pread, no per-grain copying), zeros for holes, and the disk's own
    read_at for everything else (compressed grains, parent links)."""

    writable = False

    def __init__(self, disk: BlockDevice) -> None:
        self.disk = disk
        self.size_bytes = disk.size_bytes
        self.runs_list = list(merge_runs(disk.runs()))
        self._starts = [r.offset for r in self.runs_list]
        self._fds: dict[str, int] = {}

    def _piece(self, run: Run, pos: int, k: int) -> bytes:
        if run.kind in (RunKind.ZERO, RunKind.UNALLOCATED):
            return bytes(k)
        if run.kind == RunKind.DATA and run.file and run.file_offset is not None:
            fd = self._fds.get(run.file)
            if fd is None:
                fd = self._fds[run.file] = os.open(run.file, os.O_RDONLY)
            data = os.pread(fd, k, run.file_offset + pos - run.offset)
            if len(data) == k:
                return data
        return self.disk.read_at(pos, k)

    def read_at(self, offset: int, length: int) -> bytes:
        check_range(self, offset, length)
        parts = []
        i = max(0, bisect.bisect_right(self._starts, offset) - 1)
        while length > 0:
            run = self.runs_list[i]
            k = min(length, run.end - offset)
            if k > 0:
                parts.append(self._piece(run, offset, k))
                offset += k
                length -= k
            i += 1
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def runs(self) -> Iterator[Run]:
        return iter(self.runs_list)

    def write_at(self, offset: int, data: bytes) -> None:
        raise ImageError("read-only view")

    def flush(self) -> None:
        pass

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


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


# -- writing: a fresh boot volume, restoring IPVA.BIN ---------------------------------------

@dataclass(frozen=True)
class RestorePlan:
    """What `boot restore` will do: replace IPVA.BIN in place, or rebuild the disk."""

    disk: str
    firmware: str
    action: str                   # "replace" or "rebuild"
    reasons: tuple[str, ...]      # why a rebuild (or what the replace also fixes)
    before: tuple[Finding, ...]   # the disk's findings before
    shape: dict[str, object]      # size, subformat, adapter of the disk
    partition: int | None = None

    def to_dict(self) -> dict[str, object]:
        return {"disk": self.disk, "firmware": self.firmware, "action": self.action,
                "reasons": list(self.reasons), "before": [f.to_dict() for f in self.before],
                "size_bytes": self.shape["size_bytes"], "subformat": self.shape["subformat"],
                "adapter": self.shape["adapter"], "partition": self.partition}


def check_new_firmware(path: str) -> FirmwareReport:
    """Refuse a firmware that would not boot, before touching any disk."""
    rep = verify_firmware_file(path)
    if not rep.ok:
        first = next(f for f in rep.findings if f.severity == Severity.ERROR)
        raise RefusedError(f"the new firmware does not verify ({first.code}: {first.message})",
                           path=path, hint=f"run 'vdisk verify {path}' for the details")
    return rep


def format_boot_disk(dev: BlockDevice) -> None:
    """An MBR with one active partition at LBA 2048 and an empty FAT volume labelled
    IPVABOOT in it (FAT16 below 512 MiB; ipva-model.md §2), written by the fs layer."""
    from ..fs.format import format_volume
    if dev.size_bytes < MIN_BOOT_BYTES:
        raise RefusedError(f"a boot disk of {dev.size_bytes} bytes is not supported: it must "
                           f"be at least {MIN_BOOT_BYTES >> 20} MiB")
    format_volume(dev, label=BOOT_LABEL, partition=True, active=True)


def _write_firmware_file(vol: FatVolume, firmware: str) -> None:
    with open(firmware, "rb") as f:
        vol.write_file("/" + BOOT_FILE_NAME, f)
    vol.flush()


def build_boot_image(raw_path: str, size_bytes: int, firmware: str) -> None:
    """A raw boot disk (sparse) at raw_path: MBR, FAT16 IPVABOOT, IPVA.BIN."""
    with open(raw_path, "wb") as f:
        f.truncate(size_bytes)
    with FileDevice(raw_path, writable=True) as dev:
        format_boot_disk(dev)
        _write_firmware_file(open_volume(dev, 1, raw_path), firmware)
        dev.flush()


def _lost_and_crossed(vol: FatVolume) -> tuple[list[int], list[int]]:
    """Clusters in use in the FAT that no file or directory owns, and clusters two owners
    claim: the first can be freed safely, the second cannot be repaired safely."""
    owned: dict[int, int] = {}
    crossed: list[int] = []
    roots = [] if vol.fat_type != 32 else [vol.layout.root_cluster]
    for d, kids in vol.walk("/"):
        starts = list(roots) if d.path == "/" else []
        for k in kids:
            if k.first_cluster >= 2:
                starts.append(k.first_cluster)
        for s in starts:
            for c in vol.fat.chain(s):
                if c in owned and owned[c] != s:
                    crossed.append(c)
                owned.setdefault(c, s)
    lost = [c for c in range(2, vol.layout.max_cluster + 1)
            if vol.fat.get(c) != 0 and c not in owned and not vol.fat.is_bad(vol.fat.get(c))]
    return lost, crossed


def plan_restore(disk_path: str, firmware: str, allow_outside: bool = False) -> RestorePlan:
    """Check the new firmware, read the disk, and choose between replacing IPVA.BIN and
    rebuilding the disk (when the volume is gone or its FAT cannot be trusted)."""
    from ..image.create import like
    check_new_firmware(firmware)
    fw_bytes = os.path.getsize(firmware)
    with open_image(disk_path, allow_outside=allow_outside) as disk:
        shape = like(disk)
        volinfo, file, findings = inspect_boot_volume(disk, disk_path)
        reasons = [f"{f.code}: {f.message}" for f in findings
                   if f.code in REBUILD_CODES and f.severity == Severity.ERROR]
        if volinfo is not None and not reasons:
            try:
                vol = open_volume(disk, volinfo.partition, disk_path)
                lost, crossed = _lost_and_crossed(vol)
                old = len(file.clusters) if file else 0
                free = vol.fat.count_free() + old + len(lost)
                if crossed:
                    reasons.append(f"{len(crossed)} clusters belong to two files (cross-linked)")
                elif free * vol.layout.cluster_bytes < fw_bytes:
                    reasons.append("not enough free space on the volume for the new firmware")
            except VdiskError as exc:
                reasons.append(f"the volume cannot be walked: {exc.message}")
    action = "rebuild" if reasons or volinfo is None else "replace"
    return RestorePlan(disk_path, firmware, action, tuple(reasons), tuple(findings),
                       {k: shape[k] for k in ("size_bytes", "subformat", "adapter")},
                       volinfo.partition if volinfo else None)


def apply_restore(plan: RestorePlan, *, backup: str | None = None, force: bool = False,
                  dry_run: bool = False, allow_outside: bool = False) -> VerifyResult | None:
    """Carry out a plan crash-safely; returns the verdict on the result (None on dry run)."""
    from ..image.edit import edit_image
    if plan.action == "replace":
        with edit_image(plan.disk, force=force, backup=backup, dry_run=dry_run,
                        allow_outside=allow_outside) as disk:
            vol = open_volume(disk, plan.partition, plan.disk)
            lost, _ = _lost_and_crossed(vol)
            for c in lost:
                vol.fat.set(c, 0)
            _write_firmware_file(vol, plan.firmware)
            _verify_written(disk, plan.disk)
    elif not dry_run:
        rebuild_boot_disk(plan.disk, plan.firmware, force=force, backup=backup,
                          allow_outside=allow_outside)
    if dry_run:
        return None
    return verify_target(plan.disk, allow_outside=allow_outside)


def _verify_written(disk: BlockDevice, path: str) -> None:
    """Before anything is committed: the edited copy must verify, or nothing changes."""
    volinfo, file, findings = inspect_boot_volume(disk, path)
    report = None
    if volinfo is not None and file is not None:
        vol = SliceDevice(disk, volinfo.start_bytes, volinfo.layout.volume_bytes)
        src = ChainSource(vol, volinfo.layout, file.clusters, file.entry.size_bytes)
        report = check_firmware(src, "IPVA.BIN")
    bad = [f for f in findings if f.severity == Severity.ERROR]
    if report is None or not report.ok or bad:
        raise RepairError("the restored boot volume does not verify; nothing was changed",
                          path=path)


def rebuild_boot_disk(disk_path: str, firmware: str, *, force: bool = False,
                      backup: str | None = None, allow_outside: bool = False) -> None:
    """Replace the disk by a fresh boot disk of the same capacity, subformat and adapter."""
    from ..image.create import like
    from ..image.safe import check_unlocked
    with open_image(disk_path, allow_outside=allow_outside) as disk:
        shape = like(disk)
        files = disk.files
    check_unlocked(files, force=force)
    create_boot_disk(disk_path, firmware, int(shape["size_bytes"]), str(shape["subformat"]),
                     str(shape["adapter"]), overwrite=True, backup=backup, force=force,
                     template=shape["template"])


def create_boot_disk(path: str, firmware: str, size_bytes: int = DEFAULT_BOOT_BYTES,
                     subformat: str = "monolithicSparse", adapter: str = "ide", *,
                     overwrite: bool = False, backup: str | None = None, force: bool = False,
                     template: object = None) -> None:
    """A fresh boot disk holding `firmware` as IPVA.BIN, written crash-safely."""
    from ..image.create import create_image
    from ..image.safe import create_temp
    check_new_firmware(firmware)
    if size_bytes % SECTOR_BYTES:
        raise RefusedError(f"size must be a multiple of 512 bytes, got {size_bytes}")
    if os.path.lexists(path) and not overwrite:
        raise RefusedError(f"{path} exists; refusing to overwrite it", path=path,
                           hint="choose another name (or use 'vdisk boot restore' on it)")
    scratch = create_temp(path + ".raw")
    try:
        build_boot_image(scratch, size_bytes, firmware)
        with FileDevice(scratch) as src:
            _verify_written(src, scratch)
            create_image(path, size_bytes, subformat, adapter, source=src, overwrite=overwrite,
                         backup=backup, force=force, template=template)  # type: ignore[arg-type]
    finally:
        os.unlink(scratch)
