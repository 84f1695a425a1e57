"""Writing the boot disk: restore IPVA.BIN in place, or rebuild/create a fresh boot disk
(specs/ipva-firmware.md §Boot disk; ipva-model.md §2).

A restore is planned first (`plan_restore`): the new firmware must verify, and the disk's
findings decide between replacing the file and rebuilding the volume. Every write goes
through a temporary copy that must verify before it replaces the disk.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from ..errors import Finding, RefusedError, RepairError, Severity, VdiskError
from ..fs.volume import FatVolume, open_volume
from ..image import platform
from ..image.base import SECTOR_BYTES, BlockDevice, FileDevice, SliceDevice
from ..image.disk import open_image
from .boot_verify import (
    BOOT_FILE_NAME,
    ChainSource,
    VerifyResult,
    inspect_boot_volume,
    verify_firmware_file,
    verify_target,
)
from .firmware import FirmwareReport, check_firmware

BOOT_LABEL = "IPVABOOT"
BOOT_FIRST_LBA = 2048
ROOT_ENTRIES = 512
DEFAULT_BOOT_BYTES = 32 << 20
MIN_BOOT_BYTES = 4 << 20
#: Findings after which the volume is rebuilt rather than edited.
REBUILD_CODES = frozenset({"boot.no-partition", "boot.no-fat", "boot.fat-damaged"})


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
        platform.set_sparse(f.fileno())
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
                     template: object = None, compression_level: int = 6) -> None:
    """A fresh boot disk holding `firmware` as IPVA.BIN, written crash-safely
    (`compression_level`: zlib's, for a streamOptimized disk)."""
    from ..image.create import create_image
    from ..image.safe import create_temp
    check_new_firmware(firmware)
    if size_bytes % SECTOR_BYTES:
        raise RefusedError(f"size must be a multiple of 512 bytes, got {size_bytes}")
    if os.path.lexists(path) and not overwrite:
        raise RefusedError(f"{path} exists; refusing to overwrite it", path=path,
                           hint="choose another name, pass --overwrite to replace it, or use "
                                "'vdisk boot restore' on it")
    scratch = create_temp(path + ".raw")
    try:
        build_boot_image(scratch, size_bytes, firmware)
        with FileDevice(scratch) as src:
            _verify_written(src, scratch)
            create_image(path, size_bytes, subformat, adapter, source=src, overwrite=overwrite,
                         backup=backup, force=force, template=template,  # type: ignore[arg-type]
                         compression_level=compression_level)
    finally:
        os.unlink(scratch)
