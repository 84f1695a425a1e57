"""The Windows calls of image/platform.py, through ctypes (specs/platform.md).

Imported only when the host is Windows; importing it elsewhere is harmless (nothing is
loaded until a function runs). Each function raises OSError with the Windows error code
(`winerror`) when the call fails, so platform.py can fall back or explain.
"""
from __future__ import annotations

import ctypes
from collections.abc import Iterator
from typing import Any

FSCTL_SET_SPARSE = 0x000900C4              # CTL_CODE(FILE_DEVICE_FILE_SYSTEM, 49, BUFFERED, ANY)
FSCTL_QUERY_ALLOCATED_RANGES = 0x000940CF  # CTL_CODE(FILE_DEVICE_FILE_SYSTEM, 51, NEITHER, READ)
MOVEFILE_REPLACE_EXISTING = 0x1
MOVEFILE_WRITE_THROUGH = 0x8
PROCESS_QUERY_LIMITED_INFORMATION = 0x1000
STILL_ACTIVE = 259
ERROR_ACCESS_DENIED = 5
ERROR_INVALID_PARAMETER = 87
ERROR_MORE_DATA = 234
GENERIC_READ = 0x80000000
GENERIC_WRITE = 0x40000000
FILE_SHARE_READ_WRITE = 0x1 | 0x2
OPEN_EXISTING = 3
FILE_ATTRIBUTE_NORMAL = 0x80
RANGES_PER_CALL = 64

_HANDLE = ctypes.c_void_p
_DWORD = ctypes.c_uint32
INVALID_HANDLE = ctypes.c_void_p(-1).value


class _Range(ctypes.Structure):
    """FILE_ALLOCATED_RANGE_BUFFER: FileOffset and Length, both LARGE_INTEGER."""

    _fields_ = [("offset", ctypes.c_int64), ("length", ctypes.c_int64)]


def _kernel32() -> Any:
    k32 = ctypes.WinDLL("kernel32", use_last_error=True)  # type: ignore[attr-defined]
    k32.DeviceIoControl.argtypes = [_HANDLE, _DWORD, ctypes.c_void_p, _DWORD, ctypes.c_void_p,
                                    _DWORD, ctypes.POINTER(_DWORD), ctypes.c_void_p]
    k32.MoveFileExW.argtypes = [ctypes.c_wchar_p, ctypes.c_wchar_p, _DWORD]
    k32.OpenProcess.argtypes = [_DWORD, ctypes.c_int, _DWORD]
    k32.OpenProcess.restype = _HANDLE
    k32.GetExitCodeProcess.argtypes = [_HANDLE, ctypes.POINTER(_DWORD)]
    k32.CloseHandle.argtypes = [_HANDLE]
    k32.CreateFileW.argtypes = [ctypes.c_wchar_p, _DWORD, _DWORD, ctypes.c_void_p, _DWORD,
                                _DWORD, _HANDLE]
    k32.CreateFileW.restype = _HANDLE
    return k32


def _error(what: str, filename: str | None = None, filename2: str | None = None) -> OSError:
    code = ctypes.get_last_error()  # type: ignore[attr-defined]
    exc = ctypes.WinError(code)  # type: ignore[attr-defined]
    exc.filename, exc.filename2 = filename, filename2
    exc.strerror = f"{what}: {exc.strerror}"
    return exc


def _handle(fd: int) -> int:
    import msvcrt
    return msvcrt.get_osfhandle(fd)  # type: ignore[attr-defined,no-any-return]


def set_sparse(fd: int) -> None:
    """Mark the file sparse (NTFS, ReFS): zeros past the data are not given clusters."""
    done = _DWORD()
    if not _kernel32().DeviceIoControl(_handle(fd), FSCTL_SET_SPARSE, None, 0, None, 0,
                                       ctypes.byref(done), None):
        raise _error("FSCTL_SET_SPARSE")


