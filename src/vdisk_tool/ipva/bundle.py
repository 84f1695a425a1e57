"""The appliance bundle: a vmx plus four disks found by IDE slot; its MAC address.

ipva-model §1 and §6: disks are identified by slot (ide0:0 boot, ide0:1 cf, ide1:0 flash,
ide1:1 dump), never by name. Licences are bound to the MAC, so it should be static and in
VMware's static range; when it changes, the last three bytes of `uuid.bios` follow it.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass

from .. import clock
from ..errors import FormatError, RefusedError, VdiskError
from ..formats import vmdk_descriptor as vd
from ..image import safe
from ..image.vmdk.open import read_descriptor as disk_descriptor
from .vmx import IDE_ROLES, DiskSlot, Vmx, find_vmx, vmx_bool

ROLE_SLOTS = {role: slot for slot, role in IDE_ROLES.items()}
STATIC_MAC_LOW = 0x005056000000
STATIC_MAC_HIGH = 0x0050563FFFFF
SUPPORTED_NICS = ("vlance", "vmxnet3")
NIC = "ethernet0"
PERFCTR_KEY = "monitor_control.pseudo_perfctr"
MEMSIZE_MIN_MB = 20

_MAC = re.compile(r'^([0-9A-Fa-f]{2})([:-]?)([0-9A-Fa-f]{2})\2([0-9A-Fa-f]{2})\2'
                  r'([0-9A-Fa-f]{2})\2([0-9A-Fa-f]{2})\2([0-9A-Fa-f]{2})$')


@dataclass(frozen=True)
class Bundle:
    """An opened appliance folder: its vmx and the disks of the four IDE slots."""

    vmx_path: str
    vmx: Vmx
    #: no vmx: the disks were found by content and name (bundle_without_vmx)
    synthetic: bool = False

    @property
    def folder(self) -> str:
        return self.vmx.folder

    def slot_for(self, role: str) -> DiskSlot | None:
        return self.vmx.slot(ROLE_SLOTS[role])

    def disk_path(self, role: str) -> str | None:
        return self.vmx.disk_for_slot(ROLE_SLOTS[role])

    def lock_paths(self) -> list[str]:
        """VMware lock artefacts beside the vmx or any attached disk."""
        found: list[str] = []
        targets = [self.vmx_path] + [s.path for s in self.vmx.slots() if s.is_disk and s.path]
        for t in targets:
            for lck in safe.lock_paths(t):
                if lck not in found:
                    found.append(lck)
        return found


def open_bundle(dir_or_vmx: str) -> Bundle:
    path = find_vmx(dir_or_vmx)
    return Bundle(path, Vmx.read(path))


def bundle_without_vmx(folder: str) -> Bundle | None:
    """A folder of appliance disks without a vmx (Proxmox, Hyper-V): the four IDE slots
    filled from the disks found by content and name (ipva/role.py), as a vmx in memory
    that is never written. None when the folder holds no appliance disk."""
    from .role import disks_by_role
    if not os.path.isdir(folder):
        return None
    found = disks_by_role(folder)
    if not found:
        return None
    lines = "".join(f'{ROLE_SLOTS[r]}.present = "TRUE"\n{ROLE_SLOTS[r]}.fileName = '
                    f'"{os.path.basename(p)}"\n' for r, p in found.items())
    where = os.path.join(os.path.abspath(folder), "(no vmx)")
    return Bundle(os.path.abspath(folder), Vmx(lines.encode(), where), synthetic=True)


# -- MAC ------------------------------------------------------------------------------------
def parse_mac(text: str) -> int:
    """`00:50:56:01:02:03` (or with `-`, or none) -> an int; FormatError when malformed."""
    m = _MAC.match(text.strip())
    if not m:
        raise FormatError(f"{text!r} is not a MAC address (expected 6 hex bytes like 00:50:56:01:02:03)")
    return int("".join(m.group(i) for i in (1, 3, 4, 5, 6, 7)), 16)


def format_mac(value: int) -> str:
    """VMware's spelling: upper-case hex bytes joined by colons."""
    return ":".join(f"{b:02X}" for b in value.to_bytes(6, "big"))


def in_static_range(value: int) -> bool:
    return STATIC_MAC_LOW <= value <= STATIC_MAC_HIGH


def validate_static_mac(text: str) -> int:
    """Parse a MAC and require it to lie in VMware's static range."""
    value = parse_mac(text)
    if not in_static_range(value):
        raise RefusedError(f"{format_mac(value)} lies outside VMware's static range "
                           f"{format_mac(STATIC_MAC_LOW)}-{format_mac(STATIC_MAC_HIGH)}",
                           hint="use 00:50:56:00:00:00 to 00:50:56:3F:FF:FF, or --random")
    return value


def random_static_mac() -> int:
    return STATIC_MAC_LOW + clock.randbelow(STATIC_MAC_HIGH - STATIC_MAC_LOW + 1)


def parse_uuid_bios(text: str) -> bytes:
    """`56 4d 12 ... 78-9a bc ...` -> its 16 bytes."""
    digits = re.sub(r"[\s-]", "", text)
    if not re.fullmatch(r"[0-9A-Fa-f]{32}", digits):
        raise FormatError(f"uuid.bios {text!r} is not 16 hex bytes")
    return bytes.fromhex(digits)


