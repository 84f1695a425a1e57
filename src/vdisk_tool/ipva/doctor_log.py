"""The doctor's vmware.log check: a CPU the guest halted and IDE devices VMware destroyed,
quoted from the last power-on sessions (specs/vmx.md §vmware.log).

Importing this module registers the check (`doctor` does so).
"""
from __future__ import annotations

import os
from collections.abc import Iterator

from ..errors import Severity
from .doctor_model import Context, Issue, issue, vmx_check
from .golden import DISK_NAMES, DUMP_BYTES, FLASH_BYTES
from .upgrade import BACKUP_NAME
from .vmlog import CpuHalt, IdeDestroyed, scan_logs
from .vmx import IDE_ROLES

HALT_CAUSE = "the usual result of Maintenance/Upload/DRAM on vSphere 4"


def _when(age: int) -> str:
    return "the newest power-on session" if age == 0 else \
        f"the power-on session {age} before the newest"


@vmx_check
def check_vmware_log(ctx: Context) -> Iterator[Issue]:
    scan = scan_logs(ctx.bundle.folder)
    for path, why in scan.unreadable:
        yield issue("bundle.log-unreadable", Severity.INFO, f"{ctx.rel(path)} was not read: {why}",
                    "bundle", path=path)
    if scan.halts:
        yield _halt_issue(scan.halts)
    seen: set[str] = set()
    for gone in scan.destroyed:                  # newest first: one Issue per slot
        if gone.slot not in seen:
            seen.add(gone.slot)
            yield _destroyed_issue(ctx, gone, sum(1 for g in scan.destroyed if g.slot == gone.slot))


def _halt_issue(halts: tuple[CpuHalt, ...]) -> Issue:
    newest = halts[0]
    more = f" (and in {len(halts) - 1} earlier session(s))" if len(halts) > 1 else ""
    sev = Severity.ERROR if newest.age == 0 else Severity.WARNING
    return issue("bundle.log-cpu-halted", sev, f"the guest halted the CPU in {_when(newest.age)}"
                 f"{more}, {HALT_CAUSE}: {newest.line.quote()}", "bundle", path=newest.line.file,
                 fix="power the VM off and on; update the firmware with Maintenance/Upload/Firmware, "
                 "not Upload/DRAM")


def _destroyed_issue(ctx: Context, gone: IdeDestroyed, times: int) -> Issue:
    role = IDE_ROLES[gone.slot]
    slot = ctx.vmx.slot(gone.slot)
    attached = slot is not None and slot.is_disk and slot.path is not None
    exists = attached and slot is not None and slot.path is not None and os.path.exists(slot.path)
    quoted = " / ".join(line.quote() for line in gone.lines)
    more = f" (in {times} sessions)" if times > 1 else ""
    head = f"VMware destroyed the {role} disk's device ({gone.slot}) in {_when(gone.age)}{more}: {quoted}"
    if exists:
        assert slot is not None and slot.path is not None
        return issue("bundle.log-ide-destroyed", Severity.WARNING, f"{head}; the vmx attaches "
                     f"{slot.file_name} there again", role, path=gone.lines[0].file,
                     fix=ctx.command("check", slot.path))
    now = "the vmx no longer attaches a disk there" if not attached else \
        f"its file {slot.file_name if slot else ''} is missing"
    return issue("bundle.log-ide-destroyed", Severity.ERROR, f"{head}; {now}", role,
                 path=gone.lines[0].file, fix=recreate_step(ctx, gone.slot, slot.file_name
                                                            if slot and slot.file_name else None))


def recreate_step(ctx: Context, slot: str, file_name: str | None) -> str:
    """How to give `slot` its disk back: attach it, and make or restore the disk."""
    role = IDE_ROLES[slot]
    name = file_name or DISK_NAMES[role]
    path = name if os.path.isabs(name) else os.path.join(ctx.bundle.folder, name)
    attach = f'set {slot}.present = "TRUE" and {slot}.fileName = "{name}"'
    if role == "boot":
        make = "if the disk is lost: " + ctx.command("boot", "create", path, "--firmware", "ipva.bin")
    elif role == "cf":
        make = (f"restore {name} from its backup (it holds the CF's files), or make a fresh one: "
                + ctx.command("create", path, "--size", "1G") + " && "
                + ctx.command("cf", "format", path, "--yes"))
    elif role == "flash":
        make = (f"restore {name} from its backup, or make a blank one and restore the PBX objects "
                "from a file `vdisk flash backup` wrote: "
                + ctx.command("create", path, "--size", f"{FLASH_BYTES >> 20}M") + " && "
                + ctx.command("flash", "restore", path, BACKUP_NAME))
    else:
        make = ("make a fresh store: " + ctx.command("create", path, "--size", f"{DUMP_BYTES >> 20}M")
                + " && " + ctx.command("dump", "init", path))
    return f"{attach}; {make}"
