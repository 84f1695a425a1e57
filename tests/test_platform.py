"""image/platform.py: the one module that knows the host OS.

- Only it calls the POSIX-only or OS-specific functions (an AST scan of src/).
- Its fallback paths (what Windows uses) give the same bytes as the POSIX ones: positional
  I/O by seek + read/write under a lock, allocated ranges by zero detection, no folder fsync.
- Its Windows paths call the Windows functions in the right order (a fake _win32 module
  stands in for ctypes: what kernel32 itself does cannot be proven on Linux).
"""
from __future__ import annotations

import ast
import dataclasses
import errno
import os
import threading
from pathlib import Path

import pytest

from vdisk_tool.image import _win32, hostio, platform

SRC = Path(__file__).resolve().parent.parent / "src" / "vdisk_tool"
OWNERS = {"image/platform.py", "image/_win32.py",
          "_crashpoints.py"}   # test instrumentation: kills itself with SIGKILL
# os attributes only the platform module may touch, and modules only it may import
FORBIDDEN_OS = {"pread", "pwrite", "preadv", "pwritev", "open", "fsync", "fdatasync", "replace",
                "rename", "renames", "truncate", "kill", "O_DIRECTORY", "SEEK_DATA", "SEEK_HOLE",
                "posix_fallocate", "copy_file_range"}
FORBIDDEN_MODULES = {"fcntl", "msvcrt", "ctypes", "winreg", "_winapi", "termios"}


