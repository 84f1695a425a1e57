"""edit_image(): change an image crash-safely, whatever its subformat.

The image's files are copied (sparsely: cost grows with the data held) into a temporary
folder beside them, under their own names; the caller writes to that copy; on success the
copies are fsynced and renamed over the originals, data extents first and the descriptor
last. streamOptimized images are decoded into a temporary sparse copy and re-encoded.
An exception, or dry_run, leaves the original files untouched.
"""
from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from .create import create_image, like, new_cid
from .disk import Disk, open_image
from .journal import JournalledDisk, recover
from .safe import TMP_MARK, Replacement, check_unlocked, clean_leftovers_for, create_temp, sparse_copy

FLAT_SUBFORMATS = ("raw", "monolithicFlat", "vmfs", "twoGbMaxExtentFlat")


def journal_min_bytes() -> int:
    """Flat images storing at least this much are edited in place under an undo journal."""
    return int(os.environ.get("VDISK_JOURNAL_MIN_BYTES", str(64 << 20)))


def _stored_bytes(files: list[str]) -> int:
    return sum(os.stat(f).st_blocks * 512 for f in files if os.path.exists(f))


def temp_dir_for(path: str) -> str:
    folder, name = os.path.split(os.path.abspath(path))
    return os.path.join(folder, f".{name}{TMP_MARK}{os.getpid()}.d")


@contextmanager
def edit_image(path: str, *, force: bool = False, backup: str | None = None,
               dry_run: bool = False, allow_outside: bool = False, keep_cid: bool = False,
               warnings: Callable[[str], None] | None = None) -> Iterator[Disk]:
    """Yield a writable Disk over a copy of `path`; commit it on success (see module doc)."""
    with open_image(path, allow_outside=allow_outside) as probe:
        files = [os.path.abspath(f) for f in probe.files]
        sub = probe.subformat
        shape = like(probe)
        has_parent = probe.parent is not None
        fmt = probe.format   # the copy is read as the original was (-f raw included)
    check_unlocked(files, force=force)   # with force: a LockOverrideWarning
    for f in files:
        clean_leftovers_for(f)
    if recover(path) and warnings:
        warnings("an interrupted edit of this image was rolled back first")
    if sub in FLAT_SUBFORMATS and not has_parent and _stored_bytes(files) >= journal_min_bytes():
        yield from _edit_in_place(path, files, backup, dry_run, keep_cid, allow_outside)
        return
    work = temp_dir_for(path)
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    rep = Replacement()
    try:
        if sub == "streamOptimized":
            scratch = os.path.join(work, "scratch.vmdk")
            with open_image(path, allow_outside=allow_outside) as src:
                create_image(scratch, src.size_bytes, "monolithicSparse", shape["adapter"], source=src)
            disk = open_image(scratch, writable=True)
            try:
                yield disk
                disk.flush()
            finally:
                disk.close()
            if dry_run:
                return
            out = os.path.join(work, os.path.basename(path))
            with open_image(scratch) as edited:
                create_image(out, edited.size_bytes, "streamOptimized", shape["adapter"],
                             source=edited, template=shape["template"])
            rep.add(out, os.path.abspath(path))
        else:
            copies = {}
            main = os.path.abspath(path)
            for f in files:
                dst = os.path.join(work, os.path.basename(f))
                sparse_copy(f, dst)
                copies[f] = dst
            opened = copies.get(main, copies[files[0]])
            disk = _open_copy(opened, path, has_parent, allow_outside, fmt)
            try:
                yield disk
                if not keep_cid:
                    _renew_cid(disk)
                disk.flush()
            finally:
                disk.close()
            if dry_run:
                return
            ordered = [f for f in files if f != main] + ([main] if main in copies else [])
            for f in ordered:
                rep.add(copies[f], f)
        rep.commit(backup=backup)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _renew_cid(disk: Disk) -> None:
    """The content changed: give the disk a new CID, as VMware does on the first write."""
    if disk.descriptor is not None:
        disk.descriptor.set("CID", f"{new_cid():08x}", quoted=False)
        store_descriptor(disk, disk.descriptor)


def _edit_in_place(path: str, files: list[str], backup: str | None, dry_run: bool,
                   keep_cid: bool, allow_outside: bool) -> Iterator[Disk]:
    """The journalled path for big flat images (see image/journal.py)."""
    if backup and not dry_run:
        Replacement([(f, f) for f in files]).keep_backup(backup)
    disk = open_image(path, writable=not dry_run, allow_outside=allow_outside)
    jd = JournalledDisk(disk, path, dry_run=dry_run)
    try:
        yield jd  # type: ignore[misc]
        if not dry_run:
            jd.flush()
            if not keep_cid:
                _renew_cid(disk)
            jd.commit()
    finally:
        jd.close()


def _open_copy(copy_path: str, original: str, has_parent: bool, allow_outside: bool,
               fmt: str | None = None) -> Disk:
    """Open the copy; a delta's parent is still looked up beside the original."""
    if not has_parent:
        return open_image(copy_path, writable=True, allow_outside=allow_outside, format=fmt)
    return open_image(copy_path, writable=True, allow_outside=allow_outside,
                      parent_dir=os.path.dirname(os.path.abspath(original)))


def store_descriptor(disk: Disk, desc) -> None:
    """Write `desc` back where `disk` keeps its descriptor (text file, or the embedded area
    of a sparse file, NUL padded). Used on copies only: callers commit via Replacement."""
    from ..errors import RefusedError
    from .sparse import SparseExtent
    data = desc.to_bytes()
    target = disk.descriptor_path
    if target is None:
        return
    first = disk.extents[0].device if disk.extents else None
    if isinstance(first, SparseExtent) and disk.extents[0].path == target:
        h = first.header
        room = h.descriptor_sectors * 512
        if not h.descriptor_offset_sectors or len(data) > room:
            raise RefusedError("the new descriptor does not fit the embedded descriptor area",
                               path=target)
        os.pwrite(first.fd, data.ljust(room, b"\0"), h.descriptor_offset_sectors * 512)
        return
    tmp = create_temp(target)
    with open(tmp, "wb") as f:
        f.write(data)
    rep = Replacement()
    rep.add(tmp, target)
    rep.commit()
