"""The boot disk hd-boot: find IPVA.BIN and verify it (specs/ipva-firmware.md §Boot disk).

`verify_target` accepts what a user has at hand: a boot disk (any image vdisk opens), a bare
ipva.bin, an appliance folder or its vmx (then the disk at ide0:0).
"""
from __future__ import annotations

import enum
import os
from dataclasses import dataclass

from ..errors import Finding, ImageError, Severity
from ..formats import ipva_firmware as fw
from ..image.base import FileDevice
from .firmware import FirmwareReport, Progress, check_firmware

BOOT_SLOT = "ide0:0"


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


def verify_boot_disk(target: str, res: ResolvedTarget, progress: Progress | None,
                     allow_outside: bool) -> VerifyResult:
    raise ImageError("boot disks are not supported yet", path=res.path)
