"""The emulated flash on hd-flash: usage, backup/restore of the flash region, factory reset
(ipva-model.md §4).

Model: the first 64 MiB of the disk are the flash; blank flash reads as zeros; a 64 KiB
segment with any non-zero byte is in use. The flash directory's size depends on the VM's RAM:
224 segments at 64 MB, 900 from 192 MB on [fact]; in between (and below 64 MB) the size is
modelled, not known (see `directory_segments`). Factory reset replaces the disk by a blank
one of the same shape, touching metadata only: its cost does not grow with the data held.
"""
from __future__ import annotations

import glob
import os
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from ..errors import Finding, ImageError, RefusedError, Severity, UnsupportedError
from ..formats import vmdk_descriptor as vd
from ..image import hostio, platform
from ..image.base import BlockDevice, FileDevice, RunKind
from ..image.create import create_image, like, new_cid
from ..image.disk import Disk, open_image, sniff
from ..image.safe import Replacement, check_unlocked, create_temp, fsync_path
from ..image.vmdk.create import write_sparse_extent
from ..image.vmdk.open import read_descriptor

MiB = 1 << 20
FLASH_REGION_BYTES = 64 * MiB
SEGMENT_BYTES = 64 * 1024
BASE_RAM_MB, BASE_SEGMENTS = 64, 224
FULL_RAM_MB, MAX_SEGMENTS = 192, 900
Progress = Callable[[int, int], None]
_STORED = (RunKind.DATA, RunKind.PARENT)


def directory_segments(memsize_mb: int) -> int:
    """Flash-directory segments the RAM allows: 224 at 64 MB and 900 from 192 MB [fact];
    linear between them and proportional below 64 MB, rounded down [modelled]."""
    if memsize_mb <= 0:
        return 0
    if memsize_mb >= FULL_RAM_MB:
        return MAX_SEGMENTS
    if memsize_mb >= BASE_RAM_MB:
        return BASE_SEGMENTS + (memsize_mb - BASE_RAM_MB) * (MAX_SEGMENTS - BASE_SEGMENTS) \
            // (FULL_RAM_MB - BASE_RAM_MB)
    return BASE_SEGMENTS * memsize_mb // BASE_RAM_MB


_MEMSIZE = re.compile(r'^\s*memsize\s*=\s*"?\s*(\d+)\s*"?\s*(?:#.*)?$', re.IGNORECASE)


def read_memsize(vmx_path: str) -> int | None:
    """memsize (MB) from a vmx, None when absent or not a number."""
    try:
        from .vmx import Vmx
    except ImportError:  # pragma: no cover - the vmx module is part of the package
        Vmx = None  # type: ignore[assignment,misc]
    if Vmx is not None:
        value = Vmx.read(vmx_path).get("memsize")
        value = value.strip().strip('"').strip() if value else None
        return int(value) if value and value.isdigit() else None
    found = None
    with open(vmx_path, "rb") as f:
        for line in f.read(1 << 20).decode("utf-8", "replace").splitlines():
            m = _MEMSIZE.match(line)
            if m:
                found = int(m.group(1))
    return found


# -- usage ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class FlashInfo:
    size_bytes: int
    region_bytes: int
    segments_total: int
    segments_in_use: int
    bytes_in_use_beyond_region: int
    memsize_mb: int | None
    directory_segments: int | None
    findings: tuple[Finding, ...] = field(default_factory=tuple)

    @property
    def blank(self) -> bool:
        return self.segments_in_use == 0 and self.bytes_in_use_beyond_region == 0

    def to_dict(self) -> dict[str, object]:
        return {"size_bytes": self.size_bytes, "region_bytes": self.region_bytes,
                "blank": self.blank, "segment_bytes": SEGMENT_BYTES,
                "segments_total": self.segments_total, "segments_in_use": self.segments_in_use,
                "bytes_in_use_beyond_region": self.bytes_in_use_beyond_region,
                "memsize_mb": self.memsize_mb, "directory_segments": self.directory_segments,
                "findings": [f.to_dict() for f in self.findings]}