def allocated_ranges(fd: int, start: int, end: int) -> Iterator[tuple[int, int]]:
    """(offset, length) of the allocated ranges of [start, end), as the file system keeps
    them (FSCTL_QUERY_ALLOCATED_RANGES, asked again from the last range on ERROR_MORE_DATA)."""
    k32, handle = _kernel32(), _handle(fd)
    out = (_Range * RANGES_PER_CALL)()
    pos = start
    while pos < end:
        query = _Range(pos, end - pos)
        got = _DWORD()
        ok = k32.DeviceIoControl(handle, FSCTL_QUERY_ALLOCATED_RANGES, ctypes.byref(query),
                                 ctypes.sizeof(query), out, ctypes.sizeof(out),
                                 ctypes.byref(got), None)
        if not ok and ctypes.get_last_error() != ERROR_MORE_DATA:  # type: ignore[attr-defined]
            raise _error("FSCTL_QUERY_ALLOCATED_RANGES")
        n = got.value // ctypes.sizeof(_Range)
        for r in out[:n]:
            lo, hi = max(r.offset, pos), min(r.offset + r.length, end)
            if hi > lo:
                yield lo, hi - lo
        if ok or n == 0:
            return
        pos = out[n - 1].offset + out[n - 1].length


def replace(src: str, dst: str) -> None:
    """Rename src over dst, returning only when the rename is on disk (MOVEFILE_WRITE_THROUGH)."""
    import os
    flags = MOVEFILE_WRITE_THROUGH | (0 if os.path.isdir(src) else MOVEFILE_REPLACE_EXISTING)
    if not _kernel32().MoveFileExW(src, dst, flags):
        raise _error("MoveFileExW", src, dst)


def volume_path(path: str) -> str:
    """`path` through its volume's GUID name (\\\\?\\Volume{...}\\rest): GetVolumePathNameW
    gives the mount point, GetVolumeNameForVolumeMountPointW the volume's name."""
    k32 = _kernel32()
    k32.GetVolumePathNameW.argtypes = [ctypes.c_wchar_p, ctypes.c_wchar_p, _DWORD]
    k32.GetVolumeNameForVolumeMountPointW.argtypes = [ctypes.c_wchar_p, ctypes.c_wchar_p, _DWORD]
    mount = ctypes.create_unicode_buffer(1024)
    if not k32.GetVolumePathNameW(path, mount, len(mount)):
        raise _error("GetVolumePathNameW", path)
    name = ctypes.create_unicode_buffer(64)
    if not k32.GetVolumeNameForVolumeMountPointW(mount.value, name, len(name)):
        raise _error("GetVolumeNameForVolumeMountPointW", mount.value)
    return name.value.rstrip("\\") + "\\" + path[len(mount.value):].lstrip("\\")


def pid_alive(pid: int) -> bool:
    """Whether process `pid` is still running (os.kill would end it on Windows)."""
    k32 = _kernel32()
    handle = k32.OpenProcess(PROCESS_QUERY_LIMITED_INFORMATION, 0, pid)
    if not handle:
        return ctypes.get_last_error() == ERROR_ACCESS_DENIED  # type: ignore[attr-defined]
    try:
        code = _DWORD()
        return bool(k32.GetExitCodeProcess(handle, ctypes.byref(code))) and code.value == STILL_ACTIVE
    finally:
        k32.CloseHandle(handle)


def open_error(path: str, writable: bool) -> int:
    """The Windows error code opening `path` gives (0 when it opens): os.open reports only
    EACCES, which hides a sharing violation (another program holds the file open)."""
    k32 = _kernel32()
    access = GENERIC_READ | (GENERIC_WRITE if writable else 0)
    handle = k32.CreateFileW(path, access, FILE_SHARE_READ_WRITE, None, OPEN_EXISTING,
                             FILE_ATTRIBUTE_NORMAL, None)
    if handle is None or handle == INVALID_HANDLE:
        return int(ctypes.get_last_error())  # type: ignore[attr-defined]
    k32.CloseHandle(handle)
    return 0
