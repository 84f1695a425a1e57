"""The VMDK text descriptor: parse, edit in place, and write (specs/vmdk.md §Descriptor).

Edits keep every line they do not touch byte for byte, so a descriptor written by VMware
stays VMware's. Keys compare case-insensitively, as the VMware spec says.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from ..errors import FormatError
from . import charsets

MAX_DESCRIPTOR_BYTES = 4 << 20   # 65536 extent lines of a twoGbMaxExtent* disk fit
MAX_EXTENTS = 65536              # 128 TiB in 2047 MiB extents; VMware's largest disk is 62 TB
MAX_LINES = 2 * MAX_EXTENTS           # a cheap bound before the lines are parsed
ACCESS_MODES = ("RW", "RDONLY", "NOACCESS")
EXTENT_TYPES = ("FLAT", "SPARSE", "ZERO", "VMFS", "VMFSSPARSE", "VMFSRDM", "VMFSRAW", "SESPARSE")
NO_PARENT_CID = 0xFFFFFFFF
HEADER_LINE = "# Disk DescriptorFile"
CREATE_TYPES = ("monolithicSparse", "monolithicFlat", "twoGbMaxExtentSparse", "twoGbMaxExtentFlat",
                "streamOptimized", "vmfs", "vmfsThin", "vmfsPreallocated", "vmfsEagerZeroedThick",
                "vmfsRaw", "vmfsRawDeviceMap", "vmfsPassthroughRawDeviceMap", "fullDevice",
                "partitionedDevice", "custom", "2GbMaxExtentSparse", "2GbMaxExtentFlat")
ADAPTER_TYPES = ("ide", "lsilogic", "buslogic", "legacyESX", "pvscsi")

# the value each well-known ddb key must have (technote §Disk Database, open-vmdk, VirtualBox)
_DEC = r"\d+"
DDB_VALUE_FORMS: dict[str, tuple[str, str]] = {
    "ddb.virtualhwversion": (_DEC, "a decimal number"),
    "ddb.toolsversion": (_DEC, "a decimal number"),
    "ddb.toolsinstalltype": (_DEC, "a decimal number"),
    "ddb.geometry.cylinders": (_DEC, "a decimal number"),
    "ddb.geometry.heads": (_DEC, "a decimal number"),
    "ddb.geometry.sectors": (_DEC, "a decimal number"),
    "ddb.geometry.bioscylinders": (_DEC, "a decimal number"),
    "ddb.geometry.biosheads": (_DEC, "a decimal number"),
    "ddb.geometry.biossectors": (_DEC, "a decimal number"),
    "ddb.logicalsectorsize": ("512|4096", "512 or 4096"),
    "ddb.physicalsectorsize": ("512|4096", "512 or 4096"),
    "ddb.uuid": (r"(?:[0-9a-fA-F]{2}[ -]){15}[0-9a-fA-F]{2}", "16 hex bytes separated by spaces"),
    "ddb.longcontentid": (r"[0-9a-fA-F]{32}", "32 hex digits"),
    "ddb.thinprovisioned": ("[01]", "0 or 1"),
    "ddb.deletable": ("(?i:true|false)", "true or false"),
}



def __getattr__(name: str) -> Any:
    """EmbeddedDescriptor (the embedded descriptor area: text, NUL-padded to descriptorSize
    sectors), built when first asked for so that importing this module loads no construct."""
    if name == "EmbeddedDescriptor":
        from construct import GreedyBytes, NullStripped, Struct
        return Struct("text" / NullStripped(GreedyBytes) * "descriptor text, NUL padded")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_KV = re.compile(r'^\s*([A-Za-z0-9_.]+)\s*=\s*(.*?)\s*$')
_EXTENT = re.compile(
    r'^\s*(RW|RDONLY|NOACCESS)\s+(\d+)\s+([A-Za-z]+)(?:\s+"([^"]*)"(?:\s+(\d+))?)?(?:\s+.*)?\s*$')


@dataclass
class ExtentLine:
    access: str
    sectors: int
    extent_type: str
    filename: str | None
    offset_sectors: int | None
    line_index: int

    def render(self) -> str:
        parts = [self.access, str(self.sectors), self.extent_type]
        if self.filename is not None:
            parts.append(f'"{self.filename}"')
            if self.offset_sectors is not None:
                parts.append(str(self.offset_sectors))
        return " ".join(parts)


@dataclass
class Descriptor:
    """A parsed descriptor; `lines` is the text, `keys` maps lower-case key -> line index."""

    lines: list[str]
    newline: str = "\n"
    encoding: str = "utf-8"   # how the bytes were decoded; writing uses the same
    bom: bool = False
    # the bytes of each line as read, where the codec could spell its text otherwise
    # (cp932 has two byte sequences for some characters): untouched lines stay as they were
    raw_lines: dict[str, bytes] = field(default_factory=dict, repr=False)
    keys: dict[str, int] = field(default_factory=dict)
    extents: list[ExtentLine] = field(default_factory=list)

    def raw_value(self, key: str) -> str | None:
        """The value as written, quotes included (None when the key is absent)."""
        idx = self.keys.get(key.lower())
        if idx is None:
            return None
        m = _KV.match(self.lines[idx])
        assert m
        return m.group(2)

    def get(self, key: str, default: str | None = None) -> str | None:
        idx = self.keys.get(key.lower())
        if idx is None:
            return default
        m = _KV.match(self.lines[idx])
        assert m
        return unquote(m.group(2))

    def set(self, key: str, value: str, quoted: bool = True, after: str | None = None) -> None:
        """Set key in place (keeping the line's own key spelling), or append a new line."""
        text = f'"{value}"' if quoted else value
        idx = self.keys.get(key.lower())
        if idx is not None:
            m = _KV.match(self.lines[idx])
            assert m
            compact = " = " not in self.lines[idx]
            self.lines[idx] = f"{m.group(1)}={text}" if compact else f"{m.group(1)} = {text}"
            return
        if key.lower().startswith("ddb."):
            line = f"{key} = {text}"
            self.lines.append(line)
        else:
            line = f"{key}={text}"
            pos = self.keys.get(after.lower()) if after else None
            if pos is None:
                pos = self._header_end()
            else:
                pos += 1
            self.lines.insert(pos, line)
        self._reindex()

    def remove(self, key: str) -> None:
        idx = self.keys.get(key.lower())
        if idx is not None:
            del self.lines[idx]
            self._reindex()

    def set_extent(self, i: int, ext: ExtentLine) -> None:
        self.lines[self.extents[i].line_index] = ext.render()
        self._reindex()

    def replace_extents(self, new: list[ExtentLine]) -> None:
        if self.extents:
            first = self.extents[0].line_index
            for e in reversed(self.extents):
                del self.lines[e.line_index]
        else:
            first = self._header_end()
        for k, e in enumerate(new):
            self.lines.insert(first + k, e.render())
        self._reindex()

    def _header_end(self) -> int:
        for i, line in enumerate(self.lines):
            if line.strip().lower().startswith("# extent description") or _EXTENT.match(line):
                return i
        return len(self.lines)

    def _reindex(self) -> None:
        fresh = parse_descriptor_lines(self.lines, self.newline)
        self.keys, self.extents = fresh.keys, fresh.extents

    @property
    def cid(self) -> int | None:
        return parse_cid(self.get("CID"))

    @property
    def parent_cid(self) -> int | None:
        return parse_cid(self.get("parentCID"))

    @property
    def create_type(self) -> str | None:
        return self.get("createType")

    @property
    def capacity_sectors(self) -> int:
        return sum(e.sectors for e in self.extents)

    def render(self) -> str:
        return self.newline.join(self.lines) + self.newline

    def to_bytes(self) -> bytes:
        if self.raw_lines:
            nl = self.newline.encode(self.encoding)
            data = b"".join((self.raw_lines.get(line) or line.encode(self.encoding, "replace")) + nl
                            for line in self.lines)
        else:
            data = self.render().encode(self.encoding, errors="replace")
        return charsets.BOM + data if self.bom else data


def unquote(value: str) -> str:
    value = value.strip()
    if value.startswith('"'):
        end = value.find('"', 1)
        return value[1:end] if end > 0 else value[1:]
    return value.split()[0] if value.split() else ""


def parse_cid(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        cid = int(value, 16)
    except ValueError:
        return None
    return cid if 0 <= cid <= 0xFFFFFFFF else None


def looks_like_descriptor(data: bytes) -> bool:
    """qemu's probe: skipping comments and blank lines, the first line is `version=N`
    (a first line that lost the '#' of `# Disk DescriptorFile` is skipped as well)."""
    first = True
    for raw in data[:4096].removeprefix(b"\xef\xbb\xbf").split(b"\n"):
        line = raw.strip(b"\r").strip()
        if not line or line.startswith(b"#"):
            first = first and not line
            continue
        if first and damaged_header(line.decode("latin-1")):
            first = False
            continue
        return re.match(rb"^version\s*=\s*\d", line) is not None
    return False


def parse_descriptor(data: bytes, path: str | None = None) -> Descriptor:
    """Parse descriptor bytes (at most MAX_DESCRIPTOR_BYTES, stops at the first NUL)."""
    if len(data) > MAX_DESCRIPTOR_BYTES:
        raise FormatError(f"descriptor larger than {MAX_DESCRIPTOR_BYTES} bytes", path=path)
    data = data.split(b"\0", 1)[0]
    bom = data.startswith(charsets.BOM)
    if bom:
        data = data[3:]
    # the `encoding` key's charset (windows-1252, Shift_JIS ... as VMware writes them), else
    # UTF-8, else latin-1, which maps every byte to itself, so that writing back with it
    # keeps each untouched byte as it was
    text, encoding = charsets.decode(data, "encoding")
    newline = "\r\n" if "\r\n" in text else "\n"
    lines = text.replace("\r\n", "\n").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if len(lines) > MAX_LINES:
        raise FormatError(f"descriptor has {len(lines)} lines, more than {MAX_LINES}", path=path)
    desc = parse_descriptor_lines(lines, newline, path)
    desc.encoding = encoding
    desc.bom = bom
    if encoding not in charsets.BYTE_EXACT:
        raw = data.replace(b"\r\n", b"\n").split(b"\n")
        desc.raw_lines = {line: r for line, r in zip(lines, raw, strict=False)
                          if r.decode(encoding) == line}
    if desc.get("version") is None:
        raise FormatError("descriptor has no version= line", path=path)
    return desc


def is_header_line(line: str) -> bool:
    """`# Disk DescriptorFile`, as every writer spells it give or take spaces and case
    (Red Hat's VMDKstream writes `# Disk Descriptor File`)."""
    return line.replace(" ", "").lower() == "#diskdescriptorfile"


def damaged_header(line: str) -> bool:
    """A first line that was meant to be `# Disk DescriptorFile` (check reports it)."""
    return "descriptorfile" in line.replace(" ", "").lower() and not is_header_line(line)


def parse_descriptor_lines(lines: list[str], newline: str = "\n", path: str | None = None) -> Descriptor:
    desc = Descriptor(lines=lines, newline=newline)
    first = True
    for i, line in enumerate(lines):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            first = first and not stripped
            continue
        if first and damaged_header(stripped):
            first = False
            continue   # the header line lost its '#': a finding of check, not unreadable
        first = False
        if stripped.split()[0] in ACCESS_MODES:
            m = _EXTENT.match(stripped)
            if not m:
                raise FormatError(f"invalid extent line {i + 1}: {stripped[:80]!r}", path=path)
            etype = m.group(3).upper()
            if etype not in EXTENT_TYPES:
                raise FormatError(f"unsupported extent type {m.group(3)!r} on line {i + 1}", path=path)
            desc.extents.append(ExtentLine(
                access=m.group(1), sectors=int(m.group(2)), extent_type=etype,
                filename=m.group(4), offset_sectors=int(m.group(5)) if m.group(5) else None,
                line_index=i))
            if len(desc.extents) > MAX_EXTENTS:
                raise FormatError(f"more than {MAX_EXTENTS} extents", path=path)
            continue
        m = _KV.match(stripped)
        if not m:
            raise FormatError(f"unparsable descriptor line {i + 1}: {stripped[:80]!r}", path=path)
        desc.keys.setdefault(m.group(1).lower(), i)
    return desc


def ide_geometry(capacity_sectors: int) -> tuple[int, int, int]:
    return min(capacity_sectors // (16 * 63), 16383), 16, 63


def scsi_geometry(capacity_sectors: int) -> tuple[int, int, int]:
    return min(capacity_sectors // (255 * 63), 65535), 255, 63


def geometry_for(adapter: str, capacity_sectors: int) -> tuple[int, int, int]:
    return ide_geometry(capacity_sectors) if adapter == "ide" else scsi_geometry(capacity_sectors)


def build_descriptor(*, cid: int, create_type: str, extents: list[ExtentLine],
                     adapter: str = "ide", hw_version: str = "4",
                     parent_cid: int = NO_PARENT_CID, parent_hint: str | None = None,
                     extra_ddb: dict[str, str] | None = None) -> Descriptor:
    """A fresh descriptor laid out as VMware Workstation writes it."""
    capacity = sum(e.sectors for e in extents)
    cyl, heads, secs = geometry_for(adapter, capacity)
    lines = ["# Disk DescriptorFile", "version=1", 'encoding="UTF-8"', f"CID={cid:08x}",
             f"parentCID={parent_cid:08x}"]
    if create_type == "vmfs":
        lines.append('isNativeSnapshot="no"')
    lines.append(f'createType="{create_type}"')
    if parent_hint is not None:
        lines.append(f'parentFileNameHint="{parent_hint}"')
    lines += ["", "# Extent description"]
    lines += [e.render() for e in extents]
    lines += ["", "# The Disk Data Base", "#DDB", ""]
    ddb = {"ddb.virtualHWVersion": hw_version, "ddb.geometry.cylinders": str(cyl),
           "ddb.geometry.heads": str(heads), "ddb.geometry.sectors": str(secs),
           "ddb.adapterType": adapter}
    if create_type == "vmfs":
        ddb["ddb.thinProvisioned"] = "1"
    ddb.update(extra_ddb or {})
    lines += [f'{k} = "{v}"' for k, v in ddb.items()]
    return parse_descriptor_lines(lines)
