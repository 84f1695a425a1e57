"""Directory entries: decoding 8.3 and VFAT long-name runs from a directory's bytes, and
building new entries with a unique short name (fatgen103 §6-7; specs/fat.md "Directories")."""
from __future__ import annotations

import datetime as _dt
import posixpath
import struct
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field

from ..errors import FormatError
from ..formats import fat as ff

E = ff.DIR_ENTRY_BYTES


@dataclass(frozen=True)
class DirEntryInfo:
    """One file, directory or label as a directory lists it."""

    name: str                 # the long name when there is a valid one, else the 8.3 form
    short_name: str           # display form NAME.EXT
    raw_name: bytes           # the 11 bytes of DIR_Name
    attributes: int
    size_bytes: int
    first_cluster: int
    created: _dt.datetime | None
    modified: _dt.datetime | None
    accessed: _dt.date | None
    path: str = ""
    raw_entry: bytes = field(default=b"", repr=False)   # the 32-byte 8.3 entry as stored
    entry_offset: int = -1    # byte offset of the 8.3 entry on the volume
    slot: int = -1            # index of the 8.3 entry in its directory
    lfn_slots: tuple[int, ...] = ()
    parent_cluster: int = 0   # first cluster of the directory holding it (0 = fixed root)

    @property
    def is_dir(self) -> bool:
        return bool(self.attributes & ff.ATTR_DIRECTORY)

    @property
    def is_label(self) -> bool:
        return bool(self.attributes & ff.ATTR_VOLUME_ID) and not self.is_dir

    @property
    def has_long_name(self) -> bool:
        return bool(self.lfn_slots)

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name, "short_name": self.short_name, "path": self.path,
            "type": "dir" if self.is_dir else ("label" if self.is_label else "file"),
            "size_bytes": self.size_bytes, "first_cluster": self.first_cluster,
            "attributes": attr_string(self.attributes),
            "created": self.created.isoformat() if self.created else None,
            "modified": self.modified.isoformat() if self.modified else None,
            "accessed": self.accessed.isoformat() if self.accessed else None,
        }


def attr_string(attr: int) -> str:
    flags = ((ff.ATTR_READ_ONLY, "R"), (ff.ATTR_HIDDEN, "H"), (ff.ATTR_SYSTEM, "S"),
             (ff.ATTR_VOLUME_ID, "V"), (ff.ATTR_DIRECTORY, "D"), (ff.ATTR_ARCHIVE, "A"))
    return "".join(ch if attr & bit else "-" for bit, ch in flags)


@dataclass(frozen=True)
class RawItem:
    """What a scan of directory bytes finds at a position.

    kind: "entry" (an 8.3 entry, maybe with its long name), "orphan-lfn" (long-name slots
    that belong to no 8.3 entry), "deleted", "end".
    lfn_problem: None, "checksum" (the run's checksum does not match the 8.3 name) or
    "sequence" (a broken run order).
    """

    kind: str
    slot: int
    lfn_slots: tuple[int, ...] = ()
    long_name: str | None = None
    lfn_problem: str | None = None


