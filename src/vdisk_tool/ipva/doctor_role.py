"""The doctor's role check: a disk whose content is another role's structure than its IDE
slot's (ipva/role.py) is reported, since every write by role would refuse it."""
from __future__ import annotations

from collections.abc import Iterator

from ..errors import Severity
from .doctor_model import Context, DiskContext, Issue, disk_check, issue
from .role import WHAT, DiskIdentity, Role, identify_device

SLOT_ORDER = "ide0:0 boot, ide0:1 cf, ide1:0 flash, ide1:1 dump"


@disk_check()
def check_role(ctx: Context, d: DiskContext) -> Iterator[Issue]:
    found = identify_device(d.disk, d.path)
    ident = DiskIdentity(d.path, found.role, found.evidence, d.slot.slot, ctx.bundle.vmx_path,
                         found.files)
    if ident.contradicts_slot:
        yield issue("bundle.role-mismatch", Severity.ERROR,
                    f"{ctx.rel(d.path)} is attached at {d.slot.slot} as {WHAT[Role(d.role)]} but "
                    f"holds {ident.evidence}: disks swapped in the vmx, or this disk was "
                    "overwritten", d.role, path=d.path,
                    fix=f"attach each disk at its slot ({SLOT_ORDER}) or restore this one "
                        "from a backup")
