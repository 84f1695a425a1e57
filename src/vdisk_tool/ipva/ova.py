"""An OVF package as the appliance ships it from 14r1 on (`ipva-ovf.zip` holding
`ipva.ova`): opened in place, its disks mapped to IDE slots from the OVF's hardware
section, never from file names (specs/ovf.md).

`open_package` accepts an `.ova` (tar), an unpacked `.ovf` with its files beside it, and a
`.zip` that holds one `.ova`. The package's settings are also presented as vmx keys
(`vmx_text`), so that the doctor judges them by the same rules as a vmx, and so that
`bundle deploy` writes them.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from ..errors import Finding, FormatError, ImageError, Severity
from ..formats import ovf
from ..image.disk import Disk
from ..image.vmdk.open import open_window
from .bundle import format_mac, parse_mac
from .ova_tar import Member, open_zip, read_tar, unsafe_name
from .packages import PACKAGE_SUFFIXES, is_package  # noqa: F401 - part of this API
from .vmx import IDE_ROLES

STREAM_FORMAT = "vmdk.html#streamoptimized"
NIC_MODELS = {"pcnet32": "vlance", "vlance": "vlance", "e1000": "e1000", "e1000e": "e1000e",
              "vmxnet3": "vmxnet3", "vmxnet": "vmxnet", "vmxnet2": "vmxnet"}
BUSES = {ovf.RT_IDE: "ide", ovf.RT_SCSI: "scsi", ovf.RT_SATA: "sata"}


@dataclass(frozen=True)
class PackageDisk:
    """A disk item of the OVF: its slot from rasd:Parent/AddressOnParent and what holds it."""

    slot: str                  # "ide0:1", "scsi0:0", or "?" when it cannot be placed
    disk_id: str
    capacity_bytes: int
    file_name: str | None      # the References/File href
    member: Member | None
    format: str | None

    @property
    def role(self) -> str | None:
        return IDE_ROLES.get(self.slot)

    def to_dict(self) -> dict[str, object]:
        return {"slot": self.slot, "role": self.role, "disk_id": self.disk_id,
                "capacity_bytes": self.capacity_bytes, "file": self.file_name,
                "size_bytes": None if self.member is None else self.member.length_bytes}


@dataclass(frozen=True)
class PackageNic:
    model: str | None          # vmx virtualDev, or the OVF's subtype when unknown
    subtype: str | None
    mac: str | None
    network: str | None


@dataclass
class Package:
    path: str                          # what the user named
    kind: str                          # "ova", "ovf" or "zip"
    ovf_name: str
    envelope: ovf.Envelope
    members: list[Member]
    findings: list[Finding] = field(default_factory=list)
    manifest: Member | None = None
    temp_file: str | None = None

    def member(self, name: str) -> Member | None:
        return next((m for m in self.members if m.name == name), None)

    def manifest_entries(self) -> tuple[list[ovf.ManifestEntry], list[tuple[int, str]]]:
        """The manifest's entries and its malformed lines (none without a manifest)."""
        if self.manifest is None:
            return [], []
        return ovf.parse_manifest(_read_member(self.manifest, ovf.MAX_MANIFEST_BYTES,
                                               "manifest", self.path))

    def label(self, name: str) -> str:
        return f"{self.path}#{name}"

    def close(self) -> None:
        if self.temp_file and os.path.exists(self.temp_file):
            os.unlink(self.temp_file)
        self.temp_file = None

    def __enter__(self) -> Package:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- hardware ---------------------------------------------------------------------------
    def disks(self) -> list[PackageDisk]:
        return map_disks(self)

    def disk_for(self, slot: str) -> PackageDisk | None:
        return next((d for d in self.disks() if d.slot == slot), None)

    def nics(self) -> list[PackageNic]:
        return read_nics(self.envelope)

    def open_disk(self, slot: str) -> Disk:
        """The disk at `slot`, opened in place, read-only."""
        d = self.disk_for(slot)
        if d is None:
            raise ImageError(f"the package attaches no disk at {slot}", path=self.path)
        if d.member is None:
            raise ImageError(f"{slot}: {d.file_name or d.disk_id} is not in the package",
                             path=self.path)
        m = d.member
        return open_window(m.path, m.offset, m.length_bytes, self.label(m.name))


