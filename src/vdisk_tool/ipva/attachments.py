"""What a platform needs beside the four disks to run the appliance (specs/platforms.md):
a `qm` VM configuration for Proxmox VE, a PowerShell script for Hyper-V. Each is built
from a `Machine` (the appliance's identity and size, whatever platform it came from) and
read back from the files vdisk wrote, so that `bundle convert` can start from them.

innovaphone publishes no NIC model, memory or CPU requirements for these platforms; the
defaults below follow the VMware bundle (PCnet, 64 MB, one vCPU) and are parameters.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace

from ..errors import FormatError, RefusedError
from .bundle import format_mac, format_uuid_bios, parse_mac, parse_uuid_bios
from .targets import ROLES

SLOT_OF_ROLE = {"boot": (0, 0), "cf": (0, 1), "flash": (1, 0), "dump": (1, 1)}

# The VMware model a source names -> the same emulated device elsewhere. QEMU's pcnet is
# the AMD PCnet-PCI II that VMware calls vlance; its vmxnet3 emulates VMware's.
QEMU_NIC_OF_VMWARE = {"vlance": "pcnet", "vmxnet3": "vmxnet3", "e1000": "e1000",
                      "e1000e": "e1000e"}
VMWARE_NIC_OF_QEMU = {v: k for k, v in QEMU_NIC_OF_VMWARE.items()}
PROXMOX_NICS = ("pcnet", "vmxnet3", "e1000", "e1000e", "virtio", "rtl8139")
HYPERV_NICS = ("legacy", "synthetic")
VMWARE_NICS = ("vlance", "vmxnet3")
DEFAULT_VMWARE_NIC = "vlance"


@dataclass(frozen=True)
class Machine:
    """The appliance as every platform sees it; `nic` is in the vocabulary of the file it
    was read from (a vmx's virtualDev, a qm model, legacy/synthetic)."""

    name: str
    memsize_mb: int = 64
    cpus: int = 1
    mac: int | None = None
    uuid_bios: bytes | None = None
    nic: str | None = None

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "memsize_mb": self.memsize_mb, "cpus": self.cpus,
                "mac": None if self.mac is None else format_mac(self.mac),
                "uuid_bios": None if self.uuid_bios is None else format_uuid_bios(self.uuid_bios),
                "nic_model": self.nic}


@dataclass(frozen=True)
class PlatformOptions:
    """What only the target platform knows: its NIC model name, Proxmox's VM id, storage
    and bridge, Hyper-V's virtual switch."""

    nic_model: str | None = None
    vmid: int = 100
    storage: str = "local"
    bridge: str = "vmbr0"
    switch: str = ""


def nic_for(target: str, source_nic: str | None, chosen: str | None) -> str:
    """The NIC model a target gets: the one chosen, else the source's device under the
    target's name, else the target's default."""
    allowed = {"proxmox": PROXMOX_NICS, "hyperv": HYPERV_NICS}.get(target, VMWARE_NICS)
    if chosen is not None:
        if chosen not in allowed:
            raise RefusedError(f"NIC model {chosen!r} is not one of {', '.join(allowed)} "
                               f"for {target}")
        return chosen
    src = (source_nic or "").lower()
    if target == "proxmox":
        return QEMU_NIC_OF_VMWARE.get(src, src if src in PROXMOX_NICS else "pcnet")
    if target == "hyperv":
        return src if src in HYPERV_NICS else "legacy"
    vm = VMWARE_NIC_OF_QEMU.get(src, src)
    return vm if vm in VMWARE_NICS else DEFAULT_VMWARE_NIC


def check_machine(m: Machine) -> None:
    if m.memsize_mb < 20 or m.memsize_mb % 4:
        raise RefusedError(f"memory {m.memsize_mb} MB: must be a multiple of 4, at least 20")
    if not 1 <= m.cpus <= 64:
        raise RefusedError(f"{m.cpus} vCPUs: must be 1 to 64")


def _size_text(n: int) -> str:
    for unit, shift in (("T", 40), ("G", 30), ("M", 20), ("K", 10)):
        if n % (1 << shift) == 0:
            return f"{n >> shift}{unit}"
    return str(n)


def uuid_text(data: bytes) -> str:
    """The 16 bytes of uuid.bios, in order, in the 8-4-4-4-12 spelling SMBIOS tools use."""
    h = data.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


# -- Proxmox VE: /etc/pve/qemu-server/<vmid>.conf ----------------------------------------------
QM_NOTES = (
    "innovaphone Virtual Appliance {name}, written by vdisk.",
    "Disks: ide0 boot, ide1 cf, ide2 flash, ide3 dump (VMware's IDE 0:0, 0:1, 1:0, 1:1).",
    "innovaphone publishes no NIC model, memory or CPU needs for Proxmox VE: NIC {nic}",
    "(the device of the source bundle), {mem} MB as shipped, 1 vCPU. Change with",
    "vdisk bundle convert --nic-model/--memory/--cpus. The licence is bound to the MAC.",
    "Import on the Proxmox VE host (directory storage {storage}, e.g. /var/lib/vz):",
    "  mkdir -p /var/lib/vz/images/{vmid} && cp vm-{vmid}-hd-*.qcow2 /var/lib/vz/images/{vmid}/",
    "  cp {vmid}.conf /etc/pve/qemu-server/{vmid}.conf",
    "Other storages: qm disk import {vmid} FILE STORAGE for each disk (qm importdisk",
    "before PVE 7), then qm set {vmid} --ideN VOLUME in the order above.",
)
_NAME_OK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.-]{0,62}$")


