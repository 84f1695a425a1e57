"""edit_image(): change an image crash-safely, whatever its subformat (specs/journal.md).

Every subformat but streamOptimized is edited in place, under an undo journal at host-file
level (image/journal.py, bound to image/hostio.py for the edit): the cost and the space
needed grow with the change, and the files keep their inode, owner, mode and links.
A sparse extent's uncleanShutdown byte is set for the edit and cleared at commit, as is a
qcow2 image's dirty bit when it has lazy refcounts; a dirty qcow2 gets its refcounts
rebuilt first, as qemu does on opening it for writing.
An exception rolls the edit back; dry_run writes nothing.

streamOptimized images cannot change in place (VMware's tools refuse too): they are
decoded into a temporary sparse copy beside them and re-encoded, then renamed over the
original, keeping its mode and owner.
"""
from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from ..errors import ImageError, VdiskError
from . import hostio
from .create import create_image, like, new_cid
from .disk import Disk, open_image
from .journal import UndoJournal, journal_path, recover
from .qcow2 import Qcow2Device
from .qcow2.check import refcounts_cover_references
from .qcow2.repair import rebuild_refcounts
from .safe import TMP_MARK, Replacement, check_unlocked, clean_leftovers_for, create_temp
from .vmdk.sparse import SparseExtent


def temp_dir_for(path: str) -> str:
    folder, name = os.path.split(os.path.abspath(path))
    return os.path.join(folder, f".{name}{TMP_MARK}{os.getpid()}.d")


@contextmanager
def edit_image(path: str, *, force: bool = False, backup: str | None = None,
               dry_run: bool = False, allow_outside: bool = False, keep_cid: bool = False,
               warnings: Callable[[str], None] | None = None) -> Iterator[Disk]:
    """Yield a writable Disk over `path`; commit on success, roll back on an exception."""
    try:
        probe = open_image(path, allow_outside=allow_outside)
    except VdiskError:
        if not os.path.exists(journal_path(path)):
            raise
        # metadata half written by an interrupted edit opens only once it is rolled back
        check_unlocked([os.path.abspath(path)], force=force)
        recover(path)
        probe = open_image(path, allow_outside=allow_outside)
    with probe:
        files = [os.path.abspath(f) for f in probe.files]
        sub = probe.subformat
        shape = like(probe)
    check_unlocked(files, force=force)   # with force: a LockOverrideWarning
    for f in files:
        clean_leftovers_for(f)
    if recover(path) and warnings:
        warnings("an interrupted edit of this image was rolled back first")
    if sub == "streamOptimized":
        yield from _edit_stream(path, shape, backup, dry_run, allow_outside)
    else:
        yield from _edit_in_place(path, files, backup, dry_run, keep_cid, allow_outside)


def _edit_stream(path: str, shape: dict, backup: str | None, dry_run: bool,
                 allow_outside: bool) -> Iterator[Disk]:
    """Decode into a temporary sparse copy, let the caller edit it, re-encode, rename."""
    work = temp_dir_for(path)
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    try:
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
        rep = Replacement()
        rep.add(out, os.path.abspath(path))
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
    """The journalled path: every write of the edit goes through the undo journal."""
    if backup and not dry_run:
        Replacement([(f, f) for f in files]).keep_backup(backup)
    disk = open_image(path, writable=True, allow_outside=allow_outside)
    journal: UndoJournal | None = None
    try:
        journal = UndoJournal(path, files, dry_run=dry_run)
        hostio.bind(journal)
        sparse = flagged_devices(disk)
        for dev in sparse:
            if isinstance(dev, Qcow2Device):
                if dev.meta.dirty:
                    rebuild_refcounts(dev)   # as qemu does when it opens a dirty image to write
                    dev.refs.reuse = True
                else:   # free clusters are reused only where the refcounts can be trusted
                    dev.refs.reuse = refcounts_cover_references(dev)
        for ext in sparse:
            ext.mark_in_use(True)
        journal.flush()          # the journal exists and the flag is set before any change
        yield disk
        if not dry_run:
            if not keep_cid:
                _renew_cid(disk)
            for ext in sparse:
                ext.mark_in_use(False)
            journal.commit()
    except BaseException as exc:
        if journal is not None:
            journal.abort()
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT) \
                and journal is not None:
            raise _no_space(journal, exc) from None
        raise
    finally:
        if journal is not None:
            hostio.unbind(journal)
            journal.close()
        disk.close()


def flagged_devices(disk: Disk) -> list[SparseExtent | Qcow2Device]:
    """The devices whose in-use flag an edit sets and clears: a sparse extent's
    uncleanShutdown byte, a qcow2 image's dirty bit (with lazy refcounts, as qemu sets it)."""
    return [e.device for e in disk.extents if isinstance(e.device, (SparseExtent, Qcow2Device))]


def _no_space(journal: UndoJournal, exc: OSError) -> ImageError:
    """One line for a full file system: which file, what the edit needed, what is free."""
    where = journal.current
    try:
        st = os.statvfs(os.path.dirname(os.path.abspath(where)))
        free = st.f_bavail * st.f_frsize
    except OSError:
        free = 0
    what = "quota exceeded" if exc.errno == errno.EDQUOT else "no space left on device"
    return ImageError(f"{what} while writing {os.path.basename(where)}: the edit needed at "
                      f"least {journal.bytes_needed()} bytes, {free} bytes are free; the edit "
                      "was rolled back, the image is unchanged", path=where)


def store_descriptor(disk: Disk, desc) -> None:
    """Write `desc` back where `disk` keeps its descriptor (text file, or the embedded area
    of a sparse file, NUL padded): in place during an edit (under its journal), else as a
    new file renamed over the old one."""
    from ..errors import RefusedError
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
        hostio.pwrite(first.fd, data.ljust(room, b"\0"), h.descriptor_offset_sectors * 512)
        return
    fd = hostio.fd_for(target)
    if fd is not None:
        hostio.pwrite(fd, data, 0)
        hostio.ftruncate(fd, len(data))
        return
    tmp = create_temp(target)
    with open(tmp, "wb") as f:
        f.write(data)
    rep = Replacement()
    rep.add(tmp, target)
    rep.commit()
