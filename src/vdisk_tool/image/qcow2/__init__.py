"""The qcow2 backend (specs/qcow2.md): open_qcow2() gives a Disk whose one extent is a
Qcow2Device, with its backing chain attached read-only under the same path safety and
depth/loop limits as VMDK parents (image/vmdk/open.py)."""
from __future__ import annotations

import os
from contextvars import ContextVar

from ...errors import ImageError, UnsupportedError
from .device import Qcow2Device

BACKING_FORMATS = ("raw", "vmdk", "qcow2")
# set by a repair: the image with the corrupt bit may be opened for writing
REPAIRING: ContextVar[bool] = ContextVar("vdisk_qcow2_repairing", default=False)


def open_qcow2(path: str, writable: bool = False, allow_outside: bool = False,
               follow_parent: bool = True, depth: int = 0,
               seen: frozenset[str] = frozenset(), allow_corrupt: bool = False):
    from ..disk import Disk, Extent
    dev = Qcow2Device(path, writable=writable, allow_corrupt=allow_corrupt or REPAIRING.get())
    disk = Disk(path, "qcow2", "qcow2", None, None, [Extent(None, 0, dev.size_bytes, dev, path)],
                writable=writable)
    m = dev.meta
    if m.dirty:
        disk.warnings.append("the dirty bit is set: the image was not closed cleanly and its "
                             "refcounts may be stale (`vdisk check --repair` rebuilds them)")
    if m.corrupt:
        disk.warnings.append("the corrupt bit is set: a writer found its metadata inconsistent")
    if m.backing_name and follow_parent:
        try:
            _attach_backing(disk, dev, allow_outside, depth, seen | {os.path.realpath(path)})
        except Exception:
            disk.close()
            raise
    return disk


def backing_path(path: str, name: str, allow_outside: bool) -> str:
    """Where a backing file name points: relative names from the image's folder (as qemu
    resolves them), refused outside it unless allowed."""
    from ..disk import _resolve
    base = os.path.dirname(os.path.abspath(path))
    return _resolve(base, name, allow_outside, "backing file", path)


def _attach_backing(disk, dev: Qcow2Device, allow_outside: bool, depth: int,
                    seen: frozenset[str]) -> None:
    from ..disk import _Padded, open_image
    m = dev.meta
    assert m.backing_name is not None
    bpath = backing_path(disk.path, m.backing_name, allow_outside)
    if not os.path.exists(bpath):
        raise ImageError(f"backing file {m.backing_name!r} is missing", path=disk.path)
    fmt = m.backing_format or None
    if fmt is not None and fmt not in BACKING_FORMATS:
        raise UnsupportedError(f"backing file {m.backing_name!r} has format {fmt!r}; vdisk "
                               f"reads {', '.join(BACKING_FORMATS)} backing files", path=disk.path)
    parent = open_image(bpath, writable=False, allow_outside=allow_outside, format=fmt,
                        _depth=depth + 1, _seen=seen)
    disk.parent = parent
    dev.backing = _Padded(parent, dev.size_bytes)


__all__ = ["Qcow2Device", "open_qcow2", "backing_path", "BACKING_FORMATS", "REPAIRING"]