def proxmox_name(name: str) -> str:
    """A VM name Proxmox accepts (a DNS name): other characters become '-'."""
    out = re.sub(r"[^A-Za-z0-9.-]", "-", name).strip("-.")[:63] or "ipva"
    return out if _NAME_OK.match(out) else "ipva"


def build_qm_conf(m: Machine, opts: PlatformOptions, disks: dict[str, tuple[str, int]]) -> str:
    """The VM configuration, keys as `qm config` prints them; `disks` maps each role to
    (file name in the storage's images/<vmid>/ folder, capacity in bytes)."""
    nic = nic_for("proxmox", m.nic, opts.nic_model)
    notes = [line.format(name=m.name, nic=nic, mem=m.memsize_mb, storage=opts.storage,
                         vmid=opts.vmid) for line in QM_NOTES]
    keys = {"balloon": "0", "boot": "order=ide0", "cores": str(m.cpus), "memory": str(m.memsize_mb),
            "name": proxmox_name(m.name), "ostype": "other", "sockets": "1"}
    for i, role in enumerate(ROLES):
        name, size = disks[role]
        keys[f"ide{i}"] = f"{opts.storage}:{opts.vmid}/{name},size={_size_text(size)}"
    if m.mac is not None:
        keys["net0"] = f"{nic}={format_mac(m.mac)},bridge={opts.bridge}"
    else:
        keys["net0"] = f"{nic},bridge={opts.bridge}"
    if m.uuid_bios:
        keys["smbios1"] = f"uuid={uuid_text(m.uuid_bios)}"
    return "".join(f"#{n}\n" for n in notes) + "".join(f"{k}: {keys[k]}\n" for k in sorted(keys))


def parse_qm_conf(text: str) -> dict[str, str]:
    """The keys of the current configuration (snapshot sections and notes left out)."""
    out: dict[str, str] = {}
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if line.startswith("["):
            break
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition(":")
        if not sep or not re.fullmatch(r"[a-z][a-z0-9_-]*", key.strip()):
            raise FormatError(f"line {n} is not 'key: value': {line[:60]!r}")
        out[key.strip()] = value.strip()
    return out


def property_list(value: str) -> tuple[str | None, dict[str, str]]:
    """`pcnet=MAC,bridge=vmbr0` -> ("pcnet=MAC", {...}); a first item without '=' (a
    volume) or naming the model is returned as the head."""
    items = value.split(",")
    head = items[0]
    props = dict(p.split("=", 1) for p in items[1:] if "=" in p)
    return head, props


def read_qm_machine(text: str) -> tuple[Machine, dict[str, str]]:
    """(the machine, the volume file of each role) of a configuration vdisk wrote."""
    keys = parse_qm_conf(text)
    files: dict[str, str] = {}
    for i, role in enumerate(ROLES):
        head, _ = property_list(keys.get(f"ide{i}", ""))
        if not head or ":" not in head:
            raise FormatError(f"ide{i} ({role} disk) names no volume")
        files[role] = head.split(":", 1)[1].rsplit("/", 1)[-1]
    nic, mac = None, None
    head, _ = property_list(keys.get("net0", ""))
    if head:
        model, _, addr = head.partition("=")
        nic, mac = model, parse_mac(addr) if addr else None
    uuid = None
    smbios = dict(p.split("=", 1) for p in keys.get("smbios1", "").split(",") if "=" in p)
    if "uuid" in smbios:
        uuid = parse_uuid_bios(smbios["uuid"])
    cores = int(keys.get("cores", "1")) * int(keys.get("sockets", "1"))
    return Machine(keys.get("name", "ipva"), int(keys.get("memory", "64")), cores, mac, uuid,
                   nic), files


# -- Hyper-V: a PowerShell script making a generation 1 VM -------------------------------------
def _ps(text: str) -> str:
    """A PowerShell single-quoted string literal."""
    return "'" + text.replace("'", "''") + "'"


HYPERV_NOTES = (
    "innovaphone Virtual Appliance {name} for Hyper-V, written by vdisk.",
    "Creates a generation 1 VM (BIOS, IDE) with the four VHDX disks beside this script on",
    "IDE 0:0 boot, 0:1 cf, 1:0 flash, 1:1 dump; the default DVD drive on IDE 1:0 is removed.",
    "innovaphone publishes no NIC model, memory or CPU needs for Hyper-V: this script uses a",
    "{nic} network adapter, {mem} MB of static memory and 1 vCPU; change them with",
    "vdisk bundle convert --nic-model legacy|synthetic, --memory, --cpus.",
    "The licence is bound to the MAC, which is set static below.",
    "Run on the Hyper-V host, from this folder, as an administrator:",
    "  powershell -ExecutionPolicy Bypass -File .\\{script} [-SwitchName 'External']",
)


