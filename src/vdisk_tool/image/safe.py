"""Crash-safe mutation: lock detection, leftovers of interrupted runs, and the rewrite path.

Edits of an existing disk happen in place under an undo journal (image/journal.py). What
cannot be edited in place (a streamOptimized disk) and what builds a new file is written
complete beside the target, fsynced, given the old file's mode and owner, renamed over it
(POSIX rename is atomic; on Windows the rename is written through) and the folder is
fsynced where the OS allows it (image/platform.py).
"""
from __future__ import annotations

import glob
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field

from ..errors import ImageError, LockedError
from . import platform
from .backup import check_backup_target
from .base import copy_data, host_data_ranges

TMP_MARK = ".vdisk-tmp-"
GROW_JOURNAL_SUFFIX = ".vdisk-journal"   # the record of an in-progress flat grow (image/grow.py)
EDIT_JOURNAL_SUFFIX = ".vdisk-journal-edit"   # the undo journal of an edit (image/journal.py)


def sidecar_path(path: str, suffix: str) -> str:
    """The hidden file beside `path` that a journal with `suffix` lives in."""
    folder, name = os.path.split(os.path.abspath(path))
    return os.path.join(folder, f".{name}{suffix}")


class LockOverrideWarning(UserWarning):
    """A VMware lock was overridden with --force (the CLI prints it as a warning line)."""


class LeftoverWarning(UserWarning):
    """Files an interrupted vdisk run left behind were found (and removed)."""


def _vmx_names(folder: str) -> list[str]:
    return sorted(glob.glob(os.path.join(glob.escape(folder), "*.vmx")))


def _vmx_mentions(vmx: str, name: str) -> bool:
    try:
        with open(vmx, "rb") as f:
            return name.encode("utf-8", "replace").lower() in f.read(1 << 20).lower()
    except OSError:
        return False


def lock_paths(path: str) -> list[str]:
    """VMware lock artefacts that belong to `path`: `<file>.lck` folders or files, ESXi's
    `.lck-*` files in the same folder, the lock of a vmx in the folder that attaches the
    disk, and for a vmx, the locks of the disks beside it (a running VM holds them all)."""
    found = []
    if os.path.lexists(path + ".lck"):
        found.append(path + ".lck")
    folder = os.path.dirname(os.path.abspath(path))
    found.extend(sorted(glob.glob(os.path.join(glob.escape(folder), ".lck-*"))))
    name = os.path.basename(path)
    if name.lower().endswith(".vmx"):
        found.extend(sorted(glob.glob(os.path.join(glob.escape(folder), "*.vmdk.lck"))))
    else:
        for vmx in _vmx_names(folder):
            if os.path.lexists(vmx + ".lck") and _vmx_mentions(vmx, name):
                found.append(vmx + ".lck")
    return list(dict.fromkeys(found))


def check_unlocked(paths: Iterable[str], force: bool = False) -> list[str]:
    """Raise LockedError when any path is held by VMware. With force, warn (a
    LockOverrideWarning, which the CLI prints) and return the warnings."""
    import warnings as _warnings
    out = []
    for path in paths:
        locks = lock_paths(path)
        if locks:
            msg = f"{os.path.basename(path)} is in use by VMware ({os.path.basename(locks[0])} exists)"
            if not force:
                raise LockedError(msg, path=path,
                                  hint="power off the VM first, or pass --force if the lock is stale")
            msg += "; continuing because of --force"
            out.append(msg)
            _warnings.warn(msg, LockOverrideWarning, stacklevel=2)
    return out


def temp_path_for(target: str) -> str:
    folder, name = os.path.split(os.path.abspath(target))
    return os.path.join(folder, f".{name}{TMP_MARK}{os.getpid()}")


def create_temp(target: str) -> str:
    """Create an empty temporary file beside `target`, safely (O_EXCL, never a symlink)."""
    tmp = temp_path_for(target)
    if os.path.lexists(tmp):
        os.unlink(tmp)
    fd = platform.open_fd(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, nofollow=True)
    os.close(fd)
    return tmp


def leftover_temps(folder: str) -> list[str]:
    """Temporary files an interrupted vdisk run left behind (reported, then cleaned)."""
    return sorted(glob.glob(os.path.join(glob.escape(folder), f".*{TMP_MARK}*")))


def leftovers_of(path: str) -> list[str]:
    """The temporary files and folders an interrupted run (its owner no longer running)
    left beside `path`: `.<name>.vdisk-tmp-<pid>...`."""
    folder, name = os.path.split(os.path.abspath(path))
    return [t for t in leftover_temps(folder)
            if os.path.basename(t).startswith(f".{name}{TMP_MARK}") and not _owner_alive(t)]


