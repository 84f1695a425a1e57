"""`vdisk grow`: enlarge any writable VMDK (or raw or qcow2 image) without touching its data.

A qcow2 image is grown in place under the undo journal (its size field, and its L1 table,
which moves to new clusters when it outgrows its own); over a backing file larger than the
old size the new area is zeroed, as qemu-img resize does, and the backing file is untouched.

Sparse and stream subformats are rewritten into new files beside the old ones (cost: the
metadata plus the allocated grains, never the capacity) and renamed over them. Flat
subformats are extended in place, sparsely, under an undo journal: the old lengths are
recorded and fsynced first, so an interrupted grow is rolled back by the next run.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass

from ..errors import RefusedError
from ..formats import vmdk_descriptor as vd
from . import platform
from .backup import check_backup_target
from .base import SECTOR_BYTES
from .create import create_image, like, new_cid
from .disk import open_image
from .journal import recover
from .safe import (
    GROW_JOURNAL_SUFFIX,
    Replacement,
    check_unlocked,
    create_temp,
    fsync_dir,
    fsync_path,
    sidecar_path,
)
from .vmdk.create import SPLIT_SECTORS, extent_names

JOURNAL_SUFFIX = GROW_JOURNAL_SUFFIX


@dataclass(frozen=True)
class GrowPlan:
    path: str
    subformat: str
    old_bytes: int
    new_bytes: int
    method: str        # "rewrite", "extend-flat", "extend-raw", "resize-qcow2", "vhdx-in-place"
    files: tuple[str, ...]

    def describe(self) -> list[str]:
        how = {"rewrite": "write a new image with the larger capacity and copy the allocated grains",
               "extend-flat": "extend the flat extent file(s) sparsely and rewrite the descriptor",
               "extend-raw": "extend the raw file sparsely",
               "resize-qcow2": "set the qcow2 virtual size in place (the L1 table grows as "
                               "needed; over a larger backing file the new area reads as "
                               "zeros), under the undo journal",
               "vhdx-in-place": "set the VHDX's virtual disk size in place, moving its BAT to "
                                "the end if it needs more room"}[self.method]
        return [f"grow {self.path} ({self.subformat}) from {self.old_bytes} to {self.new_bytes} bytes",
                how]


def journal_path(path: str) -> str:
    return sidecar_path(path, JOURNAL_SUFFIX)


def roll_back_journal(path: str) -> bool:
    """Undo an interrupted flat grow: truncate each file back to its recorded length."""
    jp = journal_path(path)
    if not os.path.exists(jp):
        return False
    try:
        with open(jp) as f:
            record = json.load(f)
    except ValueError:
        # the journal never got complete: it is fsynced before the first truncate, so
        # nothing was changed yet
        os.unlink(jp)
        return True
    except OSError:
        return False
    try:
        # The descriptor is renamed into place last: once it is the new one the grow is
        # complete and only the journal is left to remove.
        if _sha256(path) == record.get("descriptor_sha256"):
            for name, length in record.get("lengths", {}).items():
                if os.path.exists(name) and os.path.getsize(name) != length:
                    platform.set_length(name, length)
        for tmp in record.get("temps", []):
            if os.path.exists(tmp):
                os.unlink(tmp)
    except OSError:
        return False
    os.unlink(jp)
    return True


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read(1 << 20))
    return h.hexdigest()


def plan_grow(path: str, new_bytes: int, allow_outside: bool = False) -> GrowPlan:
    if new_bytes % SECTOR_BYTES:
        new_bytes = -(-new_bytes // SECTOR_BYTES) * SECTOR_BYTES
    with open_image(path, allow_outside=allow_outside) as disk:
        old = disk.size_bytes
        sub = disk.subformat
        files = tuple(disk.files)
        if disk.parent is not None and disk.format == "vhdx":
            raise RefusedError("a differencing VHDX has its parent's size (MS-VHDX), and growing "
                               "the parent gives it a new DataWriteGuid that orphans the child; "
                               "convert the child to a standalone VHDX and grow that", path=path)
        if sub == "qcow2":
            if new_bytes >= old:
                disk.extents[0].device.check_resize(new_bytes)   # type: ignore[attr-defined]
        elif disk.parent is not None:
            raise RefusedError("growing a snapshot delta would break its chain; grow the base "
                               "disk after consolidating", path=path)
    if new_bytes < old:
        raise RefusedError(f"shrinking is not supported ({old} -> {new_bytes} bytes): it would "
                           "cut off data", path=path)
    if sub == "raw":
        method = "extend-raw"
    elif sub == "qcow2":
        method = "resize-qcow2"
    elif sub in ("monolithicFlat", "vmfs", "twoGbMaxExtentFlat"):
        method = "extend-flat"
    elif sub in ("monolithicSparse", "streamOptimized", "twoGbMaxExtentSparse"):
        method = "rewrite"
    elif sub in ("vhdx-dynamic", "vhdx-fixed"):
        method = "vhdx-in-place"
    else:
        raise RefusedError(f"cannot grow a {sub} disk", path=path)
    return GrowPlan(path, sub, old, new_bytes, method, files)


def apply_grow(plan: GrowPlan, *, force: bool = False, backup: str | None = None,
               progress=None, compression_level: int = 6) -> None:
    """Carry out the plan; a streamOptimized disk is re-deflated at `compression_level`."""
    check_unlocked(plan.files, force=force)
    check_backup_target(backup, plan.files)
    roll_back_journal(plan.path)
    recover(plan.path)   # an interrupted edit is undone before the disk is read or extended
    if plan.new_bytes == plan.old_bytes:
        return
    if plan.method == "extend-raw":
        if backup:
            from .safe import sparse_copy
            sparse_copy(plan.path, backup)
        platform.set_length(plan.path, plan.new_bytes)
        fsync_path(plan.path)
        return
    if plan.method == "resize-qcow2":
        from .edit import edit_image
        with edit_image(plan.path, force=force, backup=backup) as disk:
            disk.extents[0].device.resize(plan.new_bytes)   # type: ignore[attr-defined]
        return
    if plan.method == "vhdx-in-place":
        from .edit import edit_image
        from .vhdx.grow import grow_device
        with edit_image(plan.path, force=force, backup=backup) as disk:
            grow_device(disk.extents[0].device, plan.new_bytes)   # type: ignore[arg-type]
        return
    if plan.method == "rewrite":
        with open_image(plan.path) as disk:
            shape = like(disk)
            create_image(plan.path, plan.new_bytes, shape["subformat"], shape["adapter"],
                         source=disk, overwrite=True, template=shape["template"], force=force,
                         backup=backup, progress=progress,
                         compression_level=compression_level)
        return
    _grow_flat(plan, backup)


def _grow_flat(plan: GrowPlan, backup: str | None) -> None:
    with open_image(plan.path) as disk:
        desc = disk.descriptor
        assert desc is not None
        lines = [vd.ExtentLine(e.access, e.sectors, e.extent_type, e.filename, e.offset_sectors, 0)
                 for e in desc.extents]
        folder = os.path.dirname(os.path.abspath(plan.path))
        paths = [e.path or "" for e in disk.extents]
    extra = (plan.new_bytes - plan.old_bytes) // SECTOR_BYTES
    lengths = {p: os.path.getsize(p) for p in paths if p}
    new_files: dict[str, int] = {}   # path -> length to set
    if plan.subformat == "twoGbMaxExtentFlat":
        last = lines[-1]
        room = max(0, SPLIT_SECTORS - last.sectors)
        take = min(room, extra)
        last.sectors += take
        new_files[paths[-1]] = last.sectors * SECTOR_BYTES
        extra -= take
        names = extent_names(plan.path, plan.subformat, plan.new_bytes)
        taken = {ln.filename for ln in lines}
        for name, _ in names:
            if extra <= 0:
                break
            if name in taken:
                continue
            n = min(extra, SPLIT_SECTORS)
            lines.append(vd.ExtentLine("RW", n, "FLAT", name, 0, 0))
            target = os.path.join(folder, name)
            if os.path.exists(target):
                raise RefusedError(f"{name} already exists", path=plan.path)
            new_files[target] = n * SECTOR_BYTES
            extra -= n
    else:
        last = lines[-1]
        last.sectors += extra
        new_files[paths[-1]] = (last.offset_sectors or 0) * SECTOR_BYTES + last.sectors * SECTOR_BYTES
    desc.replace_extents(lines)
    desc.set("CID", f"{new_cid():08x}", quoted=False)
    adapter = desc.get("ddb.adapterType") or "ide"
    cyl, _, _ = vd.geometry_for(adapter, plan.new_bytes // SECTOR_BYTES)
    if desc.get("ddb.geometry.cylinders") is not None:
        desc.set("ddb.geometry.cylinders", str(cyl))
    tmp = create_temp(plan.path)
    with open(tmp, "wb") as f:
        f.write(desc.to_bytes())
    jp = journal_path(plan.path)
    record = {"lengths": {p: lengths.get(p, 0) for p in new_files}, "temps": [tmp],
              "descriptor_sha256": _sha256(plan.path)}
    with open(jp, "w") as f:
        json.dump(record, f)
        f.flush()
        platform.fsync(f.fileno())
    fsync_dir(jp)
    created = []
    try:
        for p, length in new_files.items():
            if not os.path.exists(p):
                open(p, "wb").close()
                created.append(p)
            if os.path.getsize(p) < length:
                platform.set_length(p, length)
            fsync_path(p)
        rep = Replacement()
        rep.add(tmp, os.path.abspath(plan.path))
        rep.commit(backup=backup)
    except BaseException:
        roll_back_journal(plan.path)
        for p in created:
            if os.path.exists(p) and os.path.getsize(p) == 0:
                os.unlink(p)
        raise
    os.unlink(jp)
