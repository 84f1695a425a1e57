"""Test instrumentation for child `python -m vdisk_tool` runs (never part of the package).

tests/powerloss.py puts this folder first on the child's PYTHONPATH. Two independent knobs:

- VDISK_POWERLOSS_ROOT=FOLDER and VDISK_POWERLOSS_LOG=FILE: record, in order, every
  file-system mutation the process makes inside FOLDER (the folder itself included):
  opens (with whether they created or truncated the file, and the inode), os.write,
  os.pwrite, os.pwritev, writes of file objects (at the raw level, i.e. when the bytes
  really reach the kernel), os.ftruncate/os.truncate and file-object truncates, os.fsync
  and os.fdatasync (of files and of folders), rename/replace, unlink/remove, mkdir, rmdir.
  os.copy_file_range is made to fail with ENOSYS, so copies take the recorded pwrite path.
  Each record is one JSON line, followed by the bytes written when it has any.
- VDISK_TEST_SETATTR="pkg.module.NAME=INT[;...]": set module constants before the command
  runs (e.g. a smaller journal batch, so that a small edit spans several batches).
"""
from __future__ import annotations

import builtins
import errno
import importlib
import io
import json
import os
import stat


def _setattrs(spec: str) -> None:
    for item in filter(None, (s.strip() for s in spec.split(";"))):
        target, value = item.split("=", 1)
        module, name = target.rsplit(".", 1)
        setattr(importlib.import_module(module), name, int(value, 0))


