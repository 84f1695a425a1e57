"""The OVF descriptor and manifest of an OVF package (DMTF DSP0243 1.x and 2.x, with
VMware's `vmw:` extensions), parsed into frozen records (specs/ovf.md).

The XML is parsed by the standard library's expat-based ElementTree, but only after the
raw bytes have been checked: a document with a DTD (`<!DOCTYPE`) or an entity declaration
(`<!ENTITY`) is refused, so no entity is ever expanded; the size is bounded before parsing.
"""
from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass

from ..errors import FormatError

MAX_OVF_BYTES = 4 << 20
MAX_MANIFEST_BYTES = 1 << 20
MAX_ITEMS = 1024
MAX_CAPACITY_BYTES = 62 << 40     # the largest VMDK VMware creates (62 TiB)

OVF_NAMESPACES = {"http://schemas.dmtf.org/ovf/envelope/1": "1.x",
                  "http://schemas.dmtf.org/ovf/envelope/2": "2.x"}
VMW_NS = "http://www.vmware.com/schema/ovf"
ITEM_TAGS = ("Item", "StorageItem", "EthernetPortItem")
RT_CPU, RT_MEMORY, RT_IDE, RT_SCSI, RT_ETHERNET, RT_DISK, RT_SATA = 3, 4, 5, 6, 10, 17, 20
DIGESTS = {"SHA1": 40, "SHA256": 64, "SHA512": 128}

_LEGACY_UNITS = {"byte": 0, "bytes": 0, "kilobytes": 10, "kb": 10, "megabytes": 20, "mb": 20,
                 "gigabytes": 30, "gb": 30, "terabytes": 40, "tb": 40}
_UNIT = re.compile(r"^\s*(?:byte|bytes)?\s*(?:\*\s*)?(?:(2|10)\s*\^\s*(\d{1,2}))?\s*$", re.I)
_MANIFEST_LINE = re.compile(r"^(SHA1|SHA256|SHA512)\s*\((.+)\)\s*=\s*([0-9A-Fa-f]+)\s*$")


@dataclass(frozen=True)
class FileRef:
    """A `References/File`: ovf:id, ovf:href, ovf:size (bytes, when given)."""

    file_id: str
    href: str
    size_bytes: int | None
    compression: str | None


@dataclass(frozen=True)
class DiskDef:
    """A `DiskSection/Disk`: its capacity in bytes and the file that holds it."""

    disk_id: str
    file_ref: str | None
    capacity_bytes: int
    format: str | None


@dataclass(frozen=True)
class HardwareItem:
    """One virtual hardware item; `fields` maps the CIM element's local name to its text
    (HostResource, which may repeat, keeps its first value)."""

    tag: str
    fields: tuple[tuple[str, str], ...]

    def get(self, name: str) -> str | None:
        for k, v in self.fields:
            if k == name:
                return v
        return None

    @property
    def instance_id(self) -> str:
        return self.get("InstanceID") or ""

    @property
    def resource_type(self) -> int | None:
        raw = self.get("ResourceType")
        return int(raw) if raw is not None and raw.strip().isdigit() else None


@dataclass(frozen=True)
class Envelope:
    version: str                      # "1.x" or "2.x"
    name: str
    files: tuple[FileRef, ...]
    disks: tuple[DiskDef, ...]
    items: tuple[HardwareItem, ...]
    extra_config: tuple[tuple[str, str], ...]   # vmw:ExtraConfig: vmx keys
    config: tuple[tuple[str, str], ...]         # vmw:Config: vSphere ConfigSpec keys
    system_type: str | None                     # vssd:VirtualSystemType, e.g. "vmx-07"
    os_type: str | None                         # vmw:osType

    def file(self, file_id: str) -> FileRef | None:
        return next((f for f in self.files if f.file_id == file_id), None)

    def disk(self, disk_id: str) -> DiskDef | None:
        return next((d for d in self.disks if d.disk_id == disk_id), None)


@dataclass(frozen=True)
class ManifestEntry:
    algorithm: str      # SHA1, SHA256 or SHA512
    name: str
    digest: str         # lower-case hex
    line: int


def units_shift(text: str | None, what: str) -> tuple[int, int]:
    """(base, exponent) of a DSP0004 programmatic unit such as `byte * 2^20`; `MegaBytes`
    and the like (older writers) are accepted too. None means bytes."""
    if text is None or not text.strip():
        return 2, 0
    legacy = _LEGACY_UNITS.get(text.strip().lower())
    if legacy is not None:
        return 2, legacy
    m = _UNIT.match(text)
    if not m or not text.strip():
        raise FormatError(f"{what}: unknown allocation unit {text!r}")
    return (int(m.group(1)), int(m.group(2))) if m.group(1) else (2, 0)


def scaled(value: str | None, units: str | None, what: str) -> int:
    """value × unit as an integer number of bytes; a value that is not a whole number,
    or ${property} references (deploy-time properties) are refused."""
    if value is None or not value.strip().isdigit():
        raise FormatError(f"{what}: {value!r} is not a whole number")
    base, exp = units_shift(units, what)
    return int(value.strip()) * base ** exp


def check_xml_bytes(raw: bytes, path: str | None = None) -> str:
    """The descriptor as text, after refusing what must never reach the XML parser."""
    if len(raw) > MAX_OVF_BYTES:
        raise FormatError(f"OVF descriptor is larger than {MAX_OVF_BYTES} bytes", path=path)
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    if b"\0" in raw:
        raise FormatError("OVF descriptor holds NUL bytes (only UTF-8 is read)", path=path)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FormatError(f"OVF descriptor is not UTF-8 (byte {exc.start})", path=path) from None
    upper = text.upper()
    for bad in ("<!DOCTYPE", "<!ENTITY"):
        at = upper.find(bad)
        if at >= 0:
            raise FormatError(f"OVF descriptor declares a DTD or entity ({bad[2:]} at byte {at}): "
                              "refused, no entity is ever expanded", path=path, offset=at)
    return text