def scan(data: bytes | bytearray | memoryview) -> Iterator[RawItem]:
    """Walk the 32-byte slots of a directory up to its end marker."""
    pending: list[int] = []
    expect = 0
    csum = -1
    parts: list[bytes] = []
    broken = False
    for i in range(len(data) // E):
        at = i * E
        first = data[at]
        if first == 0:
            if pending:
                yield RawItem("orphan-lfn", pending[0], tuple(pending), lfn_problem="sequence")
            yield RawItem("end", i)
            return
        if first == ff.DELETED_MARK:
            if pending:
                yield RawItem("orphan-lfn", pending[0], tuple(pending), lfn_problem="sequence")
                pending = []
            continue
        if not pending and data[at + 11] & ff.ATTR_LONG_NAME_MASK != ff.ATTR_LONG_NAME:
            yield RawItem("entry", i)
            continue
        e = data[at:at + E]
        if e[11] & ff.ATTR_LONG_NAME_MASK == ff.ATTR_LONG_NAME:
            order = first & 0x1F
            if first & ff.LFN_LAST:
                if pending:
                    yield RawItem("orphan-lfn", pending[0], tuple(pending), lfn_problem="sequence")
                pending, parts, csum, expect, broken = [i], [ff.lfn_chars(e)], e[13], order - 1, order == 0
            elif pending and order == expect and e[13] == csum and order > 0:
                pending.append(i)
                parts.append(ff.lfn_chars(e))
                expect -= 1
            else:
                if pending:
                    yield RawItem("orphan-lfn", pending[0], tuple(pending), lfn_problem="sequence")
                yield RawItem("orphan-lfn", i, (i,), lfn_problem="sequence")
                pending = []
            continue
        if pending:
            name_raw = bytes(e[0:11])
            if broken or expect != 0:
                yield RawItem("orphan-lfn", pending[0], tuple(pending), lfn_problem="sequence")
                yield RawItem("entry", i)
            elif ff.lfn_checksum(name_raw) != csum:
                yield RawItem("entry", i, tuple(pending), None, "checksum")
            else:
                long_name = ff.decode_lfn(list(reversed(parts)))
                yield RawItem("entry", i, tuple(pending), long_name,
                              None if long_name else "sequence")
            pending = []
        else:
            yield RawItem("entry", i)
    if pending:
        yield RawItem("orphan-lfn", pending[0], tuple(pending), lfn_problem="sequence")


def entry_cluster(e: bytes | bytearray, fat_type: int) -> int:
    lo = int.from_bytes(e[26:28], "little")
    hi = int.from_bytes(e[20:22], "little") if fat_type == 32 else 0
    return (hi << 16) | lo


#: The layout of ff.DirectoryEntry as one struct format, for decoding many entries quickly;
#: tests hold it against the construct schema field by field.
DIR_ENTRY_STRUCT = struct.Struct("<11sBBBHHHHHHHI")
assert DIR_ENTRY_STRUCT.size == ff.DirectoryEntry.sizeof()


def decode_entry(e: bytes | bytearray | memoryview, fat_type: int, long_name: str | None = None,
                 path: str = "", entry_offset: int = -1, slot: int = -1,
                 lfn_slots: tuple[int, ...] = (), parent_cluster: int = 0,
                 parent_path: str | None = None) -> DirEntryInfo:
    """A DirEntryInfo from one 32-byte 8.3 entry (the first 32 bytes of `e`). With
    `parent_path`, `path` is that joined with the entry's name."""
    (name, attributes, nt_reserved, ctenth, ctime, cdate, adate, hi, wtime, wdate, lo,
     size) = DIR_ENTRY_STRUCT.unpack_from(e)
    short = ff.format_short_name(name, nt_reserved)
    acc = ff.decode_dos_datetime(adate)
    shown = long_name or short
    if parent_path is not None:
        path = posixpath.join(parent_path, shown)
    return DirEntryInfo(
        name=shown, short_name=ff.format_short_name(name) if nt_reserved else short,
        raw_name=name, attributes=attributes, size_bytes=size,
        first_cluster=(hi << 16 | lo) if fat_type == 32 else lo,
        created=ff.decode_dos_datetime(cdate, ctime, ctenth),
        modified=ff.decode_dos_datetime(wdate, wtime),
        accessed=acc.date() if acc else None, path=path, raw_entry=bytes(e[:E]),
        entry_offset=entry_offset, slot=slot, lfn_slots=lfn_slots, parent_cluster=parent_cluster)


def build_entry(raw_name: bytes, attributes: int, first_cluster: int, size_bytes: int,
                modified: _dt.datetime, created: _dt.datetime | None = None,
                accessed: _dt.date | None = None, nt_reserved: int = 0) -> bytes:
    """A 32-byte 8.3 entry."""
    c = ff.encode_dos_datetime(created or modified)
    m = ff.encode_dos_datetime(modified)
    a = ff.encode_dos_datetime(_dt.datetime.combine(accessed, _dt.time()) if accessed else modified)
    return ff.DirectoryEntry.build({
        "name": raw_name, "attributes": attributes, "nt_reserved": nt_reserved,
        "create_time_tenth": c.tenth, "create_time": c.time, "create_date": c.date,
        "access_date": a.date, "first_cluster_high": first_cluster >> 16,
        "write_time": m.time, "write_date": m.date,
        "first_cluster_low": first_cluster & 0xFFFF, "file_size": size_bytes})


def with_cluster_and_size(e: bytes, first_cluster: int, size_bytes: int) -> bytes:
    out = bytearray(e)
    out[20:22] = (first_cluster >> 16).to_bytes(2, "little")
    out[26:28] = (first_cluster & 0xFFFF).to_bytes(2, "little")
    out[28:32] = size_bytes.to_bytes(4, "little")
    return bytes(out)


# -- names of new entries ----------------------------------------------------------------
FORBIDDEN_LONG = set('"*/:<>?\\|') | {chr(c) for c in range(0x20)} | {"\x7f"}


def validate_long_name(name: str) -> str:
    """Refuse names a FAT directory cannot hold; returns the name NFC-normalised."""
    name = unicodedata.normalize("NFC", name)
    if name in ("", ".", ".."):
        raise FormatError(f"invalid file name {name!r}")
    bad = sorted({ch for ch in name if ch in FORBIDDEN_LONG})
    if bad:
        raise FormatError(f"file name {name!r} contains characters FAT does not allow: "
                          + " ".join(repr(ch) for ch in bad))
    if name.endswith((" ", ".")):
        raise FormatError(f"file name {name!r} ends with a space or a dot")
    if len(name.encode("utf-16-le")) // 2 > ff.MAX_LFN_CHARS:
        raise FormatError(f"file name {name[:20]!r}... is longer than 255 characters")
    return name


def _case_form(text: str) -> int | None:
    """0 upper/caseless, 1 all lower, None mixed."""
    if text == text.upper():
        return 0
    if text == text.lower():
        return 1
    return None


def plain_short_name(name: str) -> tuple[bytes, int] | None:
    """(raw 8.3 name, NT case bits) when `name` fits 8.3 without a long name, else None."""
    base, _dot, ext = name.partition(".")
    cb, ce = _case_form(base), _case_form(ext)
    if cb is None or ce is None:
        return None
    raw = ff.parse_short_name(name.upper())
    if raw is None:
        return None
    nt = (ff.NTRES_LOWER_BASE if cb else 0) | (ff.NTRES_LOWER_EXT if ce and ext else 0)
    return raw, nt


def _short_chars(text: str) -> tuple[str, bool]:
    """Upper-cased OEM-safe characters of a name part; True when something was lost."""
    out, lossy = [], False
    for ch in text.upper():
        if ch == " ":
            lossy = True
            continue
        if ch.isascii() and (ch.isalnum() or ord(ch) in ff.SHORT_NAME_SPECIALS):
            out.append(ch)
        else:
            out.append("_")
            lossy = True
    return "".join(out), lossy


def generate_short_name(name: str, taken: set[bytes]) -> bytes:
    """A unique numeric-tail 8.3 name (BASIS~N.EXT) for a long name (fatgen103 §7.4)."""
    stripped = name.lstrip(".")
    if "." in stripped:
        base, ext = stripped.rsplit(".", 1)
    else:
        base, ext = stripped, ""
    b, _ = _short_chars(base.replace(".", ""))
    x, _ = _short_chars(ext)
    b = b or "_"
    x = x[:3]
    for n in range(1, 1_000_000):
        tail = f"~{n}"
        raw = (b[:8 - len(tail)] + tail).encode("ascii").ljust(8, b" ") + \
            x.encode("ascii").ljust(3, b" ")
        if raw not in taken:
            return raw
    raise FormatError(f"no free short name for {name!r}")


LABEL_INVALID = set('"*+,./:;<=>?[\\]|')


def encode_label(label: str) -> bytes:
    """The 11 bytes of a volume label: upper case, at most 11 characters."""
    text = label.upper()
    bad = sorted({ch for ch in text if ch in LABEL_INVALID or ord(ch) < 0x20})
    if bad:
        raise FormatError(f"label {label!r} contains characters a label cannot hold: "
                          + " ".join(repr(c) for c in bad))
    try:
        raw = text.encode("cp437")
    except UnicodeEncodeError:
        raise FormatError(f"label {label!r} has characters outside code page 437") from None
    if len(raw) > 11:
        raise FormatError(f"label {label!r} is longer than 11 characters")
    if raw[:1] == b" ":
        raise FormatError("a label cannot start with a space")
    return raw.ljust(11, b" ")