class _Recorder:
    """Wraps the os functions and open(); keeps fd -> (path relative to root, inode, is_dir)."""

    def __init__(self, root: str, log: str) -> None:
        self.root = os.path.realpath(root)
        self.real = {n: getattr(os, n) for n in (
            "open", "close", "write", "pwrite", "pwritev", "ftruncate", "truncate", "fsync",
            "fdatasync", "rename", "replace", "unlink", "remove", "mkdir", "rmdir")}
        self.real_open = builtins.open
        self.log_fd = self.real["open"](log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self.fds: dict[int, tuple[str, int, bool]] = {}

    # -- helpers ------------------------------------------------------------------------
    def emit(self, op: str, data: bytes = b"", **fields) -> None:
        head = json.dumps({"op": op, "n": len(data), **fields}).encode() + b"\n"
        self.real["write"](self.log_fd, head + data)

    def rel(self, path, dir_fd=None) -> str | None:
        if isinstance(path, int):
            return None
        p = os.fsdecode(path)
        if dir_fd is not None and not os.path.isabs(p):
            base = self.fds.get(dir_fd)
            if base is None:
                return None
            p = os.path.join(self.root, base[0], p)
        ap = os.path.abspath(p)
        ap = os.path.join(os.path.realpath(os.path.dirname(ap)), os.path.basename(ap))
        if ap == self.root or os.path.realpath(ap) == self.root:
            return "."
        if ap.startswith(self.root + os.sep):
            return os.path.normpath(ap[len(self.root) + 1:])
        return None

    def opened(self, fd: int, rel: str, created: bool, trunc: bool) -> None:
        st = os.fstat(fd)
        isdir = stat.S_ISDIR(st.st_mode)
        self.fds[fd] = (rel, st.st_ino, isdir)
        self.emit("open", path=rel, ino=st.st_ino, dir=isdir, created=created, trunc=trunc)

    def file(self, fd) -> tuple[str, int, bool] | None:
        if not isinstance(fd, int) and hasattr(fd, "fileno"):
            fd = fd.fileno()
        return self.fds.get(fd)

    def exists(self, path, dir_fd=None) -> bool:
        try:
            os.stat(path, dir_fd=dir_fd, follow_symlinks=False)
            return True
        except (OSError, NotImplementedError):
            return False

    # -- the wrappers ---------------------------------------------------------------------
    def install(self) -> None:
        rec, real = self, self.real

        def open_(path, flags, mode=0o777, *, dir_fd=None):
            rel = rec.rel(path, dir_fd)
            if rel is None:
                return real["open"](path, flags, mode, dir_fd=dir_fd)
            existed = rec.exists(path, dir_fd)
            fd = real["open"](path, flags, mode, dir_fd=dir_fd)
            rec.opened(fd, rel, created=not existed, trunc=bool(flags & os.O_TRUNC) and existed)
            return fd

        def close(fd):
            rec.fds.pop(fd, None)
            return real["close"](fd)

        def write(fd, data):
            f = rec.fds.get(fd)
            if f is None or f[2]:
                return real["write"](fd, data)
            pos = os.lseek(fd, 0, os.SEEK_CUR)
            n = real["write"](fd, data)
            rec.emit("write", bytes(memoryview(data)[:n]), ino=f[1], off=pos)
            return n

        def pwrite(fd, data, offset):
            n = real["pwrite"](fd, data, offset)
            f = rec.fds.get(fd)
            if f is not None:
                rec.emit("write", bytes(memoryview(data)[:n]), ino=f[1], off=offset)
            return n

        def pwritev(fd, buffers, offset, *flags):
            buffers = list(buffers)
            n = real["pwritev"](fd, buffers, offset, *flags)
            f = rec.fds.get(fd)
            if f is not None:
                rec.emit("write", b"".join(bytes(b) for b in buffers)[:n], ino=f[1], off=offset)
            return n

        def ftruncate(fd, length):
            real["ftruncate"](fd, length)
            f = rec.fds.get(fd)
            if f is not None:
                rec.emit("truncate", ino=f[1], length=length)

        def truncate(path, length):
            if isinstance(path, int):
                return ftruncate(path, length)
            real["truncate"](path, length)
            rel = rec.rel(path)
            if rel is not None:
                rec.emit("truncate", path=rel, length=length)

        def syncer(name):
            def sync(fd):
                real[name](fd)
                f = rec.file(fd)
                if f is not None:
                    rec.emit("fsync", ino=f[1], dir=f[2], path=f[0])
            return sync

        def mover(name):
            def move(src, dst, *, src_dir_fd=None, dst_dir_fd=None):
                s, d = rec.rel(src, src_dir_fd), rec.rel(dst, dst_dir_fd)
                real[name](src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)
                if s is not None or d is not None:
                    rec.emit("rename", src=s, dst=d)
            return move

        def path_op(name, op):
            def do(path, *args, dir_fd=None, **kw):
                rel = rec.rel(path, dir_fd)
                real[name](path, *args, dir_fd=dir_fd, **kw)
                if rel is not None:
                    rec.emit(op, path=rel)
            return do

        for name, fn in (("open", open_), ("close", close), ("write", write), ("pwrite", pwrite),
                         ("pwritev", pwritev), ("ftruncate", ftruncate), ("truncate", truncate),
                         ("fsync", syncer("fsync")), ("fdatasync", syncer("fdatasync")),
                         ("rename", mover("rename")), ("replace", mover("replace")),
                         ("unlink", path_op("unlink", "unlink")),
                         ("remove", path_op("remove", "unlink")),
                         ("mkdir", path_op("mkdir", "mkdir")), ("rmdir", path_op("rmdir", "rmdir"))):
            setattr(os, name, fn)

        def copy_file_range(*args, **kw):
            # the kernel's copies would pass unrecorded: vdisk then copies with pread/pwrite
            raise OSError(errno.ENOSYS, "copy_file_range is off while recording")

        os.copy_file_range = copy_file_range  # type: ignore[attr-defined]
        builtins.open = io.open = self.open_file  # type: ignore[assignment]

    # -- file objects: a recording raw FileIO under the usual buffered/text layers -----------
    def open_file(self, file, mode="r", buffering=-1, encoding=None, errors=None, newline=None,
                  closefd=True, opener=None):
        rel = None if isinstance(file, int) else self.rel(file)
        if rel is None:
            return self.real_open(file, mode, buffering, encoding, errors, newline, closefd, opener)
        existed = self.exists(file)
        raw = _RecordingFileIO(self, file, "".join(c for c in mode if c in "rwxa+"), closefd, opener)
        if raw.fileno() not in self.fds:
            self.opened(raw.fileno(), rel, created=not existed, trunc="w" in mode and existed)
        binary = "b" in mode
        line = buffering == 1 and not binary
        if buffering == 0:
            return raw
        size = buffering if buffering > 1 else io.DEFAULT_BUFFER_SIZE
        if "+" in mode:
            buf = io.BufferedRandom(raw, size)
        elif any(c in mode for c in "wxa"):
            buf = io.BufferedWriter(raw, size)
        else:
            buf = io.BufferedReader(raw, size)
        if binary:
            return buf
        text = io.TextIOWrapper(buf, encoding, errors, newline, line)
        text.mode = mode
        return text


class _RecordingFileIO(io.FileIO):
    """The raw layer of a file object: records the bytes when they really reach the kernel."""

    def __init__(self, rec: _Recorder, file, mode: str, closefd: bool, opener) -> None:
        super().__init__(file, mode, closefd, opener)
        self._rec = rec
        self._ino = os.fstat(self.fileno()).st_ino

    def write(self, b):
        pos = os.lseek(self.fileno(), 0, os.SEEK_END if "a" in self.mode else os.SEEK_CUR)
        n = super().write(b)
        if n:
            self._rec.emit("write", bytes(memoryview(b)[:n]), ino=self._ino, off=pos)
        return n

    def truncate(self, size=None):
        size = self.tell() if size is None else size
        r = super().truncate(size)
        self._rec.emit("truncate", ino=self._ino, length=size)
        return r

    def close(self):
        if not self.closed:
            self._rec.fds.pop(self.fileno(), None)
        super().close()


if os.environ.get("VDISK_TEST_SETATTR"):
    _setattrs(os.environ["VDISK_TEST_SETATTR"])
if os.environ.get("VDISK_POWERLOSS_ROOT") and os.environ.get("VDISK_POWERLOSS_LOG"):
    _Recorder(os.environ["VDISK_POWERLOSS_ROOT"], os.environ["VDISK_POWERLOSS_LOG"]).install()