def _offences(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                and node.value.id == "os" and node.attr in FORBIDDEN_OS:
            out.append(f"{node.lineno}: os.{node.attr}")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
                and node.func.id in ("getattr", "hasattr") and len(node.args) > 1 \
                and isinstance(node.args[0], ast.Name) and node.args[0].id == "os" \
                and isinstance(node.args[1], ast.Constant) and node.args[1].value in FORBIDDEN_OS:
            out.append(f"{node.lineno}: {node.func.id}(os, {node.args[1].value!r})")
        elif isinstance(node, ast.Import):
            out += [f"{node.lineno}: import {a.name}" for a in node.names
                    if a.name.split(".")[0] in FORBIDDEN_MODULES]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module \
                and (node.module.split(".")[0] in FORBIDDEN_MODULES
                     or (node.module == "os" and {a.name for a in node.names} & FORBIDDEN_OS)):
            out.append(f"{node.lineno}: from {node.module} import ...")
    return out


def test_only_the_platform_module_calls_the_os_specific_functions() -> None:
    found = {}
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        if rel in OWNERS:
            continue
        bad = _offences(path)
        if bad:
            found[rel] = bad
    assert not found, found


def test_the_scan_finds_what_it_forbids(tmp_path: Path) -> None:
    """The scan itself can fail: each forbidden form in a sample file is reported."""
    sample = tmp_path / "m.py"
    sample.write_text("import os, fcntl\nfrom os import pread\nos.pwrite(1, b'', 0)\n"
                      "os.lseek(3, 0, os.SEEK_DATA)\nos.replace('a', 'b')\n"
                      "x = getattr(os, 'O_DIRECTORY', 0)\nos.fsync(4)\nimport ctypes.util\n")
    got = _offences(sample)
    for want in ("import fcntl", "from os import", "os.pwrite", "os.SEEK_DATA", "os.replace",
                 "getattr(os, 'O_DIRECTORY')", "os.fsync", "import ctypes.util"):
        assert any(want in g for g in got), (want, got)


# -- the fallback paths --------------------------------------------------------------------------
@pytest.fixture
def fallback(monkeypatch: pytest.MonkeyPatch) -> platform.Features:
    feats = platform.detect({platform.FALLBACK_ENV: "1"})
    monkeypatch.setattr(platform, "FEATURES", feats)
    return feats


def test_the_switch_turns_every_posix_path_off() -> None:
    f = platform.detect({platform.FALLBACK_ENV: "1"})
    assert (f.positional, f.seek_data, f.dir_fsync, f.fallback) == (False, False, False, True)
    assert not f.writeback and not f.copy_file_range
    if os.name != "nt":
        n = platform.detect({})
        assert n.positional and n.seek_data and n.dir_fsync and not n.fallback


def test_fallback_positional_io_matches_pread_pwrite(tmp_path: Path, fallback,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    for name in ("pread", "pwrite", "preadv"):
        monkeypatch.setattr(os, name, lambda *a, _n=name: calls.append(_n))
    p = tmp_path / "f"
    p.write_bytes(bytes(range(256)) * 64)
    fd = platform.open_fd(str(p), os.O_RDWR)
    try:
        assert platform.pread(fd, 10, 250) == bytes([250, 251, 252, 253, 254, 255, 0, 1, 2, 3])
        assert platform.pread(fd, 100, len(bytes(256)) * 64 - 4) == bytes([252, 253, 254, 255])
        assert platform.pwrite(fd, memoryview(b"xyz"), 5000) == 3
        buf = memoryview(bytearray(6))
        assert platform.preadinto(fd, buf, 4998) == 6
        assert bytes(buf) == bytes([4998 % 256, 4999 % 256]) + b"xyz" + bytes([5003 % 256])
        assert hostio.pread(fd, 3, 5000) == b"xyz"
    finally:
        os.close(fd)
    assert not calls, calls


def test_fallback_io_from_threads_lands_where_asked(tmp_path: Path, fallback) -> None:
    """seek + write is not atomic: the per-descriptor lock keeps threads from mixing them."""
    p = tmp_path / "f"
    p.write_bytes(bytes(64 * 4096))
    fd = platform.open_fd(str(p), os.O_RDWR)

    def work(k: int) -> None:
        for i in range(k, 64, 4):
            platform.pwrite(fd, bytes([i]) * 4096, i * 4096)
            assert platform.pread(fd, 4096, ((i + 1) % 64) * 4096) in (
                bytes(4096), bytes([(i + 1) % 64]) * 4096)

    try:
        threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        os.close(fd)
    data = p.read_bytes()
    assert all(data[i * 4096:(i + 1) * 4096] == bytes([i]) * 4096 for i in range(64))


def test_fallback_ranges_are_the_blocks_that_hold_data(tmp_path: Path, fallback) -> None:
    p = tmp_path / "f"
    with open(p, "wb") as f:
        f.truncate(3 << 20)
        f.seek(4096 * 3 + 7)
        f.write(b"\1")
        f.seek((1 << 20) - 10)          # a run across the scan boundary
        f.write(b"\2" * 20)
        f.seek((3 << 20) - 1)
        f.write(b"\3")
    fd = os.open(p, os.O_RDONLY)
    try:
        got = list(platform.data_ranges(fd, 0, 3 << 20))
        inner = list(platform.data_ranges(fd, 4096, 4096 * 3))
    finally:
        os.close(fd)
    assert got == [(4096 * 3, 4096), ((1 << 20) - 4096, 8192), ((3 << 20) - 4096, 4096)]
    assert inner == []


def test_fallback_syncs_no_folder_and_replaces_without_it(tmp_path: Path, fallback,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real(fd)))
    (tmp_path / "a").write_bytes(b"new")
    (tmp_path / "b").write_bytes(b"old")
    platform.fsync_dir(str(tmp_path / "a"))
    platform.fsync_path(str(tmp_path))
    assert synced == []
    platform.replace(str(tmp_path / "a"), str(tmp_path / "b"))
    assert (tmp_path / "b").read_bytes() == b"new" and not (tmp_path / "a").exists()
    platform.fsync_path(str(tmp_path / "b"))
    assert len(synced) == 1


def test_posix_folder_sync_happens(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if os.name == "nt":
        pytest.skip("folders cannot be fsynced on Windows")
    monkeypatch.setattr(platform, "FEATURES", platform.detect({}))
    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real(fd)))
    platform.fsync_dir(str(tmp_path / "x"))
    assert len(synced) == 1


# -- the Windows paths, against a stand-in for kernel32 ------------------------------------------
class FakeWin32:
    def __init__(self) -> None:
        self.log: list[tuple] = []
        self.ranges_error: OSError | None = None
        self.open_code = 0

    def set_sparse(self, fd: int) -> None:
        self.log.append(("sparse", os.fstat(fd).st_size))

    def allocated_ranges(self, fd: int, start: int, end: int):
        yield start, 4096
        if self.ranges_error:
            raise self.ranges_error
        yield end - 4096, 4096

    def replace(self, src: str, dst: str) -> None:
        self.log.append(("replace", os.path.basename(src), os.path.basename(dst)))
        os.rename(src, dst)

    def pid_alive(self, pid: int) -> bool:
        self.log.append(("pid", pid))
        return pid == 4242

    def open_error(self, path: str, writable: bool) -> int:
        return self.open_code

    def volume_path(self, path: str) -> str:
        if path.startswith("\\\\"):
            raise OSError(1, "a share has no volume name")
        return "\\\\?\\Volume{26a21bda-a627-11d7-9931-806e6f6e6963}\\" + path[3:]


