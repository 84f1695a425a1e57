"""The VHDX backend (Microsoft MS-VHDX; specs/vhdx.md): open, check, create.

open_vhdx() gives a Disk (image/disk.py) with one extent served by a VhdxDevice; a
differencing file's parent is found through its parent locator with the same path safety
and chain limits as VMDK parents, and verified by its DataWriteGuid.
"""
from __future__ import annotations

import os

from ...errors import ImageError
from .device import VhdxDevice
from .layout import parse_guid_text

__all__ = ["VhdxDevice", "open_vhdx"]

# the order MS-VHDX §2.6.2.6.3 gives for trying the parent's paths
PATH_KEYS = ("relative_path", "volume_path", "absolute_win32_path")


def open_vhdx(path: str, writable: bool = False, allow_outside: bool = False,
              parent_dir: str | None = None, follow_parent: bool = True,
              depth: int = 0, seen: frozenset[str] = frozenset()):
    from ..disk import Disk, Extent
    dev = VhdxDevice(path, writable=writable)
    disk = Disk(path, "vhdx", dev.subformat, None, None,
                [Extent(None, 0, dev.size_bytes, dev, path)], writable=writable)
    disk.warnings += dev.warnings
    if follow_parent and dev.layout.has_parent:
        try:
            _attach_parent(disk, dev, allow_outside, parent_dir, depth, seen)
        except BaseException:
            disk.close()
            raise
    return disk


def parent_candidates(locator: dict[str, str]) -> list[tuple[str, str]]:
    return [(k, locator[k]) for k in PATH_KEYS if locator.get(k)]


def _attach_parent(disk, dev: VhdxDevice, allow_outside: bool, parent_dir: str | None,
                   depth: int, seen: frozenset[str]) -> None:
    from ..disk import _Padded, _resolve, open_image
    base = parent_dir or os.path.dirname(os.path.abspath(disk.path))
    loc = dev.layout.locator
    found = None
    refused: ImageError | None = None
    for key, name in parent_candidates(loc):
        norm = ("\\\\" + name[8:] if name.startswith("\\\\?\\UNC\\")
                else name[4:] if name.startswith("\\\\?\\") else name)
        try:
            cand = _resolve(base, norm, allow_outside, f"parent ({key})", disk.path)
        except ImageError as exc:
            refused = refused or exc
            continue
        if os.path.isfile(cand):
            found = cand
            break
    if found is None:
        if refused is not None:
            raise refused
        raise ImageError(f"parent {next(iter(dict(parent_candidates(loc)).values()))!r} is "
                         "missing", path=disk.path)
    parent = open_image(found, writable=False, allow_outside=allow_outside,
                        _depth=depth + 1, _seen=seen)
    want = {parse_guid_text(loc.get(k, "")) for k in ("parent_linkage", "parent_linkage2")} - {None}
    pdev = parent.extents[0].device if parent.format == "vhdx" else None
    if not isinstance(pdev, VhdxDevice) or pdev.data_write_guid not in want:
        parent.close()
        raise ImageError(f"parent {os.path.basename(found)} is not the disk this differencing "
                         f"file was made from (parent_linkage {loc.get('parent_linkage')} does "
                         "not match its DataWriteGuid): the parent was modified", path=disk.path)
    if parent.size_bytes < disk.size_bytes:
        disk.warnings.append("parent is smaller than the child")
    disk.parent = parent
    dev.parent = _Padded(parent, disk.size_bytes)


def shape_of(disk) -> dict:
    """What create_image needs to make a blank VHDX like `disk` (flash reset, edits)."""
    dev = disk.extents[0].device
    sub = "vhdx-fixed" if dev.subformat == "vhdx-fixed" else "vhdx-dynamic"
    return {"size_bytes": disk.size_bytes, "subformat": sub, "adapter": "ide", "template": None,
            "options": {"subformat": sub.removeprefix("vhdx-"), "block_size": str(dev.block_bytes)}}


def describe_vhdx(disk) -> dict:
    """The VHDX facts `vdisk info` shows."""
    from ...formats import vhdx as vx
    dev: VhdxDevice = disk.extents[0].device
    lay = dev.layout
    h = lay.header
    out = {"block_bytes": lay.block_bytes, "logical_sector_bytes": lay.logical_sector_bytes,
           "physical_sector_bytes": lay.physical_sector_bytes,
           "disk_id": vx.guid_text(lay.disk_id), "data_write_guid": vx.guid_text(h.data_write_guid),
           "header_sequence_number": h.sequence_number, "log_bytes": h.log_length_bytes,
           "log_replayed_entries": dev.replayed_entries}
    if lay.has_parent:
        out["parent_locator"] = dict(lay.locator)
    return out
