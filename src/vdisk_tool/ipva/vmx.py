"""The VMware `.vmx` file: parse and edit it keeping every untouched byte (specs/vmx.md).

A vmx is a list of lines `key = "value"`; keys compare case-insensitively, `#` at the start
of a line makes a comment. `Vmx` keeps the raw lines (with their own line endings) and
rewrites only the lines an edit touches, so a file VMware or a user wrote stays theirs:
CRLF line ends (Workstation on Windows), a UTF-8 byte order mark, and the character set
`.encoding` names (windows-1252, Shift_JIS ...; UTF-8 when absent) are kept; an untouched
line is written back as the bytes it was read from. Undecodable bytes survive through
`surrogateescape`.

Disks are found by their controller slot (`ide0:0` ...), never by file name: vSphere
renames them (`xxx.vmdk`, `xxx_1.vmdk` ...).
"""
from __future__ import annotations

import difflib
import glob
import os
import re
from dataclasses import dataclass

from ..errors import FormatError, ImageError
from ..formats import charsets
from ..image import safe, vmpath

MAX_VMX_BYTES = 1 << 20
ENCODING = "utf-8"

# leading space, key, separator, value (quoted or bare), the rest of the line
_LINE = re.compile(r'^(\s*)([^\s=#"][^=]*?)(\s*=\s*)("[^"]*"|[^\s"#]*)(.*)$', re.DOTALL)
_SLOT_KEY = re.compile(r'^(ide|scsi|sata|nvme)(\d+):(\d+)\.(present|filename|devicetype)$')
_ESCAPE = re.compile(r'\|([0-9A-Fa-f]{2})')
_TRUE = {"true", "yes", "1", "on"}

IDE_ROLES = {"ide0:0": "boot", "ide0:1": "cf", "ide1:0": "flash", "ide1:1": "dump"}
# the names of disk images a slot may attach (VMware's, and the other platforms' containers)
DISK_SUFFIXES = (".vmdk", ".qcow2", ".vhdx")


def vmx_bool(value: str | None) -> bool:
    """VMware's boolean: TRUE/yes/1/on (any case) are true; everything else, or absent, false."""
    return value is not None and value.strip().lower() in _TRUE


def shown(text: str, limit: int = 80) -> str:
    """Text from a file as a message quotes it: at most `limit` characters, and those that
    are not printable (escape sequences, tabs, bidi controls) as `?`."""
    out = "".join(ch if ch.isprintable() else "?" for ch in text[:limit])
    return out + ("…" if len(text) > limit else "")


def decode_value(raw: str) -> str:
    """A value as written (quotes and `|XX` hex escapes) -> its text."""
    if len(raw) >= 2 and raw.startswith('"') and raw.endswith('"'):
        raw = raw[1:-1]
    return _ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), raw)