def format_uuid_bios(data: bytes) -> str:
    """VMware's spelling: 8 bytes, a dash, 8 bytes, lower-case, space separated."""
    h = [f"{b:02x}" for b in data]
    return " ".join(h[:8]) + "-" + " ".join(h[8:])


def uuid_with_mac(uuid: bytes, mac: int) -> bytes:
    """uuid.bios whose last three bytes are the MAC's last three, as the MAC-change
    procedure for the IPVA does."""
    return uuid[:13] + mac.to_bytes(6, "big")[3:]


@dataclass(frozen=True)
class MacState:
    """What the vmx says about the NIC's address."""

    address_type: str | None      # "static", "generated", "vpx" or None
    address: str | None           # ethernet0.address
    generated: str | None         # ethernet0.generatedAddress

    @property
    def is_static(self) -> bool:
        return (self.address_type or "").lower() == "static"

    @property
    def effective(self) -> str | None:
        return self.address if self.is_static else (self.generated or self.address)


def mac_state(vmx: Vmx, nic: str = NIC) -> MacState:
    return MacState(vmx.get(f"{nic}.addressType"), vmx.get(f"{nic}.address"),
                    vmx.get(f"{nic}.generatedAddress"))


# VMware accepts a static address outside its range only with this key FALSE
CHECK_MAC_KEY = f"{NIC}.checkMACAddress"


def apply_mac(vmx: Vmx, mac: int, nic: str = NIC) -> None:
    """Make `mac` the NIC's static address; update uuid.bios's last bytes to match."""
    vmx.set(f"{nic}.addressType", "static")
    vmx.set(f"{nic}.address", format_mac(mac))
    vmx.remove(f"{nic}.generatedAddress")
    vmx.remove(f"{nic}.generatedAddressOffset")
    uuid = vmx.get("uuid.bios")
    if uuid is not None:
        vmx.set("uuid.bios", format_uuid_bios(uuid_with_mac(parse_uuid_bios(uuid), mac)))


def relpath_in(folder: str, path: str) -> str:
    """A path for messages: relative to the bundle when inside it."""
    try:
        rel = os.path.relpath(path, folder)
    except ValueError:
        return path
    return path if rel.startswith("..") else rel


def read_descriptor(path: str) -> vd.Descriptor | None:
    """The descriptor a .vmdk carries (a text file or embedded in a sparse extent); None
    when it has none or cannot be read."""
    try:
        return disk_descriptor(path)
    except (VdiskError, OSError):
        return None


@dataclass(frozen=True)
class CidBreak:
    """A snapshot child whose parentCID no longer matches its parent's CID."""

    child: str
    parent: str
    expected_cid: int
    parent_cid: int


def find_cid_break(path: str) -> CidBreak | None:
    """Walk a disk's chain by descriptors only and return the first broken link."""
    seen: set[str] = set()
    while os.path.realpath(path) not in seen and len(seen) < 64:
        seen.add(os.path.realpath(path))
        desc = read_descriptor(path)
        hint = desc.get("parentFileNameHint") if desc else None
        if desc is None or not hint or desc.parent_cid in (None, vd.NO_PARENT_CID):
            return None
        parent = os.path.join(os.path.dirname(os.path.abspath(path)), hint)
        if not os.path.exists(parent):
            parent = os.path.join(os.path.dirname(os.path.abspath(path)),
                                  os.path.basename(hint.replace("\\", "/")))
        pdesc = read_descriptor(parent)
        if pdesc is None or pdesc.cid is None:
            return None
        if pdesc.cid != desc.parent_cid:
            return CidBreak(path, parent, desc.parent_cid, pdesc.cid)  # type: ignore[arg-type]
        path = parent
    return None


# -- safe vmx fixes --------------------------------------------------------------------------
@dataclass(frozen=True)
class VmxFix:
    code: str
    key: str
    old: str | None
    new: str

    def to_dict(self) -> dict[str, object]:
        return {"code": self.code, "key": self.key, "old": self.old, "new": self.new}


def plan_vmx_fixes(vmx: Vmx) -> list[VmxFix]:
    """The safe edits: perfctr on, an unsupported or unset NIC model -> vlance, memsize
    rounded up to a multiple of 4 and at least 20 MB. Nothing that could lose data."""
    fixes = []
    if not vmx_bool(vmx.get(PERFCTR_KEY)):
        fixes.append(VmxFix("vmx.perfctr-missing", PERFCTR_KEY, vmx.get(PERFCTR_KEY), "TRUE"))
    if vmx_bool(vmx.get(f"{NIC}.present")):
        model = vmx.get(f"{NIC}.virtualDev")
        if model is None or model.lower() not in SUPPORTED_NICS:
            fixes.append(VmxFix("vmx.nic-model" if model else "vmx.nic-model-unset",
                                f"{NIC}.virtualDev", model, "vlance"))
    raw = vmx.get("memsize")
    try:
        mem = int(raw) if raw is not None else None
    except ValueError:
        mem = None
    if mem is not None and mem > 0 and (mem % 4 or mem < MEMSIZE_MIN_MB):
        new = max(MEMSIZE_MIN_MB, (mem + 3) // 4 * 4)
        code = "vmx.memsize-multiple" if mem % 4 else "vmx.memsize-low"
        fixes.append(VmxFix(code, "memsize", raw, str(new)))
    return fixes


def apply_vmx_fixes(vmx: Vmx, fixes: list[VmxFix]) -> None:
    for f in fixes:
        vmx.set(f.key, f.new)
