"""VMware's `vmware.log` beside the vmx: what the last power-on sessions say about the
appliance (specs/vmx.md §vmware.log).

Two signatures of the wiki's known issues are recognised:
- the guest halted the CPU (`The CPU has been disabled by the guest operating system`), the
  usual result of Maintenance/Upload/DRAM on vSphere 4;
- VMware destroyed an IDE device (`Destroying virtual dev for ide0:1`, followed within
  `PAIR_WINDOW_LINES` lines, before the next such line, by `VMMon_VSCSIDestroyDev: Not
  found`): on the next power-on that disk is gone.

Reading is bounded: at most `MAX_FILES` logs (vmware.log and the newest rotated
`vmware-N.log`), the last `MAX_TAIL_BYTES` of each, lines cut at `MAX_LINE_CHARS`. A log is
only text: undecodable bytes become U+FFFD, control characters are shown as `?` when quoted,
and a file that is not a regular file (a FIFO, a device, a symbolic link) is not opened.
"""
from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass

from ..image import hostio, platform
from .vmx import shown

MAX_FILES = 4
MAX_TAIL_BYTES = 1 << 20
MAX_LINE_CHARS = 4096
QUOTE_CHARS = 200
RECENT_SESSIONS = 3
PAIR_WINDOW_LINES = 5
CPU_HALT = "The CPU has been disabled by the guest operating system"
DESTROY_DEV = re.compile(r"Destroying virtual dev for (ide[01]:[01])(?![0-9])")
VSCSI_NOT_FOUND = "VMMon_VSCSIDestroyDev: Not found"
SESSION_START = "Log for VMware"

_NAME = re.compile(r"^vmware(?:-(\d{1,6}))?\.log$", re.IGNORECASE)
_ISO_TIME = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,9})?(?:Z|[+-]\d\d:?\d\d)?)[| ]")
_OLD_TIME = re.compile(r"^([A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d(?:\.\d{1,6})?):")


@dataclass(frozen=True)
class LogLine:
    """One quoted log line: its file, its time stamp (as written) and its text."""

    file: str
    time: str | None
    text: str

    def quote(self) -> str:
        return f'{os.path.basename(self.file)}: "{self.text}"'

    def to_dict(self) -> dict[str, object]:
        return {"file": self.file, "time": self.time, "text": self.text}


@dataclass(frozen=True)
class CpuHalt:
    age: int                  # 0 = the newest power-on session, 1 the one before, ...
    line: LogLine


@dataclass(frozen=True)
class IdeDestroyed:
    slot: str                 # "ide0:1"
    age: int
    lines: tuple[LogLine, ...]


@dataclass(frozen=True)
class LogScan:
    files: tuple[str, ...]                 # read, newest first
    sessions: int                          # power-on sessions looked at
    halts: tuple[CpuHalt, ...]             # newest first
    destroyed: tuple[IdeDestroyed, ...]    # newest first
    unreadable: tuple[tuple[str, str], ...]


def find_logs(folder: str) -> list[str]:
    """vmware.log and the rotated vmware-N.log in `folder`, newest first (at most MAX_FILES).
    vmware.log is the current one; rotated logs go by modification time, then by number
    (higher first, as ESXi numbers them), since Workstation and ESXi number them apart."""
    current, rotated = [], []
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    for name in names:
        m = _NAME.match(name)
        if m is None:
            continue
        path = os.path.join(folder, name)
        if m.group(1) is None:
            current.append(path)
            continue
        try:
            mtime = os.lstat(path).st_mtime
        except OSError:
            continue
        rotated.append((mtime, int(m.group(1)), path))
    rotated.sort(reverse=True)
    return (sorted(current) + [p for _, _, p in rotated])[:MAX_FILES]


def read_tail(path: str, limit: int = MAX_TAIL_BYTES) -> bytes:
    """The last `limit` bytes of a regular file, starting at a line boundary (unless the
    whole file fits). Not a symbolic link, FIFO or device: that raises OSError."""
    if stat.S_ISLNK(os.lstat(path).st_mode):
        raise OSError(f"{os.path.basename(path)} is a symbolic link (not followed)")
    fd = platform.open_fd(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0), nofollow=True)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(f"{os.path.basename(path)} is not a regular file")
        start = max(0, st.st_size - limit)
        data = hostio.pread(fd, limit, start)
    finally:
        os.close(fd)
    if start > 0:
        cut = data.find(b"\n")
        data = data[cut + 1:] if cut >= 0 else b""
    return data


def _line(file: str, raw: bytes) -> tuple[str | None, str]:
    text = raw[:MAX_LINE_CHARS].rstrip(b"\r").decode("utf-8", "replace")
    m = _ISO_TIME.match(text) or _OLD_TIME.match(text)
    return (m.group(1) if m else None), text


def _quoted(file: str, time: str | None, text: str) -> LogLine:
    return LogLine(file, time, shown(text, QUOTE_CHARS))


def _sessions(file: str, data: bytes) -> list[list[tuple[str | None, str]]]:
    """A file's lines cut into power-on sessions: each file starts one, and so does every
    `Log for VMware` line inside it."""
    if not data:
        return []
    out: list[list[tuple[str | None, str]]] = [[]]
    for raw in data.split(b"\n"):
        item = _line(file, raw)
        if SESSION_START in item[1] and out[-1]:
            out.append([])
        out[-1].append(item)
    return out


def _scan_session(file: str, lines: list[tuple[str | None, str]], age: int
                  ) -> tuple[CpuHalt | None, list[IdeDestroyed]]:
    halt = None
    found: dict[str, IdeDestroyed] = {}
    for n, (time, text) in enumerate(lines):
        if halt is None and CPU_HALT in text:
            halt = CpuHalt(age, _quoted(file, time, text))
        m = DESTROY_DEV.search(text)
        if m is None or m.group(1) in found:
            continue
        for t2, x2 in lines[n + 1:n + 1 + PAIR_WINDOW_LINES]:
            if DESTROY_DEV.search(x2):         # the next device's turn: this one is unpaired
                break
            if VSCSI_NOT_FOUND in x2:
                found[m.group(1)] = IdeDestroyed(m.group(1), age, (
                    _quoted(file, time, text), _quoted(file, t2, x2)))
                break
    return halt, list(found.values())


def scan_logs(folder: str, recent: int = RECENT_SESSIONS) -> LogScan:
    """Read the logs beside the vmx and find the signatures in the `recent` newest
    power-on sessions."""
    files = find_logs(folder)
    read: list[str] = []
    bad: list[tuple[str, str]] = []
    sessions: list[tuple[str, list[tuple[str | None, str]]]] = []   # oldest first
    for path in reversed(files):
        try:
            data = read_tail(path)
        except OSError as exc:
            bad.append((path, exc.strerror or str(exc.args[0] if exc.args else exc)))
            continue
        read.insert(0, path)
        sessions.extend((path, s) for s in _sessions(path, data))
    newest = sessions[-recent:][::-1] if recent > 0 else []
    halts: list[CpuHalt] = []
    destroyed: list[IdeDestroyed] = []
    for age, (path, lines) in enumerate(newest):
        halt, gone = _scan_session(path, lines, age)
        if halt is not None:
            halts.append(halt)
        destroyed.extend(gone)
    return LogScan(tuple(read), len(newest), tuple(halts), tuple(destroyed), tuple(bad))