def _local(tag: str) -> tuple[str, str]:
    if tag.startswith("{"):
        ns, _, name = tag[1:].partition("}")
        return ns, name
    return "", tag


def _attr(el: ET.Element, name: str, ns: str) -> str | None:
    return el.get(f"{{{ns}}}{name}", el.get(name))


def parse_envelope(raw: bytes, path: str | None = None) -> Envelope:
    """Parse an OVF descriptor (bounded, DTD-free); FormatError names what is wrong."""
    text = check_xml_bytes(raw, path)
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise FormatError(f"OVF descriptor is not well-formed XML: {exc}", path=path) from None
    ns, name = _local(root.tag)
    if name != "Envelope" or ns not in OVF_NAMESPACES:
        raise FormatError(f"root element is {{{ns}}}{name}, not an OVF 1.x/2.x Envelope", path=path)

    def q(tag: str) -> str:
        return f"{{{ns}}}{tag}"

    files = tuple(_file_ref(f, ns, path) for f in root.iterfind(f"{q('References')}/{q('File')}"))
    disks = tuple(_disk_def(d, ns, path) for d in root.iterfind(f"{q('DiskSection')}/{q('Disk')}"))
    if root.find(q("VirtualSystemCollection")) is not None:
        raise FormatError("the package holds a VirtualSystemCollection (several VMs); the "
                          "appliance is one VirtualSystem", path=path)
    vs = root.find(q("VirtualSystem"))
    if vs is None:
        raise FormatError("no VirtualSystem in the OVF descriptor", path=path)
    hw = vs.find(q("VirtualHardwareSection"))
    if hw is None:
        raise FormatError("VirtualSystem has no VirtualHardwareSection", path=path)
    items: list[HardwareItem] = []
    extra: list[tuple[str, str]] = []
    config: list[tuple[str, str]] = []
    system_type = None
    for child in hw:
        cns, cname = _local(child.tag)
        if cname in ITEM_TAGS and cns == ns:
            fields: dict[str, str] = {}
            for f in child:
                key = _local(f.tag)[1]
                fields.setdefault(key, (f.text or "").strip())
            items.append(HardwareItem(cname, tuple(fields.items())))
            if len(items) > MAX_ITEMS:
                raise FormatError(f"more than {MAX_ITEMS} hardware items", path=path)
        elif cname == "System":
            for f in child:
                if _local(f.tag)[1] == "VirtualSystemType":
                    system_type = (f.text or "").strip() or None
        elif cns == VMW_NS and cname in ("ExtraConfig", "Config"):
            ckey, cvalue = _attr(child, "key", VMW_NS), _attr(child, "value", VMW_NS)
            if ckey is None or cvalue is None:
                raise FormatError(f"vmw:{cname} without vmw:key or vmw:value", path=path)
            (extra if cname == "ExtraConfig" else config).append((ckey, cvalue))
    os_sec = vs.find(q("OperatingSystemSection"))
    os_type = None if os_sec is None else _attr(os_sec, "osType", VMW_NS)
    vs_name = vs.findtext(q("Name")) or _attr(vs, "id", ns) or ""
    return Envelope(OVF_NAMESPACES[ns], vs_name.strip(), files, disks, tuple(items),
                    tuple(extra), tuple(config), system_type, os_type)


def _file_ref(el: ET.Element, ns: str, path: str | None) -> FileRef:
    fid, href, size = _attr(el, "id", ns), _attr(el, "href", ns), _attr(el, "size", ns)
    if not fid or not href:
        raise FormatError("References/File without ovf:id or ovf:href", path=path)
    if size is not None and not size.strip().isdigit():
        raise FormatError(f"File {href!r}: ovf:size {size!r} is not a number of bytes", path=path)
    return FileRef(fid, href, int(size) if size is not None else None,
                   _attr(el, "compression", ns))


def _disk_def(el: ET.Element, ns: str, path: str | None) -> DiskDef:
    did = _attr(el, "diskId", ns)
    if not did:
        raise FormatError("DiskSection/Disk without ovf:diskId", path=path)
    what = f"Disk {did!r} capacity"
    cap = scaled(_attr(el, "capacity", ns), _attr(el, "capacityAllocationUnits", ns), what)
    if not 0 < cap <= MAX_CAPACITY_BYTES or cap % 512:
        raise FormatError(f"{what}: {cap} bytes does not fit a disk (whole 512-byte sectors, "
                          f"at most {MAX_CAPACITY_BYTES >> 40} TiB)", path=path)
    return DiskDef(did, _attr(el, "fileRef", ns), cap, _attr(el, "format", ns))


def parse_manifest(raw: bytes) -> tuple[list[ManifestEntry], list[tuple[int, str]]]:
    """Lines `SHA256(name)= hex`; returns the entries and the (line number, text) of
    every line that is not one."""
    if len(raw) > MAX_MANIFEST_BYTES:
        raise FormatError(f"manifest is larger than {MAX_MANIFEST_BYTES} bytes")
    entries: list[ManifestEntry] = []
    bad: list[tuple[int, str]] = []
    for n, line in enumerate(raw.decode("utf-8", "replace").splitlines(), 1):
        if not line.strip():
            continue
        m = _MANIFEST_LINE.match(line.strip())
        if not m or len(m.group(3)) != DIGESTS[m.group(1).upper()]:
            bad.append((n, line[:120]))
            continue
        entries.append(ManifestEntry(m.group(1).upper(), m.group(2), m.group(3).lower(), n))
    return entries, bad
