"""The doctor's vocabulary: Issues, the report, what checks see, and the check registry
(specs/vmx.md §Doctor).

A vmx check takes the `Context` and yields `Issue`s; a disk check takes the `Context` and one
opened `DiskContext` and yields `Issue`s. Modules plug checks in with `vmx_check` /
`disk_check`; `doctor.check_bundle` runs them in the order they were registered.
"""
from __future__ import annotations

import shlex
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

from ..errors import Finding, Severity
from ..image.disk import Disk
from .bundle import Bundle, relpath_in
from .fwversion import FirmwareId
from .vmx import IDE_ROLES, DiskSlot, Vmx

MEMSIZE_MAX_USEFUL_MB = 3072
MEMSIZE_FULL_FLASH_MB = 192
MEMSIZE_SHIPPED_MB = 64


@dataclass(frozen=True)
class Issue:
    """A finding about the appliance, its boot-time symptom and its fix."""

    finding: Finding
    subject: str                      # "vmx", "bundle", or a disk role: boot/cf/flash/dump
    boot_message: str | None = None
    fix: str | None = None

    @property
    def code(self) -> str:
        return self.finding.code

    @property
    def severity(self) -> Severity:
        return self.finding.severity

    def to_dict(self) -> dict[str, object]:
        d = self.finding.to_dict()
        d.update({"subject": self.subject, "boot_message": self.boot_message, "fix": self.fix})
        return d


@dataclass(frozen=True)
class DiskReport:
    slot: str
    role: str
    path: str | None
    capacity_bytes: int | None = None
    subformat: str | None = None
    chain: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, object]:
        return {"slot": self.slot, "role": self.role, "path": self.path,
                "capacity_bytes": self.capacity_bytes, "subformat": self.subformat,
                "chain": list(self.chain)}


@dataclass(frozen=True)
class Report:
    vmx_path: str
    issues: tuple[Issue, ...]
    disks: tuple[DiskReport, ...]

    @property
    def healthy(self) -> bool:
        return all(i.severity == Severity.INFO for i in self.issues)

    def to_dict(self) -> dict[str, object]:
        return {"vmx": self.vmx_path, "healthy": self.healthy,
                "disks": [d.to_dict() for d in self.disks],
                "issues": [i.to_dict() for i in self.issues]}


@dataclass
class Context:
    """What every check sees: the bundle and how the user named it (for fix commands)."""

    bundle: Bundle
    target: str
    #: the firmware on the boot disk, once its check has read a trustworthy header
    firmware: FirmwareId | None = None

    @property
    def vmx(self) -> Vmx:
        return self.bundle.vmx

    def command(self, *words: str) -> str:
        return "vdisk " + " ".join(shlex.quote(w) for w in words)

    def rel(self, path: str) -> str:
        return relpath_in(self.bundle.folder, path)

    def memsize_mb(self) -> int | None:
        try:
            return int(self.vmx.get("memsize", "") or "")
        except ValueError:
            return None


@dataclass
class DiskContext:
    """One attached IPVA disk, opened read-only for the disk checks."""

    slot: DiskSlot
    role: str
    path: str
    disk: Disk
    notes: dict[str, object] = field(default_factory=dict)


VmxCheck = Callable[[Context], Iterable[Issue]]
DiskCheck = Callable[[Context, DiskContext], Iterable[Issue]]
VMX_CHECKS: list[VmxCheck] = []
DISK_CHECKS: list[tuple[tuple[str, ...], DiskCheck]] = []


def vmx_check(fn: VmxCheck) -> VmxCheck:
    VMX_CHECKS.append(fn)
    return fn


def disk_check(*roles: str) -> Callable[[DiskCheck], DiskCheck]:
    """Register a check for the disks of `roles` (all four when none is named)."""
    def register(fn: DiskCheck) -> DiskCheck:
        DISK_CHECKS.append((roles or tuple(IDE_ROLES.values()), fn))
        return fn
    return register


def issue(code: str, severity: Severity, message: str, subject: str, *, path: str | None = None,
          boot: str | None = None, fix: str | None = None, fixable: bool = False,
          offset: int | None = None) -> Issue:
    return Issue(Finding(code, severity, message, offset=offset, fixable=fixable, path=path),
                 subject, boot, fix)


def adopt(f: Finding, d: DiskContext, fix: str | None = None, boot: str | None = None) -> Issue:
    """A disk module's Finding as an Issue about that disk."""
    return Issue(replace(f, path=f.path or d.path), d.role, boot, fix)
