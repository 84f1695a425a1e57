"""`vdisk check --repair`: fix what can be fixed without guessing (specs/vmdk.md §Repair).

The plan comes from a CheckReport; it is applied in place under the undo journal
(edit_image) and committed only when the result then checks clean of the fixed findings;
otherwise the edit is rolled back.
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from typing import Any

from ..errors import RepairError
from ..formats.vmdk_sparse import UNCLEAN_SHUTDOWN_OFFSET
from . import hostio
from .base import SECTOR_BYTES
from .check import CheckReport, check_image
from .edit import edit_image, flagged_devices, store_descriptor
from .grow import roll_back_journal
from .journal import recover
from .qcow2 import REPAIRING, Qcow2Device
from .qcow2.repair import rebuild_refcounts
from .safe import Replacement, check_unlocked, create_temp, sparse_copy
from .vmdk.sparse import SparseExtent


@dataclass(frozen=True)
class RepairPlan:
    path: str
    actions: tuple[str, ...]
    report: CheckReport

    @property
    def empty(self) -> bool:
        return not self.actions


def plan_repair(report: CheckReport) -> RepairPlan:
    actions = ["roll back the interrupted operation (undo journal)"] if report.roll_back else []
    if report.replay_log:
        actions.append("replay the VHDX log into the file and clear it")
    actions += [f"write the end-of-stream marker at 0x{at:x} in {os.path.basename(p)}"
                for p, at in report.eos_fixes]
    actions += [f"copy {f.what} ({f.length} bytes, 0x{f.src_offset:x} -> 0x{f.dst_offset:x}) in "
               f"{os.path.basename(f.path)}" for f in report.fixes]
    actions += [f"set {f.what} to sector {f.value} (0x{f.offset:x}) in {os.path.basename(f.path)}"
                for f in report.entry_fixes]
    actions += [f"set extent {i + 1} to {n} sectors to match its flat file"
                for i, n in sorted(report.extent_sizes.items())]
    if report.rebuild_refcounts:
        actions.append("rebuild every refcount from the references, set the COPIED flags and "
                       "clear the dirty and corrupt bits (as qemu-img check -r all)")
    errors_left = [f for f in report.findings if f.severity.value == "error" and not f.fixable]
    if report.clear_unclean and not errors_left:
        actions += [f"clear uncleanShutdown in {os.path.basename(p)}" for p in report.clear_unclean]
    return RepairPlan(report.path, tuple(actions), report)


def _restore_eos(fixes: list[tuple[str, int]], backup: str | None, allow_outside: bool) -> None:
    """A stream cannot be edited in place: copy it beside, write the EOS sector where it
    belongs, check the copy, and rename it over the original."""
    rep = Replacement()
    try:
        for path, at in fixes:
            tmp = create_temp(path)
            rep.add(tmp, path)
            sparse_copy(path, tmp)
            with open(tmp, "r+b") as f:
                hostio.pwrite(f.fileno(), bytes(SECTOR_BYTES), at)
                f.truncate(at + SECTOR_BYTES)
                hostio.fsync(f.fileno())
            left = [f for f in check_image(tmp, allow_outside=allow_outside).findings
                    if f.code == "vmdk.stream-no-eos"]
            if left:
                raise RepairError(f"restoring the end-of-stream marker did not fix: {left[0].message}",
                                  path=path)
        rep.commit(backup=backup)
    except BaseException:
        rep.abort()
        raise


def apply_repair(plan: RepairPlan, *, backup: str | None = None, force: bool = False,
                 dry_run: bool = False, allow_outside: bool = False) -> CheckReport:
    """Apply the plan crash-safely and return the check of the result (of the copy on dry_run)."""
    if plan.empty:
        return plan.report
    report = plan.report
    if report.roll_back:
        if dry_run:
            return report
        check_unlocked([plan.path], force=force)
        roll_back_journal(plan.path)
        recover(plan.path)
        report = check_image(plan.path, allow_outside=allow_outside)
        plan = plan_repair(report)
        if plan.empty:
            return report
    if report.replay_log:
        if dry_run:
            return report
        from .vhdx.repair import replay_log
        report = replay_log(plan.path, force=force, backup=backup, allow_outside=allow_outside)
        plan = plan_repair(report)
        if plan.empty:
            return report
    if report.eos_fixes:
        if dry_run:
            return report
        check_unlocked([p for p, _ in report.eos_fixes], force=force)
        _restore_eos(report.eos_fixes, backup, allow_outside)
        report = check_image(plan.path, allow_outside=allow_outside)
        plan = plan_repair(report)
        if plan.empty:
            return report
    errors_left = [f for f in report.findings if f.severity.value == "error" and not f.fixable]
    token = REPAIRING.set(True)
    try:
        return _apply_in_place(plan, report, errors_left, backup, force, dry_run, allow_outside)
    finally:
        REPAIRING.reset(token)


def _apply_in_place(plan: RepairPlan, report: CheckReport, errors_left: list, backup: str | None,
                    force: bool, dry_run: bool, allow_outside: bool) -> CheckReport:
    with edit_image(plan.path, force=force, backup=backup, dry_run=dry_run, keep_cid=True,
                    allow_outside=allow_outside) as disk:
        if report.rebuild_refcounts:
            for ext in disk.extents:
                if isinstance(ext.device, Qcow2Device):
                    rebuild_refcounts(ext.device)
        by_name: dict[str, Any] = {os.path.basename(e.path): e.device for e in disk.extents
                                   if e.path and (isinstance(e.device, SparseExtent)
                                                  or disk.format == "vhdx")}
        for fix in report.fixes:
            dev = by_name.get(os.path.basename(fix.path))
            if dev is None:
                raise RepairError(f"extent {os.path.basename(fix.path)} not found in the copy",
                                  path=plan.path)
            data = hostio.pread(dev.fd, fix.length, fix.src_offset)
            hostio.pwrite(dev.fd, data, fix.dst_offset)
        for efix in report.entry_fixes:
            dev = by_name.get(os.path.basename(efix.path))
            if dev is None:
                raise RepairError(f"extent {os.path.basename(efix.path)} not found in the copy",
                                  path=plan.path)
            hostio.pwrite(dev.fd, struct.pack("<I", efix.value), efix.offset)
        if report.clear_unclean and not errors_left:
            for p in report.clear_unclean:
                dev = by_name.get(os.path.basename(p))
                if dev is not None:
                    dev.set_unclean(False)
                    if dev.footer is not None:
                        # keep the stream footer's copy of the flag consistent
                        hostio.pwrite(dev.fd, b"\0", dev.file_bytes - 1024 + UNCLEAN_SHUTDOWN_OFFSET)
        if report.extent_sizes and disk.descriptor is not None:
            desc = disk.descriptor
            for i, n in report.extent_sizes.items():
                line = desc.extents[i]
                line.sectors = n
                desc.set_extent(i, line)
            store_descriptor(disk, desc)
        for sp in flagged_devices(disk):
            sp.mark_in_use(False)   # judge the result as it will be after the commit
        for ext in disk.extents:
            ext.device.flush()
        after = check_image(plan.path, allow_outside=allow_outside, during_edit=True)
        fixed_codes = {f.code for f in report.findings if f.fixable}
        still = [f for f in after.findings if f.code in fixed_codes]
        if still:
            raise RepairError(f"repair did not fix: {still[0].code}: {still[0].message}",
                              path=plan.path)
    after.path = plan.path
    return after
