"""The members of an OVA (a POSIX tar, DSP0243 §5.3) and of the zip that carries it, read
in place: every member is a window (file, offset, length) on the archive, nothing is ever
extracted (specs/ovf.md §Package).

The tar headers are parsed here on our own, bounded terms rather than by `tarfile`: every
header's checksum is verified, sizes are checked against the archive before anything is
read, and each member that a careful importer must not use (a name with `..` or an
absolute path, a link, a device, a second member of the same name, a member that runs past
the end) becomes a Finding and is left out of the member list.
"""
from __future__ import annotations

import os
import struct
import tempfile
import zipfile
from dataclasses import dataclass

from ..errors import Finding, FormatError, Severity

BLOCK = 512
MAX_MEMBERS = 4096
MAX_PAX_BYTES = 64 << 10
REGULAR = (b"0", b"\0", b"7")
LINKS = (b"1", b"2")
DEVICES = (b"3", b"4", b"6")


@dataclass(frozen=True)
class Member:
    """One file of the package: `length_bytes` bytes at `offset` in `path`."""

    name: str
    path: str
    offset: int
    length_bytes: int

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "offset": self.offset, "size_bytes": self.length_bytes}


def _octal(field: bytes, what: str, at: int, path: str) -> int:
    if field and field[0] & 0x80:          # GNU base-256 for sizes of 8 GiB and more
        value = int.from_bytes(field[1:], "big")
        return value
    text = field.split(b"\0", 1)[0].strip(b" ")
    if not text:
        return 0
    try:
        return int(text, 8)
    except ValueError:
        raise FormatError(f"tar header {what} {text!r} is not octal", path=path, offset=at) from None


def _checksum_ok(block: bytes) -> bool:
    stored = block[148:156].split(b"\0", 1)[0].strip(b" ")
    try:
        want = int(stored, 8)
    except ValueError:
        return False
    return sum(block[:148]) + 8 * 32 + sum(block[156:]) == want


def _pax(data: bytes) -> dict[str, str]:
    """`len key=value\\n` records of a pax extended header."""
    out: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        sp = data.find(b" ", pos)
        if sp < 0:
            break
        try:
            n = int(data[pos:sp])
        except ValueError:
            break
        if n <= 0 or pos + n > len(data):
            break
        key, _, value = data[sp + 1:pos + n - 1].partition(b"=")
        out[key.decode("utf-8", "replace")] = value.decode("utf-8", "replace")
        pos += n
    return out


def unsafe_name(name: str) -> str | None:
    """Why a member name may not be used as a file name beside a package (None: it may)."""
    norm = name.replace("\\", "/")
    if not norm or norm.startswith("/") or (len(norm) > 1 and norm[1] == ":"):
        return "is an absolute path"
    parts = [p for p in norm.split("/") if p not in ("", ".")]
    if ".." in parts:
        return "climbs out of the package with '..'"
    if len(parts) != 1:
        return "lies in a folder (an OVF package is flat)"
    if any(ord(c) < 32 for c in norm):
        return "holds control characters"
    return None