def open_package(path: str) -> Package:
    """Open an .ova, .ovf or .zip package; FormatError/ImageError when it cannot be read
    at all, Findings (`Package.findings`) for members that were left out."""
    if not os.path.isfile(path):
        raise ImageError("no such file", path=path)
    low = path.lower()
    temp = None
    if low.endswith(".ovf"):
        return _open_ovf_folder(path)
    if low.endswith(".zip"):
        host, start, length, temp = open_zip(path)
    else:
        host, start, length = path, 0, os.path.getsize(path)
    try:
        members, findings = read_tar(host, start, length, path)
        ovfs = [m for m in members if m.name.lower().endswith(".ovf")]
        if not ovfs:
            raise FormatError("the package holds no .ovf descriptor", path=path)
        desc = ovfs[0]
        if members[0] is not desc:
            findings.append(Finding("ova.member-order", Severity.WARNING, f"{desc.name} is not the "
                                    "first member; the OVF specification puts the descriptor "
                                    "first (streaming importers need it)", path=path))
        pkg = _build(path, "zip" if temp else "ova", desc, members, findings)
        pkg.temp_file = temp
        return pkg
    except BaseException:
        if temp:
            os.unlink(temp)
        raise


def _read_member(m: Member, limit: int, what: str, label: str) -> bytes:
    if m.length_bytes > limit:
        raise FormatError(f"{what} {m.name} is {m.length_bytes} bytes, more than {limit}",
                          path=label)
    with open(m.path, "rb") as f:
        f.seek(m.offset)
        return f.read(m.length_bytes)


def _build(path: str, kind: str, desc: Member, members: list[Member],
           findings: list[Finding], env: ovf.Envelope | None = None) -> Package:
    if env is None:
        env = ovf.parse_envelope(_read_member(desc, ovf.MAX_OVF_BYTES, "descriptor", path),
                                 f"{path}#{desc.name}")
    stem = desc.name[:-4]
    mf = next((m for m in members if m.name.lower() == f"{stem}.mf".lower()), None)
    return Package(path, kind, desc.name, env, members, findings, mf)


def _open_ovf_folder(path: str) -> Package:
    """An unpacked package: the .ovf and the files it references, beside it."""
    folder = os.path.dirname(os.path.abspath(path))
    name = os.path.basename(path)
    desc = Member(name, path, 0, os.path.getsize(path))
    env_raw = _read_member(desc, ovf.MAX_OVF_BYTES, "descriptor", path)
    env = ovf.parse_envelope(env_raw, path)
    members, findings = [desc], []
    wanted = [f.href for f in env.files] + [f"{name[:-4]}.mf"]
    for href in wanted:
        why = unsafe_name(href)
        if why:
            findings.append(Finding("ova.member-name", Severity.ERROR, f"References names "
                                    f"{href!r}, which {why}: not used", path=path))
            continue
        full = os.path.join(folder, href)
        if os.path.islink(full) or (os.path.exists(full) and not os.path.isfile(full)):
            findings.append(Finding("ova.member-type", Severity.ERROR, f"{href!r} beside the "
                                    "descriptor is a link or not a regular file: not used",
                                    path=path))
        elif os.path.isfile(full) and all(m.name != href for m in members):
            members.append(Member(href, full, 0, os.path.getsize(full)))
    return _build(path, "ovf", desc, members, findings, env)


# -- hardware mapping -------------------------------------------------------------------------
def _controllers(env: ovf.Envelope) -> dict[str, tuple[str, int | None]]:
    """InstanceID -> (bus, controller number) of every IDE/SCSI/SATA controller. A
    controller without rasd:Address is numbered by its order among those of its bus, as
    ovftool and VirtualBox do."""
    out: dict[str, tuple[str, int | None]] = {}
    counters: dict[str, int] = {}
    for item in env.items:
        bus = BUSES.get(item.resource_type or -1)
        if bus is None:
            continue
        addr = item.get("Address")
        number = int(addr) if addr is not None and addr.isdigit() else counters.get(bus, 0)
        counters[bus] = max(counters.get(bus, 0), number + 1)
        out[item.instance_id] = (bus, number)
    return out