def stored_segments(dev: BlockDevice, start: int, end: int) -> Iterator[int]:
    """Indexes of the 64 KiB segments in [start, end) that have stored (maybe zero) bytes."""
    last = -1
    for run in dev.runs():
        if run.kind not in _STORED or run.end <= start or run.offset >= end:
            continue
        first = max(run.offset, start) // SEGMENT_BYTES
        stop = -(-min(run.end, end) // SEGMENT_BYTES)
        for i in range(max(first, last + 1), stop):
            yield i
            last = i


def used_segments(dev: BlockDevice, start: int, end: int) -> Iterator[int]:
    """Indexes of the segments in [start, end) that hold a non-zero byte (O(data))."""
    for i in stored_segments(dev, start, end):
        lo = i * SEGMENT_BYTES
        n = min(SEGMENT_BYTES, dev.size_bytes - lo)
        if dev.read_at(lo, n).count(0) != n:
            yield i


def read_flash_info(dev: BlockDevice, memsize_mb: int | None = None) -> FlashInfo:
    region = min(FLASH_REGION_BYTES, dev.size_bytes)
    in_use = sum(1 for _ in used_segments(dev, 0, region))
    beyond = sum(min(SEGMENT_BYTES, dev.size_bytes - i * SEGMENT_BYTES)
                 for i in used_segments(dev, region, dev.size_bytes))
    findings: list[Finding] = []
    if dev.size_bytes < FLASH_REGION_BYTES:
        findings.append(Finding("flash.too-small", Severity.ERROR,
                                f"the disk holds {dev.size_bytes} bytes, less than the "
                                f"{FLASH_REGION_BYTES} bytes of flash"))
    limit = directory_segments(memsize_mb) if memsize_mb is not None else None
    if limit is not None and in_use > limit:
        findings.append(Finding("flash.directory-overflow", Severity.WARNING,
                                f"{in_use} segments in use, memsize {memsize_mb} MB allows a "
                                f"flash directory of {limit}: lowering RAM can lose PBX objects"))
    if beyond:
        findings.append(Finding("flash.data-beyond-region", Severity.INFO,
                                f"{beyond} bytes in use after the first 64 MiB"))
    return FlashInfo(dev.size_bytes, region, -(-region // SEGMENT_BYTES), in_use, beyond,
                     memsize_mb, limit, tuple(findings))


# -- backup and restore of the flash region ----------------------------------------------------
def write_backup(dev: BlockDevice, out_path: str, progress: Progress | None = None) -> int:
    """A raw, sparse copy of the flash region at out_path (crash-safe). Returns the segments
    written."""
    region = min(FLASH_REGION_BYTES, dev.size_bytes)
    tmp = create_temp(out_path)
    rep = Replacement()
    rep.add(tmp, os.path.abspath(out_path))
    n = 0
    try:
        with open(tmp, "r+b") as f:
            platform.set_sparse(f.fileno())
            f.truncate(region)
            for i in used_segments(dev, 0, region):
                lo = i * SEGMENT_BYTES
                hostio.pwrite(f.fileno(), dev.read_at(lo, min(SEGMENT_BYTES, region - lo)), lo)
                n += 1
                if progress:
                    progress(lo, region)
        rep.commit()
    except BaseException:
        rep.abort()
        raise
    return n


@dataclass(frozen=True)
class RestorePlan:
    region_bytes: int
    segments_written: tuple[int, ...]   # segments whose content changes


def plan_restore(dev: BlockDevice, image: BlockDevice) -> RestorePlan:
    """Which segments of the flash region differ from the backup image (O(data of both))."""
    region = min(FLASH_REGION_BYTES, dev.size_bytes)
    if image.size_bytes != region:
        raise RefusedError(f"the flash image holds {image.size_bytes} bytes; the flash region "
                           f"of this disk is {region}",
                           hint="use a file written by `vdisk flash backup`")
    todo = sorted(set(stored_segments(dev, 0, region)) | set(stored_segments(image, 0, region)))
    changed = []
    for i in todo:
        lo = i * SEGMENT_BYTES
        n = min(SEGMENT_BYTES, region - lo)
        if dev.read_at(lo, n) != image.read_at(lo, n):
            changed.append(i)
    return RestorePlan(region, tuple(changed))


def apply_restore(dev: BlockDevice, image: BlockDevice, plan: RestorePlan) -> None:
    for i in plan.segments_written:
        lo = i * SEGMENT_BYTES
        dev.write_at(lo, image.read_at(lo, min(SEGMENT_BYTES, plan.region_bytes - lo)))
    dev.flush()


def open_flash_image(path: str) -> FileDevice:
    """A backup file: raw bytes only (a VMDK here is a mistake worth a clear error)."""
    if sniff(path) != "raw":
        raise RefusedError("the flash image is not a raw file", path=path,
                           hint="use a file written by `vdisk flash backup`")
    return FileDevice(path)


# -- factory reset ------------------------------------------------------------------------------
@dataclass(frozen=True)
class ResetPlan:
    path: str
    subformat: str
    size_bytes: int
    adapter: str
    files: tuple[str, ...]            # replaced, descriptor last
    children: tuple[str, ...]         # snapshot children that name this disk as parent
    warnings: tuple[str, ...]

    def to_dict(self) -> dict[str, object]:
        return {"path": self.path, "subformat": self.subformat, "size_bytes": self.size_bytes,
                "adapter": self.adapter, "files": list(self.files),
                "children": list(self.children), "warnings": list(self.warnings)}


_descriptor_of = read_descriptor


def find_children(disk_path: str, own_files: list[str]) -> list[str]:
    """.vmdk files in the disk's folder whose parentFileNameHint names this disk."""
    folder = os.path.dirname(os.path.abspath(disk_path))
    me = os.path.realpath(disk_path)
    own = {os.path.realpath(p) for p in own_files}
    found = []
    for cand in sorted(glob.glob(os.path.join(glob.escape(folder), "*.vmdk"))):
        if os.path.realpath(cand) in own or not os.path.isfile(cand):
            continue
        try:
            desc = _descriptor_of(cand)
        except Exception:  # noqa: BLE001,S112 - an unreadable neighbour is not our concern here
            continue
        hint = desc.get("parentFileNameHint") if desc else None
        if not hint:
            continue
        # VMware looks for the parent beside the child when the hint's path is elsewhere
        # (a moved VM, a Windows path), so the file name decides.
        if os.path.basename(hint.replace("\\", "/")) in (os.path.basename(me), os.path.basename(disk_path)):
            found.append(cand)
    return found


def plan_reset(path: str, force: bool = False, allow_outside: bool = False) -> ResetPlan:
    """Check that a reset is safe and say what it will replace. Refuses (unless force) a
    locked disk and a disk that is the parent of a snapshot child in its folder."""
    with open_image(path, allow_outside=allow_outside) as disk:
        if disk.parent is not None:
            raise UnsupportedError("this disk is a snapshot child; consolidate or delete the "
                                   "snapshot first, then reset the base disk", path=path)
        files = _replaced_files(disk)
        subformat = disk.subformat
        size = disk.size_bytes
        adapter = (disk.descriptor.get("ddb.adapterType") if disk.descriptor else None) or "ide"
    warnings = check_unlocked(files, force=force)
    children = find_children(path, files)
    if children:
        names = ", ".join(os.path.basename(c) for c in children)
        if not force:
            raise RefusedError(f"{os.path.basename(path)} is the parent of snapshot {names}: a "
                               "reset would break it", path=path,
                               hint="delete or consolidate the snapshot first, or pass --force")
        warnings.append(f"{names} will no longer match its parent (continuing because of --force)")
    return ResetPlan(os.path.abspath(path), subformat, size, adapter, tuple(files),
                     tuple(children), tuple(warnings))


def _replaced_files(disk: Disk) -> list[str]:
    """The files a reset rewrites: data extents first, descriptor last."""
    if disk.subformat in ("monolithicSparse", "streamOptimized", "raw") or disk.format == "vhdx":
        return [os.path.abspath(disk.path)]
    for e in disk.extents:
        if e.kind not in ("FLAT", "VMFS", "SPARSE", "ZERO"):
            raise UnsupportedError(f"extent type {e.kind} cannot be reset", path=disk.path)
    data = [os.path.abspath(e.path) for e in disk.extents if e.path]
    main = os.path.abspath(disk.descriptor_path or disk.path)
    return [p for p in dict.fromkeys(data) if p != main] + [main]


def apply_reset(plan: ResetPlan, backup: str | None = None, allow_outside: bool = False) -> None:
    """Replace the disk by a blank one of the same shape, crash-safely (new CID)."""
    work = os.path.join(os.path.dirname(plan.path),
                        f".{os.path.basename(plan.path)}.vdisk-tmp-{os.getpid()}.reset")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    rep = Replacement()
    try:
        with open_image(plan.path, allow_outside=allow_outside) as disk:
            _build_blank(disk, plan, work, rep)
        rep.commit(backup=backup)
    except BaseException:
        rep.abort()
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _build_blank(disk: Disk, plan: ResetPlan, work: str, rep: Replacement) -> None:
    name = os.path.basename(plan.path)
    if disk.subformat == "raw":
        tmp = os.path.join(work, name)
        with open(tmp, "wb") as f:
            platform.set_sparse(f.fileno())
            f.truncate(plan.size_bytes)
        rep.add(tmp, plan.path)
        return
    if disk.format == "vhdx":
        shape = like(disk)
        tmp = os.path.join(work, name)
        create_image(tmp, plan.size_bytes, shape["subformat"], options=shape["options"])
        rep.add(tmp, plan.path)
        return
    if disk.subformat in ("monolithicSparse", "streamOptimized", "qcow2"):
        tmp = os.path.join(work, name)
        create_image(tmp, plan.size_bytes, disk.subformat, _adapter(plan.adapter),
                     template=disk.descriptor, options=like(disk)["options"])
        rep.add(tmp, plan.path)
        return
    desc = disk.descriptor
    if desc is None:
        raise UnsupportedError("a disk without descriptor cannot be reset", path=plan.path)
    for i, ext in enumerate(disk.extents):
        if ext.path is None:
            continue                      # ZERO extent: nothing stored
        tmp = os.path.join(work, f"{i}-{os.path.basename(ext.path)}")
        if ext.kind == "SPARSE":
            open(tmp, "wb").close()
            write_sparse_extent(tmp, ext.size_bytes // 512, None, None, 0, None)
        else:
            with open(tmp, "wb") as f:   # a hole of the file's own size reads as zeros
                f.truncate(os.path.getsize(ext.path))
            fsync_path(tmp)
        rep.add(tmp, os.path.abspath(ext.path))
    fresh = vd.parse_descriptor_lines(list(desc.lines), desc.newline)
    fresh.set("CID", f"{new_cid():08x}", quoted=False)
    tmp = os.path.join(work, name)
    with open(tmp, "wb") as f:
        f.write(fresh.to_bytes())
    rep.add(tmp, plan.path)


def _adapter(adapter: str) -> str:
    from ..image.create import ADAPTERS
    if adapter not in ADAPTERS:
        raise ImageError(f"unknown adapter type {adapter!r} in the descriptor")
    return adapter