def read_tar(path: str, start: int, length: int, label: str
             ) -> tuple[list[Member], list[Finding]]:
    """The regular members of the tar at [start, start+length) of `path`, in archive
    order, and a Finding for everything that was left out."""
    members: list[Member] = []
    findings: list[Finding] = []
    seen: set[str] = set()

    def bad(code: str, msg: str, at: int, sev: Severity = Severity.ERROR) -> None:
        findings.append(Finding(code, sev, msg, at, path=label))

    pos, end = 0, length
    pending: dict[str, str] = {}
    with open(path, "rb") as f:
        def pread(n: int, at: int) -> bytes:
            f.seek(start + at)
            return f.read(n)

        while pos + BLOCK <= end:
            block = pread(BLOCK, pos)
            if block.count(0) == BLOCK:
                break                       # end-of-archive marker
            if not _checksum_ok(block):
                raise FormatError("tar header checksum is wrong: not a tar archive, or a damaged "
                                  "one", path=label, offset=pos)
            if len(members) + len(findings) >= MAX_MEMBERS:
                raise FormatError(f"more than {MAX_MEMBERS} members", path=label, offset=pos)
            size = _octal(block[124:136], "size", pos, label)
            kind = block[156:157]
            data_at = pos + BLOCK
            nxt = data_at + -(-size // BLOCK) * BLOCK
            if data_at + size > end:
                bad("ova.member-truncated", f"member at 0x{pos:x} declares {size} bytes, but the "
                    f"archive ends {max(0, end - data_at)} bytes after its header", pos)
                break
            if kind in (b"x", b"L", b"g", b"K"):
                if size > MAX_PAX_BYTES:
                    raise FormatError(f"extended tar header of {size} bytes", path=label, offset=pos)
                data = pread(size, data_at)
                if kind == b"x":
                    pending = _pax(data)
                elif kind == b"L":
                    pending = {"path": data.split(b"\0", 1)[0].decode("utf-8", "replace")}
                pos = nxt
                continue
            name = block[0:100].split(b"\0", 1)[0].decode("utf-8", "replace")
            prefix = block[345:500].split(b"\0", 1)[0] if block[257:262] == b"ustar" else b""
            if prefix:
                name = prefix.decode("utf-8", "replace") + "/" + name
            name = pending.get("path", name)
            if "size" in pending and pending["size"].isdigit():
                size = int(pending["size"])
                nxt = data_at + -(-size // BLOCK) * BLOCK
                if data_at + size > end:
                    bad("ova.member-truncated", f"{name!r} declares {size} bytes, more than the "
                        "archive holds", pos)
                    break
            pending = {}
            pos = nxt
            if kind == b"5":
                if name.strip("/") not in ("", "."):
                    bad("ova.member-type", f"{name!r} is a folder; an OVF package is flat", pos)
                continue
            if kind in LINKS or kind in DEVICES or kind not in REGULAR:
                what = ("a hard link" if kind == b"1" else "a symbolic link" if kind == b"2"
                        else "a device or FIFO" if kind in DEVICES else f"of tar type {kind!r}")
                bad("ova.member-type", f"{name!r} is {what}: not used", data_at - BLOCK)
                continue
            why = unsafe_name(name)
            if why:
                bad("ova.member-name", f"{name!r} {why}: not used", data_at - BLOCK)
                continue
            base = name.replace("\\", "/").strip("/").split("/")[-1]
            if base.lower() in seen:
                bad("ova.member-duplicate", f"{base!r} appears more than once; the first is used",
                    data_at - BLOCK)
                continue
            seen.add(base.lower())
            members.append(Member(base, path, start + data_at, size))
    return members, findings


def open_zip(path: str) -> tuple[str, int, int, str | None]:
    """(file, offset, length, temp file or None) of the one .ova inside a zip. A stored
    member is a window on the zip itself; a deflated one is inflated into a temporary file
    (streamed, bounded by its declared size and the free space), which the caller removes."""
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise FormatError(f"not a readable zip archive ({exc})", path=path) from None
    with zf:
        ovas = [i for i in zf.infolist() if i.filename.lower().endswith(".ova")
                and not i.is_dir()]
        if len(ovas) != 1:
            names = ", ".join(i.filename for i in zf.infolist()[:8]) or "nothing"
            raise FormatError(f"expected one .ova in the zip, found {len(ovas)} (it holds {names})",
                              path=path)
        info = ovas[0]
        if unsafe_name(info.filename):
            raise FormatError(f"zip member {info.filename!r} {unsafe_name(info.filename)}",
                              path=path)
        if info.flag_bits & 0x1:
            raise FormatError(f"{info.filename} is encrypted", path=path)
        if info.compress_type == zipfile.ZIP_STORED:
            with open(path, "rb") as f:
                f.seek(info.header_offset)
                head = f.read(30)
            if len(head) < 30 or head[:4] != b"PK\x03\x04":
                raise FormatError("zip local header missing", path=path, offset=info.header_offset)
            name_len, extra_len = struct.unpack("<HH", head[26:30])
            at = info.header_offset + 30 + name_len + extra_len
            if at + info.file_size > os.path.getsize(path):
                raise FormatError(f"{info.filename} runs past the end of the zip", path=path)
            return path, at, info.file_size, None
        return _inflate(zf, info, path)


def _inflate(zf: zipfile.ZipFile, info: zipfile.ZipInfo, path: str
             ) -> tuple[str, int, int, str | None]:
    tmpdir = tempfile.gettempdir()
    st = os.statvfs(tmpdir)
    if info.file_size > st.f_bavail * st.f_frsize:
        raise FormatError(f"{info.filename} is deflated in the zip and needs {info.file_size} "
                          f"bytes in {tmpdir} to be read; not enough free space", path=path,
                          hint="unzip it and name the .ova, or set TMPDIR")
    fd, tmp = tempfile.mkstemp(prefix="vdisk-ova-", suffix=".ova")
    try:
        written = 0
        with os.fdopen(fd, "wb") as out, zf.open(info) as src:
            while True:
                chunk = src.read(1 << 20)
                if not chunk:
                    break
                written += len(chunk)
                if written > info.file_size:
                    raise FormatError(f"{info.filename} inflates past its declared size",
                                      path=path)
                out.write(chunk)
    except zipfile.BadZipFile as exc:
        os.unlink(tmp)
        raise FormatError(f"{info.filename}: {exc}", path=path) from None
    except BaseException:
        os.unlink(tmp)
        raise
    return tmp, 0, written, tmp
