"""Naming one disk of a package or a bundle: `CONTAINER#SLOT` (specs/ovf.md §Disk names).

`ipva.ova#ide0:1`, `ipva-ovf.zip#cf`, `ipva/ipva.vmx#ide1:0` or `./ipva#dump` name the disk
at that IDE slot (or of that role) for the read commands (fs, dump, flash); inside a package
a disk may also be named by its member name, as reports show it (`ipva.ova#hd-cf.vmdk`). The name is
only taken apart when no file of the whole name exists and the part before the last `#`
is an existing package (.ova, .ovf, .zip), vmx or folder: a real file whose name holds a
`#` is always opened as itself.
"""
from __future__ import annotations

import os
import re

from ..errors import ImageError
from ..image.disk import Disk, open_image
from .bundle import ROLE_SLOTS
from .ova import PACKAGE_SUFFIXES, is_package, open_package
from .vmx import Vmx, find_vmx

_SLOT = re.compile(r"^(ide|scsi|sata|nvme)\d:\d{1,2}$")


def split_disk_name(name: str) -> tuple[str, str] | None:
    """(container, slot) when `name` names a disk inside a package or bundle, else None."""
    if "#" not in name or os.path.lexists(name):
        return None
    container, _, selector = name.rpartition("#")
    if not container:
        return None
    if os.path.isdir(container):
        pass
    elif not (os.path.isfile(container)
              and container.lower().endswith((*PACKAGE_SUFFIXES, ".vmx"))):
        return None
    slot = ROLE_SLOTS.get(selector.lower(), selector.lower())
    if not _SLOT.match(slot):
        if is_package(container) and selector.lower().endswith(".vmdk"):
            return container, selector       # a disk of the package by its member name
        raise ImageError(f"{selector!r} is not a disk slot (ide0:0, ide0:1, ide1:0, ide1:1) or a "
                         "role (boot, cf, flash, dump)", path=name)
    return container, slot


def open_named(name: str) -> Disk:
    """Open an image, or the disk `CONTAINER#SLOT` names, read-only."""
    parts = split_disk_name(name)
    if parts is None:
        return open_image(name)
    container, slot = parts
    if is_package(container):
        with open_package(container) as pkg:
            if not _SLOT.match(slot):
                found = next((d for d in pkg.disks() if d.member and d.member.name == slot), None)
                if found is None:
                    raise ImageError(f"the package has no disk {slot!r}", path=container)
                slot = found.slot
            # a temporary copy (deflated zip) may be unlinked: the open disk keeps it
            return pkg.open_disk(slot)
    vmx_path = find_vmx(container)
    path = Vmx.read(vmx_path).disk_for_slot(slot)
    if path is None:
        raise ImageError(f"the vmx attaches no disk at {slot}", path=vmx_path)
    return open_image(path)