def map_disks(pkg: Package) -> list[PackageDisk]:
    env = pkg.envelope
    ctrls = _controllers(env)
    out: list[PackageDisk] = []
    for item in env.items:
        if item.resource_type != ovf.RT_DISK:
            continue
        host = item.get("HostResource") or ""
        disk_id = host.rsplit("/", 1)[-1]
        ddef = env.disk(disk_id)
        ctrl = ctrls.get(item.get("Parent") or "")
        unit = item.get("AddressOnParent")
        slot = "?"
        if ctrl is not None and unit is not None and unit.isdigit():
            slot = f"{ctrl[0]}{ctrl[1]}:{int(unit)}"
        fref = env.file(ddef.file_ref) if ddef and ddef.file_ref else None
        member = pkg.member(fref.href) if fref else None
        out.append(PackageDisk(slot, disk_id, ddef.capacity_bytes if ddef else 0,
                               fref.href if fref else None, member,
                               ddef.format if ddef else None))
    return out


def read_nics(env: ovf.Envelope) -> list[PackageNic]:
    """NIC items in InstanceID order (ethernet0 first): reordering the items in the file
    does not renumber the adapters."""
    items = [i for i in env.items if i.resource_type == ovf.RT_ETHERNET]
    items.sort(key=lambda i: (0, int(i.instance_id)) if i.instance_id.isdigit()
               else (1, i.instance_id))
    out = []
    for i in items:
        sub = i.get("ResourceSubType")
        model = NIC_MODELS.get(sub.lower(), sub) if sub else None
        out.append(PackageNic(model, sub, i.get("Address") or None, i.get("Connection")))
    return out


def _quantity(env: ovf.Envelope, rtype: int) -> ovf.HardwareItem | None:
    return next((i for i in env.items if i.resource_type == rtype), None)


def memsize_text(env: ovf.Envelope) -> str | None:
    """The memory item as a vmx memsize (MB), or its raw text when it is not whole MB."""
    item = _quantity(env, ovf.RT_MEMORY)
    if item is None:
        return None
    try:
        n = ovf.scaled(item.get("VirtualQuantity"), item.get("AllocationUnits") or "byte * 2^20",
                       "memory")
    except FormatError:
        return item.get("VirtualQuantity") or "?"
    return str(n >> 20) if n % (1 << 20) == 0 else f"{n / (1 << 20):g}"


def vmx_text(pkg: Package, file_names: dict[str, str] | None = None, mac: int | None = None,
             target: str = "workstation", name: str | None = None) -> str:
    """The package's settings as a vmx: IDE slots from the OVF, the NICs with their MACs
    (ethernet0's replaced by `mac` when given), memory and CPUs, and every ExtraConfig key.
    `file_names` maps slots to deployed files (default: the package's own file names)."""
    env = pkg.envelope
    hw = (env.system_type or "").split(",")[0].strip()
    version = int(hw[4:]) if hw.startswith("vmx-") and hw[4:].isdigit() else 7
    lines = ['.encoding = "UTF-8"', 'config.version = "8"', f'virtualHW.version = "{version}"',
             f'displayName = "{_q(name or env.name or "ipva")}"',
             f'guestOS = "{_q((env.os_type or "otherGuest").removesuffix("Guest") or "other")}"']
    mem = memsize_text(env)
    if mem is not None:
        lines.append(f'memsize = "{_q(mem)}"')
    cpu = _quantity(env, ovf.RT_CPU)
    if cpu is not None and cpu.get("VirtualQuantity"):
        lines.append(f'numvcpus = "{_q(cpu.get("VirtualQuantity") or "")}"')
    ctrls = sorted({d.slot.split(":")[0] for d in pkg.disks() if d.slot != "?"})
    for c in ctrls:
        lines.append(f'{c}.present = "TRUE"')
    for d in pkg.disks():
        if d.slot == "?":
            continue
        fname = (file_names or {}).get(d.slot, d.file_name or d.disk_id)
        lines += [f'{d.slot}.present = "TRUE"', f'{d.slot}.fileName = "{_q(fname)}"']
    for n, nic in enumerate(pkg.nics()):
        eth = f"ethernet{n}"
        lines.append(f'{eth}.present = "TRUE"')
        if nic.model:
            lines.append(f'{eth}.virtualDev = "{_q(nic.model)}"')
        lines.append(f'{eth}.networkName = "{_q(nic.network or "VM Network")}"' if target == "vsphere"
                     else f'{eth}.connectionType = "bridged"')
        address = format_mac(mac) if (n == 0 and mac is not None) else _mac_or_none(nic.mac)
        if address:
            lines += [f'{eth}.addressType = "static"', f'{eth}.address = "{address}"']
        else:
            lines.append(f'{eth}.addressType = "generated"')
    for key, value in env.extra_config:
        if extra_config_refused(key) is None:
            lines.append(f'{key} = "{_q(value)}"')
    return "\n".join(lines) + "\n"