def build_hyperv_script(m: Machine, opts: PlatformOptions, disks: dict[str, str],
                        script_name: str) -> str:
    """The script; `disks` maps each role to its VHDX file name beside the script."""
    nic = nic_for("hyperv", m.nic, opts.nic_model)
    lines = [f"# {n.format(name=m.name, nic=nic, mem=m.memsize_mb, script=script_name)}"
             for n in HYPERV_NOTES]
    if m.uuid_bios:
        lines += ["# Hyper-V gives the VM its own BIOS GUID; the source's uuid.bios was:",
                  f"# uuid.bios: {format_uuid_bios(m.uuid_bios)}"]
    lines += ["param(", f"    [string]$Name = {_ps(m.name)},",
              f"    [string]$SwitchName = {_ps(opts.switch)}", ")",
              "$ErrorActionPreference = 'Stop'", "$Here = $PSScriptRoot", "",
              f"New-VM -Name $Name -Generation 1 -MemoryStartupBytes {m.memsize_mb}MB -NoVHD "
              "-Path $Here | Out-Null",
              f"Set-VMMemory -VMName $Name -DynamicMemoryEnabled $false -StartupBytes "
              f"{m.memsize_mb}MB",
              f"Set-VMProcessor -VMName $Name -Count {m.cpus}",
              "Get-VMDvdDrive -VMName $Name | Remove-VMDvdDrive",
              "Get-VMNetworkAdapter -VMName $Name | Remove-VMNetworkAdapter",
              "Add-VMNetworkAdapter -VMName $Name -Name 'ETH0' -IsLegacy "
              + ("$true" if nic == "legacy" else "$false")]
    if m.mac is not None:
        lines.append("Set-VMNetworkAdapter -VMName $Name -Name 'ETH0' -StaticMacAddress "
                     f"{_ps(f'{m.mac:012X}')}")
    lines.append("if ($SwitchName) { Connect-VMNetworkAdapter -VMName $Name -Name 'ETH0' "
                 "-SwitchName $SwitchName }")
    for role in ROLES:
        ctl, loc = SLOT_OF_ROLE[role]
        lines.append(f"Add-VMHardDiskDrive -VMName $Name -ControllerType IDE -ControllerNumber "
                     f"{ctl} -ControllerLocation {loc} -Path (Join-Path $Here {_ps(disks[role])})")
    order = "'IDE', 'LegacyNetworkAdapter', 'CD', 'Floppy'"
    lines += [f"Set-VMBios -VMName $Name -StartupOrder @({order})",
              'Write-Host "created VM $Name"']
    return "\r\n".join(lines) + "\r\n"


_PS_DISK = re.compile(r"^Add-VMHardDiskDrive -VMName \$Name -ControllerType IDE -ControllerNumber "
                      r"(\d) -ControllerLocation (\d) -Path \(Join-Path \$Here '((?:[^']|'')+)'\)$")


def read_hyperv_machine(text: str) -> tuple[Machine, dict[str, str]]:
    """(the machine, the VHDX file of each role) of a script vdisk wrote."""
    name, mem, cpus, mac, uuid, nic = "ipva", 64, 1, None, None, None
    files: dict[str, str] = {}
    role_at = {v: k for k, v in SLOT_OF_ROLE.items()}
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("# uuid.bios:"):
            uuid = parse_uuid_bios(line.split(":", 1)[1])
        elif (mt := re.match(r"^\[string\]\$Name = '((?:[^']|'')*)',$", line)):
            name = mt.group(1).replace("''", "'")
        elif (mt := re.match(r"^New-VM .*-MemoryStartupBytes (\d+)MB ", line)):
            mem = int(mt.group(1))
        elif (mt := re.match(r"^Set-VMProcessor .*-Count (\d+)$", line)):
            cpus = int(mt.group(1))
        elif (mt := re.match(r"^Add-VMNetworkAdapter .*-IsLegacy \$(true|false)$", line)):
            nic = "legacy" if mt.group(1) == "true" else "synthetic"
        elif (mt := re.match(r"^Set-VMNetworkAdapter .*-StaticMacAddress '([0-9A-Fa-f]{12})'$",
                             line)):
            mac = parse_mac(mt.group(1))
        elif (mt := _PS_DISK.match(line)):
            role = role_at.get((int(mt.group(1)), int(mt.group(2))))
            if role:
                files[role] = mt.group(3).replace("''", "'")
    missing = [r for r in ROLES if r not in files]
    if missing:
        raise FormatError(f"the script attaches no {missing[0]} disk "
                          f"(IDE {SLOT_OF_ROLE[missing[0]][0]}:{SLOT_OF_ROLE[missing[0]][1]})")
    return Machine(name, mem, cpus, mac, uuid, nic), files


def with_identity(m: Machine, mac: int | None, uuid_bios: bytes | None) -> Machine:
    return replace(m, mac=mac, uuid_bios=uuid_bios)
