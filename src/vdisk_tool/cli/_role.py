"""The role check every role-specific write makes first (ipva/role.py), and its options."""
from __future__ import annotations

import typer

from ..ipva.role import OVERRIDE, Role, require_role
from .common import warn

ANY_DISK = typer.Option(False, OVERRIDE, help="Write even though the disk holds another role's "
                        "structure or one vdisk does not recognise (a warning says what).")
VMX = typer.Option(None, "--vmx", help="The appliance's .vmx (default: a .vmx beside the disk); "
                   "the slot that attaches the disk decides its role.")


def guard(path: str, role: Role | tuple[Role, ...], vmx: str | None, any_disk: bool,
          allow_outside: bool = False) -> None:
    """Refuse a disk of another role (exit 3, nothing changed); with --any-disk, warn."""
    text = require_role(path, role, vmx=vmx, any_disk=any_disk, allow_outside=allow_outside)
    if text:
        warn(text)