def extra_config_refused(key: str) -> str | None:
    """Why an ExtraConfig key is not carried into a vmx (None: it is). Keys that name
    devices, files or the settings vdisk writes from the hardware section are refused, so
    that an ExtraConfig entry cannot attach a file outside the bundle."""
    if not _VMX_KEY.match(key):
        return "is not a vmx key"
    low = key.lower()
    if low == "uuid.bios":          # the appliance's identity (with its MAC): carried
        return None
    if low.startswith(_DEVICE_PREFIXES) or low in _WRITTEN_KEYS or "filename" in low:
        return "names a device, a file or a setting of the hardware section"
    return None


_VMX_KEY = re.compile(r"^[A-Za-z][A-Za-z0-9_.:-]{0,127}$")
_DEVICE_PREFIXES = ("ide", "scsi", "sata", "nvme", "ethernet", "floppy", "serial", "parallel",
                    "usb", "sound", "vmci", "pcibridge", "uuid.", "virtualhw.")
_WRITTEN_KEYS = (".encoding", "config.version", "displayname", "guestos", "memsize", "numvcpus")


def _mac_or_none(text: str | None) -> str | None:
    if not text:
        return None
    try:
        return format_mac(parse_mac(text))
    except FormatError:
        return text


def _q(text: str) -> str:
    """A vmx value: quotes and control characters cannot break out of the line."""
    return "".join(c for c in text if c >= " " and c not in '"|')


def describe_package(path: str) -> dict[str, object]:
    """What `vdisk info PACKAGE` shows: members, slots, capacities, NICs, settings and the
    manifest's declared digests (nothing is hashed here: `bundle check` does that)."""
    with open_package(path) as pkg:
        env = pkg.envelope
        digests = [{"name": e.name, "algorithm": e.algorithm, "digest": e.digest}
                   for e in pkg.manifest_entries()[0]]
        cpu = _quantity(env, ovf.RT_CPU)
        return {
            "package": path, "kind": pkg.kind, "ovf": pkg.ovf_name, "ovf_version": env.version,
            "name": env.name, "system_type": env.system_type, "os_type": env.os_type,
            "memsize_mb": memsize_text(env),
            "numvcpus": None if cpu is None else cpu.get("VirtualQuantity"),
            "members": [m.to_dict() for m in pkg.members],
            "disks": [d.to_dict() for d in pkg.disks()],
            "nics": [{"model": n.model, "subtype": n.subtype, "mac": n.mac,
                      "network": n.network} for n in pkg.nics()],
            "extra_config": dict(env.extra_config), "config": dict(env.config),
            "manifest": None if pkg.manifest is None else pkg.manifest.name,
            "digests": digests, "findings": [f.to_dict() for f in pkg.findings],
        }