def removal_command(tmp: str) -> str:
    """The shell command that removes a leftover as it is (`rm -r` for a folder;
    PowerShell's Remove-Item on Windows)."""
    return platform.removal_command(tmp)


def _owner_alive(tmp: str) -> bool:
    """True when the process whose pid the temporary name carries is still running."""
    tail = tmp.rsplit(TMP_MARK, 1)[-1].split(".")[0]
    if not tail.isdigit() or int(tail) == os.getpid():
        return False
    return platform.pid_alive(int(tail))


def clean_leftovers_for(path: str) -> list[str]:
    """Remove the temporary files and folders an interrupted run left beside `path`
    (`.<name>.vdisk-tmp-<pid>...`, owner no longer running); warn and return them."""
    import shutil
    import warnings as _warnings
    folder, name = os.path.split(os.path.abspath(path))
    gone = []
    for tmp in sorted(glob.glob(os.path.join(glob.escape(folder), f".{glob.escape(name)}{TMP_MARK}*"))):
        if _owner_alive(tmp):
            continue
        if os.path.isdir(tmp) and not os.path.islink(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            try:
                os.unlink(tmp)
            except OSError:
                continue
        gone.append(tmp)
    if gone:
        _warnings.warn(f"removed {len(gone)} leftover(s) of an interrupted run: "
                       + ", ".join(os.path.basename(g) for g in gone), LeftoverWarning, stacklevel=2)
    return gone


fsync_path = platform.fsync_path
fsync_dir = platform.fsync_dir


def sparse_copy(src: str, dst: str, progress=None) -> None:
    """Copy src to dst keeping holes: cost grows with the data the file holds."""
    with open(src, "rb") as fi, open(dst, "r+b" if os.path.exists(dst) else "wb") as fo:
        size = os.fstat(fi.fileno()).st_size
        fo.truncate(0)
        platform.set_sparse(fo.fileno())
        fo.truncate(size)
        done = 0
        for start, length in host_data_ranges(fi.fileno(), 0, size):
            copy_data(fi.fileno(), start, fo.fileno(), start, length, src,
                      progress and (lambda n, base=done: progress(base + n, size)))
            done += length
        fo.flush()
        platform.fsync(fo.fileno())


def keep_identity(old: str, new: str) -> None:
    """Give `new` the mode, owner and group of `old` (when it exists), as `sed -i` and
    qemu-img do for the file they replace. An owner this process may not set is skipped
    (the group alone is tried), as cp -p does."""
    try:
        st = os.stat(old)
    except FileNotFoundError:
        return
    os.chmod(new, stat.S_IMODE(st.st_mode))
    if hasattr(os, "chown") and (st.st_uid, st.st_gid) != (os.stat(new).st_uid, os.stat(new).st_gid):
        try:
            os.chown(new, st.st_uid, st.st_gid)
        except PermissionError:
            try:
                os.chown(new, -1, st.st_gid)
            except PermissionError:
                pass
        os.chmod(new, stat.S_IMODE(st.st_mode))   # chown may clear set-id bits


@dataclass
class Replacement:
    """A set of new files to put in place of old ones, all or nothing as far as POSIX allows.

    Files are renamed in the order given: callers list data extents first and the descriptor
    last, so that a crash in between leaves the old descriptor naming intact old extents
    or fully written new ones.
    """

    pairs: list[tuple[str, str]] = field(default_factory=list)  # (temp, target)

    def add(self, tmp: str, target: str) -> None:
        self.pairs.append((tmp, target))

    def commit(self, backup: str | None = None) -> None:
        for tmp, _ in self.pairs:
            fsync_path(tmp)
        if backup:
            _keep_backup([t for _, t in self.pairs], backup)
        for tmp, target in self.pairs:
            if os.path.islink(target):
                raise ImageError("refusing to replace a symbolic link", path=target)
            keep_identity(target, tmp)
            platform.replace(tmp, target)
        for _, target in self.pairs[:1]:
            fsync_dir(target)

    def keep_backup(self, backup: str) -> None:
        _keep_backup([t for _, t in self.pairs], backup)

    def abort(self) -> None:
        for tmp, _ in self.pairs:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass


def _keep_backup(targets: list[str], backup: str) -> None:
    """Copy the current files to `backup` (a file name for one file, a folder for several)."""
    check_backup_target(backup, targets)
    existing = [t for t in targets if os.path.exists(t)]
    if len(existing) == 1 and not os.path.isdir(backup):
        sparse_copy(existing[0], backup)
        return
    os.makedirs(backup, exist_ok=True)
    for t in existing:
        sparse_copy(t, os.path.join(backup, os.path.basename(t)))