@pytest.fixture
def windows(monkeypatch: pytest.MonkeyPatch) -> FakeWin32:
    fake = FakeWin32()
    feats = dataclasses.replace(platform.detect({platform.FALLBACK_ENV: "1"}), windows=True,
                                fallback=False)
    monkeypatch.setattr(platform, "FEATURES", feats)
    monkeypatch.setattr(platform, "_win32", lambda: fake)
    return fake


def test_windows_marks_a_file_sparse_before_extending_it(tmp_path: Path, windows) -> None:
    p = tmp_path / "flat"
    p.write_bytes(b"")
    platform.set_length(str(p), 1 << 30)
    assert windows.log == [("sparse", 0)] and p.stat().st_size == 1 << 30


def test_windows_makes_a_file_sparse_when_an_edit_extends_it(tmp_path: Path, windows) -> None:
    p = tmp_path / "raw.img"
    p.write_bytes(bytes(8192))
    fd = platform.open_fd(str(p), os.O_RDWR)
    try:
        hostio.ftruncate(fd, 4096)
        assert windows.log == []
        hostio.ftruncate(fd, 1 << 20)
        assert windows.log == [("sparse", 4096)]
    finally:
        os.close(fd)


def test_windows_create_and_grow_of_raw_images_are_sparse(tmp_path: Path, windows) -> None:
    from vdisk_tool.image.create import create_image
    from vdisk_tool.image.grow import apply_grow, plan_grow
    raw = tmp_path / "disk.img"
    create_image(str(raw), 8 << 20, "raw")
    assert ("sparse", 0) in windows.log
    windows.log.clear()
    apply_grow(plan_grow(str(raw), 16 << 20))
    assert windows.log[0] == ("sparse", 8 << 20) and raw.stat().st_size == 16 << 20
    flat = tmp_path / "f.vmdk"
    windows.log.clear()
    create_image(str(flat), 8 << 20, "monolithicFlat")
    assert ("sparse", 0) in windows.log


def test_windows_ranges_fall_back_to_zero_detection(tmp_path: Path, windows) -> None:
    p = tmp_path / "f"
    with open(p, "wb") as f:
        f.truncate(1 << 20)
        f.seek(65536)
        f.write(b"\1")
    fd = os.open(p, os.O_RDONLY)
    try:
        assert list(platform.data_ranges(fd, 0, 1 << 20)) == [(0, 4096), ((1 << 20) - 4096, 4096)]
        windows.ranges_error = OSError(errno.EINVAL, "FAT32")
        # after the first range, the rest of the file is judged by its bytes
        assert list(platform.data_ranges(fd, 0, 1 << 20)) == [(0, 4096), (65536, 4096)]
    finally:
        os.close(fd)


def test_windows_replace_pid_and_removal(tmp_path: Path, windows) -> None:
    (tmp_path / "a").write_bytes(b"1")
    (tmp_path / "b").write_bytes(b"2")
    platform.replace(str(tmp_path / "a"), str(tmp_path / "b"))
    assert windows.log == [("replace", "a", "b")] and (tmp_path / "b").read_bytes() == b"1"
    assert platform.pid_alive(4242) and not platform.pid_alive(4243)
    assert platform.removal_command("C:\\VMs\\it's\\.x.vdisk-tmp-1") == \
        "Remove-Item -LiteralPath 'C:\\VMs\\it''s\\.x.vdisk-tmp-1'"
    (tmp_path / "d").mkdir()
    assert platform.removal_command(str(tmp_path / "d")).endswith("' -Recurse")


def test_a_sharing_violation_says_another_program_holds_the_file(
        tmp_path: Path, windows, monkeypatch: pytest.MonkeyPatch) -> None:
    from vdisk_tool.errors import ImageError
    from vdisk_tool.image.base import FileDevice
    p = tmp_path / "hd-boot-flat.vmdk"
    p.write_bytes(bytes(4096))

    def refuse(*a, **k):
        raise PermissionError(errno.EACCES, "Permission denied", str(p))

    monkeypatch.setattr(os, "open", refuse)
    windows.open_code = 32               # ERROR_SHARING_VIOLATION
    with pytest.raises(ImageError, match="another program holds the file open") as info:
        FileDevice(str(p), writable=True)
    assert info.value.hint == platform.HELD_OPEN_HINT
    windows.open_code = 5                # ERROR_ACCESS_DENIED: a plain permission problem
    with pytest.raises(ImageError, match="Permission denied"):
        FileDevice(str(p), writable=True)
    exc = OSError(errno.EACCES, "The process cannot access the file")
    exc.winerror = 32                    # what os.replace raises on Windows
    assert platform.held_open(exc) and platform.describe(exc) == platform.HELD_OPEN


