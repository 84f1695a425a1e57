"""`vdisk check`: the report and the repair actions it carries, and the dispatch to the
backends: a VMDK is checked by image/vmdk/check.py (specs/vmdk.md §Invariants), a qcow2
image by image/qcow2/check.py (specs/qcow2.md), a VHDX by image/vhdx/check.py.

A check never raises for what it finds: it returns Findings. Only an image that cannot be
opened at all raises (exit 3 in the CLI).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from ..errors import Finding, Severity, VdiskError
from .detect import choose_format
from .disk import Disk, open_image
from .safe import (
    EDIT_JOURNAL_SUFFIX,
    GROW_JOURNAL_SUFFIX,
    TMP_MARK,
    leftover_temps,
    sidecar_path,
)

E, W, INFO = Severity.ERROR, Severity.WARNING, Severity.INFO


@dataclass
class TableFix:
    """A repair action: copy `length` bytes from src_offset to dst_offset in one file."""

    path: str
    src_offset: int
    dst_offset: int
    length: int
    what: str


@dataclass
class EntryFix:
    """A repair action: write one u32 directory entry."""

    path: str
    offset: int
    value: int
    what: str


@dataclass
class CheckReport:
    path: str
    findings: list[Finding] = field(default_factory=list)
    fixes: list[TableFix] = field(default_factory=list)
    entry_fixes: list[EntryFix] = field(default_factory=list)
    clear_unclean: list[str] = field(default_factory=list)
    eos_fixes: list[tuple[str, int]] = field(default_factory=list)   # (path, where the EOS goes)
    extent_sizes: dict[int, int] = field(default_factory=dict)   # extent index -> sectors
    grains_checked: int = 0
    roll_back: bool = False
    rebuild_refcounts: bool = False     # qcow2: rebuild every refcount (image/qcow2/repair.py)
    replay_log: bool = False      # vhdx: a pending log that --repair replays
    units: str = "grains"         # what grains_checked counts ("blocks" for vhdx)

    def add(self, code: str, sev: Severity, msg: str, offset: int | None = None,
            fixable: bool = False, path: str | None = None) -> None:
        self.findings.append(Finding(code, sev, msg, offset, fixable, path))

    @property
    def clean(self) -> bool:
        return not any(f.severity != INFO for f in self.findings)

    def to_dict(self) -> dict:
        return {"path": self.path, "clean": self.clean, "grains_checked": self.grains_checked,
                "findings": [f.to_dict() for f in self.findings]}


def check_image(path: str, allow_outside: bool = False, during_edit: bool = False) -> CheckReport:
    """Open `path` (raising only if it cannot be opened) and check every layer of it.
    `during_edit`: the check of an edit's result before it commits (its journal is expected)."""
    report = CheckReport(path)
    pending = None
    if not during_edit and os.path.lexists(sidecar_path(path, EDIT_JOURNAL_SUFFIX)):
        from .journal import pending_finding
        pending = pending_finding(path)
    if pending is not None:
        report.roll_back = pending.fixable
        report.findings.append(pending)
    if os.path.exists(sidecar_path(path, GROW_JOURNAL_SUFFIX)):
        report.roll_back = True
        report.add("vmdk.interrupted-grow", E, "an interrupted grow left its undo journal: the flat "
                   "extent may be longer than the descriptor says", fixable=True, path=path)
    if choose_format(path)[0] == "vhdx":
        from .vhdx.check import check_vhdx
        return check_vhdx(path, report, allow_outside)
    try:
        disk = open_image(path, allow_outside=allow_outside, follow_parent=False,
                          require_eos=False)
    except VdiskError:
        if pending is not None and pending.fixable:
            # an interrupted edit may leave metadata that opens only once it is rolled back
            # (a qcow2 header written, its new L1 table not): report the journal alone
            return report
        raise
    return check_disk(disk, report, allow_outside)


def check_disk(disk: Disk, report: CheckReport, allow_outside: bool = False) -> CheckReport:
    """Check an opened disk (closing it): also a disk inside a package (image.vmdk.open.open_window)."""
    for f in disk.files:
        folder, name = os.path.split(os.path.abspath(f))
        for tmp in leftover_temps(folder):
            if os.path.basename(tmp).startswith(f".{name}{TMP_MARK}"):
                report.add("vmdk.leftover-temp", W, f"{os.path.basename(tmp)} was left by an "
                           "interrupted run; the next change to this image removes it", path=tmp)
    try:
        if disk.format == "qcow2":
            from .qcow2.check import check_qcow2
            check_qcow2(disk, report, allow_outside)
            return report
        from .vmdk.check import check_vmdk
        check_vmdk(disk, report, allow_outside)
    finally:
        disk.close()
    return report
