"""The V9HF1 trap: from 9.00 hotfix1 on the flash directory is limited by the RAM; an
upgrade from an older firmware with more PBX objects than the RAM allows loses objects
unless the configuration is saved first (specs/vmx.md §The V9HF1 upgrade).

`judge` compares the flash segments in use with the directory the configured RAM allows
from V9HF1 on, for a change of firmware `old` -> `new` (None = cannot be read; `new` None in
`bundle check` = "any firmware from V9HF1 on"). `check_restore` finds what `boot restore`
needs for it: the vmx beside the boot disk that attaches it, its memsize and flash disk.
"""
from __future__ import annotations

import glob
import os
from dataclasses import dataclass

from ..errors import Finding, Severity, VdiskError
from ..image.disk import open_image
from .flash import MAX_SEGMENTS, SEGMENT_BYTES, directory_segments, read_flash_info
from .fwversion import V9HF1, FirmwareId, firmware_id, older_than
from .vmx import Vmx

CODE = "bundle.upgrade-flash-limit"
SHIPPED_MEMSIZE_MB = 64
MAX_VMX_CANDIDATES = 8
BACKUP_NAME = "flash-before-upgrade.img"


@dataclass(frozen=True)
class FlashUpgradeCheck:
    """The verdict: "risk" (the upgrade crosses V9HF1 and the flash holds more than the
    directory then allows), "ok", or "skipped" (what is needed could not be found)."""

    status: str
    reason: str
    old: FirmwareId | None = None
    new: FirmwareId | None = None
    vmx_path: str | None = None
    flash_path: str | None = None
    memsize_mb: int | None = None
    memsize_assumed: bool = False
    segments_in_use: int | None = None
    directory_segments: int | None = None

    @property
    def risk(self) -> bool:
        return self.status == "risk"

    def backup_command(self) -> str:
        return f"vdisk flash backup {self.flash_path or 'FLASH_DISK'} -o {BACKUP_NAME}"

    def finding(self) -> Finding | None:
        if not self.risk:
            return None
        return Finding(CODE, Severity.WARNING, self.reason, path=self.flash_path)

    def to_dict(self) -> dict[str, object]:
        return {"code": CODE, "status": self.status, "reason": self.reason,
                "old": None if self.old is None else self.old.to_dict(),
                "new": None if self.new is None else self.new.to_dict(),
                "vmx": self.vmx_path, "flash": self.flash_path, "memsize_mb": self.memsize_mb,
                "memsize_assumed": self.memsize_assumed, "segments_in_use": self.segments_in_use,
                "directory_segments": self.directory_segments, "segment_bytes": SEGMENT_BYTES,
                "backup_command": self.backup_command() if self.risk else None}


def memsize_for(segments: int) -> int | None:
    """The smallest memsize (a multiple of 4 MB) whose directory holds `segments`."""
    if segments > MAX_SEGMENTS:
        return None
    mem = 4
    while directory_segments(mem) < segments:
        mem += 4
    return mem


def judge(old: FirmwareId | None, new: FirmwareId | None, in_use: int, memsize_mb: int | None,
          vmx_path: str | None = None, flash_path: str | None = None) -> FlashUpgradeCheck:
    """Does going from `old` to `new` cross V9HF1 with more segments in use than allowed?"""
    mem = memsize_mb if memsize_mb is not None else SHIPPED_MEMSIZE_MB
    limit = directory_segments(mem)

    def verdict(status: str, reason: str) -> FlashUpgradeCheck:
        return FlashUpgradeCheck(status, reason, old, new, vmx_path, flash_path, mem,
                                 memsize_mb is None, in_use, limit)

    old_before = None if old is None else older_than(old, V9HF1)
    if old is not None and old_before is False:
        return verdict("ok", f"the installed firmware {old.describe()} already sizes the flash "
                       "directory by the RAM")
    if new is not None and older_than(new, V9HF1) is True:
        return verdict("ok", f"the new firmware {new.describe()} is older than {V9HF1}: the flash "
                       "directory stays as it is")
    ram = f"memsize {mem} MB" + (" (not set: the shipped value assumed)" if memsize_mb is None else "")
    if in_use <= limit:
        return verdict("ok", f"{in_use} flash segments in use; from {V9HF1.name} on {ram} allows "
                       f"a directory of {limit}")
    if old is None:
        was = "the installed firmware cannot be read: it may be older than"
    else:
        was = f"{old.describe()} is " + ("older than" if old_before else
                                          "perhaps older than (neither its text nor its build tells)")
    to = f"to {new.describe()}" if new is not None else f"to {V9HF1.release} or later"
    need = memsize_for(in_use)
    raise_ram = f'set memsize = "{need}"' if need else f"no memsize allows more than {MAX_SEGMENTS}"
    return verdict("risk", f"{was} {V9HF1}; from "
                   f"{V9HF1.name} on the flash directory is limited by the RAM: {ram} allows "
                   f"{limit} segments of 64 KiB ({limit * SEGMENT_BYTES / (1 << 20):.1f} MiB), "
                   f"{in_use} are in use. An upgrade {to} loses PBX objects unless the "
                   f"configuration is saved first ({raise_ram} to keep them all)")


def _same(a: str, b: str) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


def find_appliance_vmx(boot_disk: str) -> Vmx | None:
    """The vmx beside the boot disk that attaches it at ide0:0 (unreadable ones skipped)."""
    folder = os.path.dirname(os.path.abspath(boot_disk))
    names = sorted(p for p in glob.glob(os.path.join(glob.escape(folder), "*"))
                   if p.lower().endswith(".vmx"))[:MAX_VMX_CANDIDATES]
    for path in names:
        try:
            vmx = Vmx.read(path)
        except (VdiskError, OSError):
            continue
        disk = vmx.disk_for_slot("ide0:0")
        if disk is not None and os.path.exists(disk) and _same(disk, boot_disk):
            return vmx
    return None


def check_restore(boot_disk: str, new_firmware: str) -> FlashUpgradeCheck:
    """What `boot restore BOOT_DISK --firmware NEW` means for the flash directory."""
    from .boot_verify import verify_firmware_file, verify_target
    new = firmware_id(verify_firmware_file(new_firmware))
    try:
        old = firmware_id(verify_target(boot_disk).firmware)
    except VdiskError:
        old = None
    vmx = find_appliance_vmx(boot_disk)
    if vmx is None:
        return FlashUpgradeCheck("skipped", "no .vmx beside the disk attaches it at ide0:0: the "
                                 "flash directory was not compared", old, new)
    flash = vmx.disk_for_slot("ide1:0")
    raw = (vmx.get("memsize") or "").strip()
    mem = int(raw) if raw.isdigit() else None
    if flash is None or not os.path.exists(flash):
        return FlashUpgradeCheck("skipped", f"{os.path.basename(vmx.path or '')} attaches no flash "
                                 "disk at ide1:0: the flash directory was not compared", old, new,
                                 vmx.path)
    try:
        with open_image(flash) as dev:
            in_use = read_flash_info(dev).segments_in_use
    except (VdiskError, OSError) as exc:
        return FlashUpgradeCheck("skipped", f"the flash disk cannot be read ({exc}): the flash "
                                 "directory was not compared", old, new, vmx.path, flash)
    return judge(old, new, in_use, mem, vmx_path=vmx.path, flash_path=flash)