def test_the_windows_module_imports_anywhere_and_has_the_documented_codes() -> None:
    def ctl_code(device: int, function: int, method: int, access: int) -> int:
        return (device << 16) | (access << 14) | (function << 2) | method
    assert ctl_code(9, 49, 0, 0) == _win32.FSCTL_SET_SPARSE
    assert ctl_code(9, 51, 3, 1) == _win32.FSCTL_QUERY_ALLOCATED_RANGES
    assert _win32.MOVEFILE_REPLACE_EXISTING | _win32.MOVEFILE_WRITE_THROUGH == 0x9


def test_file_ids_fit_the_journal_header() -> None:
    st = os.stat_result((0o100644, (1 << 100) + 5, 1, 1, 0, 0, 0, 0, 0, 0))
    assert platform.file_id(st) == 5


def test_volume_path_only_where_the_host_names_volumes(windows) -> None:
    """A differencing VHDX's volume_path (specs/vhdx.md): the volume's GUID name on Windows,
    None for a share (the call fails) and on every other host."""
    assert platform.volume_path("C:\\vms\\p.vhdx") == \
        "\\\\?\\Volume{26a21bda-a627-11d7-9931-806e6f6e6963}\\vms\\p.vhdx"
    assert platform.volume_path("\\\\srv\\share\\p.vhdx") is None


def test_volume_path_is_none_off_windows() -> None:
    if not platform.FEATURES.windows:
        assert platform.volume_path(os.getcwd()) is None


def test_win32_volume_path_joins_the_volume_name_and_the_rest(monkeypatch) -> None:
    """_win32.volume_path against a stand-in kernel32: mount point C:\\, its volume name."""
    def get_path(path, buf, n):
        buf.value = "C:\\"
        return 1

    def get_name(mount, buf, n):
        assert mount == "C:\\"
        buf.value = "\\\\?\\Volume{26a21bda-a627-11d7-9931-806e6f6e6963}\\"
        return 1

    fake = type("K32", (), {})()
    fake.GetVolumePathNameW, fake.GetVolumeNameForVolumeMountPointW = get_path, get_name
    monkeypatch.setattr(_win32, "_kernel32", lambda: fake)
    assert _win32.volume_path("C:\\vms\\p.vhdx") == \
        "\\\\?\\Volume{26a21bda-a627-11d7-9931-806e6f6e6963}\\vms\\p.vhdx"


def test_writeback_is_started_every_step_of_progress(tmp_path: Path, monkeypatch) -> None:
    """hostio.Writeback asks for the device writes of each new 8 MiB (here: 3 bytes) of a
    file as it fills; the request is a no-op where the host has no sync_file_range, and the
    real call, where there is one, leaves the file's bytes as they are."""
    calls: list[tuple[int, int, int]] = []
    monkeypatch.setattr(platform, "start_writeback", lambda fd, off, n: calls.append((fd, off, n)))
    wb = hostio.Writeback(7, step=3)
    for done in (1, 2, 3, 4, 8, 9, 10):
        wb.upto(done)
    assert calls == [(7, 0, 3), (7, 3, 5)]
    monkeypatch.undo()
    f = tmp_path / "w.raw"
    f.write_bytes(b"x" * 65536)
    fd = os.open(f, os.O_RDWR)
    try:
        platform.start_writeback(fd, 0, 65536)     # real on Linux, nothing elsewhere
        os.fsync(fd)
    finally:
        os.close(fd)
    assert f.read_bytes() == b"x" * 65536
    if platform.FEATURES.writeback:
        assert platform._sync_file_range and platform._sync_file_range[0] is not None


def test_writeback_leaves_a_journalled_file_alone(tmp_path: Path, monkeypatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr(platform, "start_writeback", lambda fd, off, n: calls.append(fd))
    monkeypatch.setattr(hostio, "journalled", lambda fd: True)
    wb = hostio.Writeback(5, step=1)
    wb.upto(10)
    assert calls == []