def encode_value(text: str) -> str:
    """Text -> a quoted value; `"`, `|` and control characters become `|XX` escapes."""
    out = []
    for ch in text:
        if ch in '"|' or ord(ch) < 0x20:
            out.append(f"|{ord(ch):02X}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


@dataclass(frozen=True)
class Entry:
    """One `key = value` line: where it is and how it is spelled."""

    index: int
    key: str
    value: str


# VMware's disks, and the qcow2/VHDX disks a Proxmox or Hyper-V folder's configuration names
# (seen through a vmx made from it: specs/platforms.md)
DISK_SUFFIXES = (".vmdk", ".qcow2", ".vhdx")


@dataclass(frozen=True)
class DiskSlot:
    """One controller slot named in the vmx (`ide0:1`), as the vmx describes it."""

    slot: str                 # "ide0:1"
    bus: str                  # "ide", "scsi", "sata", "nvme"
    present: bool
    device_type: str | None
    file_name: str | None
    path: str | None          # file_name resolved against the vmx folder
    role: str | None          # boot/cf/flash/dump for the four IDE slots

    @property
    def is_disk(self) -> bool:
        """A hard disk (not a CD-ROM or floppy image) that is attached."""
        if not self.present or not self.file_name:
            return False
        dt = (self.device_type or "disk").lower()
        return "cdrom" not in dt and "floppy" not in dt and \
            self.file_name.lower().endswith(DISK_SUFFIXES)

    def to_dict(self) -> dict[str, object]:
        return {"slot": self.slot, "bus": self.bus, "present": self.present,
                "device_type": self.device_type, "file_name": self.file_name,
                "path": self.path, "role": self.role}


class Vmx:
    """A vmx file held as its raw lines; get/set/remove edit it in place."""

    def __init__(self, data: bytes, path: str | None = None) -> None:
        if len(data) > MAX_VMX_BYTES:
            raise FormatError(f"vmx file larger than {MAX_VMX_BYTES} bytes", path=path)
        if b"\0" in data:
            raise FormatError("vmx file holds NUL bytes: not a text file", path=path,
                              offset=data.index(b"\0"))
        self.path = path
        self.original = data
        self.bom = data.startswith(charsets.BOM)
        body = data[len(charsets.BOM):] if self.bom else data
        declared = charsets.declared(body, ".encoding")
        self.encoding = (charsets.python_codec(declared) if declared else None) or ENCODING
        text = body.decode(self.encoding, "surrogateescape")
        self.lines: list[str] = text.splitlines(keepends=True)
        self.newline = "\r\n" if "\r\n" in text else "\n"
        self._raw: dict[str, bytes] = {}
        if self.encoding not in charsets.BYTE_EXACT:
            self._raw = {line: raw for line, raw in zip(self.lines, body.splitlines(keepends=True),
                                                        strict=False)
                         if raw.decode(self.encoding, "surrogateescape") == line}

    # -- reading -------------------------------------------------------------------------
    @classmethod
    def read(cls, path: str) -> Vmx:
        size = os.path.getsize(path)
        if size > MAX_VMX_BYTES:
            raise FormatError(f"vmx file larger than {MAX_VMX_BYTES} bytes ({size})", path=path)
        with open(path, "rb") as f:
            return cls(f.read(MAX_VMX_BYTES + 1), path)

    @property
    def folder(self) -> str:
        return os.path.dirname(os.path.abspath(self.path)) if self.path else os.getcwd()

    @staticmethod
    def _split(line: str) -> re.Match[str] | None:
        body = line.rstrip("\r\n")
        if not body.strip() or body.lstrip().startswith("#"):
            return None
        return _LINE.match(body)

    def entries(self) -> list[Entry]:
        """Every `key = value` line, in file order (duplicates included)."""
        out = []
        for i, line in enumerate(self.lines):
            m = self._split(line)
            if m:
                out.append(Entry(i, m.group(2), decode_value(m.group(4))))
        return out

    def _indexes(self, key: str) -> list[int]:
        k = key.lower()
        return [e.index for e in self.entries() if e.key.lower() == k]

    def get(self, key: str, default: str | None = None) -> str | None:
        """The value of `key` (any case); with duplicates, the last one, as VMware reads it."""
        k = key.lower()
        found = default
        for e in self.entries():
            if e.key.lower() == k:
                found = e.value
        return found

    def has(self, key: str) -> bool:
        return bool(self._indexes(key))

    def duplicates(self) -> list[str]:
        seen: dict[str, str] = {}
        dups = []
        for e in self.entries():
            k = e.key.lower()
            if k in seen and seen[k] not in dups:
                dups.append(seen[k])
            seen.setdefault(k, e.key)
        return dups

    # -- editing -------------------------------------------------------------------------
    def set(self, key: str, value: str) -> None:
        """Set `key`: an existing line keeps its key spelling, spacing and place (earlier
        duplicates are dropped); a new key is appended at the end."""
        idx = self._indexes(key)
        if not idx:
            if self.lines and not self.lines[-1].endswith(("\n", "\r")):
                self.lines[-1] += self.newline
            self.lines.append(f"{key} = {encode_value(value)}{self.newline}")
            return
        last = idx[-1]
        line = self.lines[last]
        body = line.rstrip("\r\n")
        eol = line[len(body):]
        m = _LINE.match(body)
        assert m is not None
        self.lines[last] = (m.group(1) + m.group(2) + m.group(3) + encode_value(value)
                            + m.group(5) + eol)
        for i in reversed(idx[:-1]):
            del self.lines[i]

    def remove(self, key: str) -> bool:
        """Drop every line of `key`; True when there was one."""
        idx = self._indexes(key)
        for i in reversed(idx):
            del self.lines[i]
        return bool(idx)

    def render(self) -> bytes:
        body = b"".join(self._raw.get(line) or line.encode(self.encoding, "surrogateescape")
                        for line in self.lines)
        return charsets.BOM + body if self.bom else body

    @property
    def changed(self) -> bool:
        return self.render() != self.original

    def diff(self) -> str:
        """A unified diff from the file as read to the file as it would be written."""
        name = os.path.basename(self.path or "vmx")
        a = self.original.removeprefix(charsets.BOM).decode(
            self.encoding, "surrogateescape").splitlines(keepends=True)
        b = "".join(self.lines).splitlines(keepends=True)
        return "".join(difflib.unified_diff(a, b, f"a/{name}", f"b/{name}"))

    def save(self, path: str | None = None, *, force: bool = False,
             backup: str | None = None) -> list[str]:
        """Write crash-safely (temp file beside, fsync, rename); refuse while VMware holds
        the vmx (a `.lck`) unless force. Returns the warnings force produced."""
        target = path or self.path
        if target is None:
            raise ImageError("vmx has no path to save to")
        warnings = safe.check_unlocked([target], force=force)
        tmp = safe.create_temp(target)
        rep = safe.Replacement()
        rep.add(tmp, target)
        try:
            with open(tmp, "wb") as f:
                f.write(self.render())
            if os.path.exists(target):
                os.chmod(tmp, os.stat(target).st_mode & 0o7777)
            rep.commit(backup=backup)
        except BaseException:
            rep.abort()
            raise
        self.original = self.render()
        self.path = target
        return warnings

    # -- disks ---------------------------------------------------------------------------
    def resolve(self, file_name: str) -> str:
        """A fileName as VMware resolves it: relative names against the vmx folder, with
        either separator, a drive letter as on the Windows host that wrote it
        (image/vmpath.py)."""
        return os.path.normpath(vmpath.to_host(self.folder, vmpath.parse_name(file_name)))

    def slots(self) -> list[DiskSlot]:
        """Every controller slot the vmx names, sorted by bus and position."""
        raw: dict[tuple[str, int, int], dict[str, str]] = {}
        for e in self.entries():
            m = _SLOT_KEY.match(e.key.lower())
            if m:
                raw.setdefault((m.group(1), int(m.group(2)), int(m.group(3))), {})[m.group(4)] = e.value
        out = []
        for (bus, ctl, unit), vals in sorted(raw.items()):
            slot = f"{bus}{ctl}:{unit}"
            fname = vals.get("filename") or None
            out.append(DiskSlot(slot, bus, vmx_bool(vals.get("present")), vals.get("devicetype"),
                                fname, self.resolve(fname) if fname else None, IDE_ROLES.get(slot)))
        return out

    def slot(self, name: str) -> DiskSlot | None:
        for s in self.slots():
            if s.slot == name.lower():
                return s
        return None

    def disk_for_slot(self, name: str) -> str | None:
        """The disk file attached at `name` (e.g. "ide0:0"), or None when there is none."""
        s = self.slot(name)
        return s.path if s is not None and s.is_disk else None


def find_vmx(dir_or_vmx: str) -> str:
    """The vmx of a bundle: the file itself, or the single `*.vmx` in a folder."""
    if os.path.isfile(dir_or_vmx):
        return dir_or_vmx
    if not os.path.isdir(dir_or_vmx):
        raise ImageError("no such file or folder", path=dir_or_vmx)
    found = sorted(p for p in glob.glob(os.path.join(glob.escape(dir_or_vmx), "*"))
                   if p.lower().endswith(".vmx") and os.path.isfile(p))
    if not found:
        raise ImageError("no .vmx file in this folder", path=dir_or_vmx,
                         hint="pass the folder of the appliance or its .vmx file")
    if len(found) > 1:
        names = ", ".join(os.path.basename(p) for p in found)
        raise ImageError(f"several .vmx files ({names})", path=dir_or_vmx,
                         hint="pass the .vmx file to use")
    return found[0]
