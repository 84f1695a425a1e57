"""Golden images: a complete new appliance bundle, and clones of an existing one.

`create_bundle` writes the vmx (every key the appliance needs, ipva-model §6), a boot disk
holding a verified firmware, a formatted CF, a blank 100 MiB flash and an initialised dump
store, in the subformat of the target hypervisor. `clone_bundle` stamps a new appliance
from a golden one: new MAC and uuid.bios, disks copied sparse, optionally a blank flash.

Both build everything in a temporary folder beside the destination and rename it into
place at the end: a crash leaves no half-made bundle under the destination's name.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass

from .. import clock
from ..errors import LockedError, RefusedError, UnsupportedError
from ..formats import dump_store as ds
from ..fs.format import format_volume
from ..image import platform, safe
from ..image.base import FileDevice
from ..image.create import create_image, like
from ..image.disk import open_image
from ..image.safe import LockOverrideWarning
from .boot import DEFAULT_BOOT_BYTES, create_boot_disk
from .bundle import (
    PERFCTR_KEY,
    apply_mac,
    format_mac,
    format_uuid_bios,
    open_bundle,
    random_static_mac,
    relpath_in,
    validate_static_mac,
)
from .dump import apply_clear, plan_clear
from .vmx import IDE_ROLES, Vmx

MiB = 1 << 20
TARGETS = {"workstation": "monolithicSparse", "vsphere": "vmfs", "ova": "streamOptimized"}
FLASH_BYTES = 100 * MiB
DUMP_BYTES = 64 * MiB
DEFAULT_CF_BYTES = 1 << 30
CF_LABEL = "IPVACF"
DISK_NAMES = {"boot": "hd-boot.vmdk", "cf": "hd-cf.vmdk", "flash": "hd-flash.vmdk",
              "dump": "hd-dump.vmdk"}
Progress = Callable[[str], None]


@dataclass(frozen=True)
class CreatePlan:
    folder: str
    name: str
    firmware: str
    target: str
    cf_bytes: int
    memsize_mb: int
    mac: int
    uuid_bios: bytes = b""          # chosen with the plan, so a dry run shows what is written
    compression_level: int = 6      # zlib's, for the streamOptimized disks of an OVA

    @property
    def subformat(self) -> str:
        return TARGETS[self.target]

    def sizes(self) -> dict[str, int]:
        return {"boot": DEFAULT_BOOT_BYTES, "cf": self.cf_bytes, "flash": FLASH_BYTES,
                "dump": DUMP_BYTES}

    def to_dict(self) -> dict[str, object]:
        return {"folder": self.folder, "name": self.name, "firmware": self.firmware,
                "target": self.target, "subformat": self.subformat,
                "memsize_mb": self.memsize_mb, "mac": format_mac(self.mac),
                "uuid_bios": format_uuid_bios(self.uuid_bios) if self.uuid_bios else None,
                "disks": {DISK_NAMES[r]: n for r, n in self.sizes().items()}}


def _empty_destination(folder: str) -> None:
    if os.path.isdir(folder):
        locks = sorted(n for n in os.listdir(folder) if n.endswith(".lck") or n.startswith(".lck-"))
        if locks:
            raise LockedError(f"{locks[0]} exists in the destination: a VM there is running",
                              path=folder, hint="choose a new folder for the bundle")
    if os.path.lexists(folder) and (not os.path.isdir(folder) or os.listdir(folder)):
        raise RefusedError("exists and is not an empty folder; refusing to overwrite it",
                           path=folder, hint="choose a new folder for the bundle")


def plan_create(folder: str, firmware: str, *, cf_bytes: int = DEFAULT_CF_BYTES,
                memsize_mb: int = 64, mac: str | None = None, target: str = "workstation",
                name: str = "ipva", compression_level: int = 6) -> CreatePlan:
    """Check every input before anything is written."""
    if not 1 <= compression_level <= 9:
        raise RefusedError(f"compression level must be 1..9, got {compression_level}")
    if target not in TARGETS:
        raise RefusedError(f"unknown target {target!r}; choose one of {', '.join(TARGETS)}")
    if memsize_mb < 20 or memsize_mb % 4:
        raise RefusedError(f"memsize {memsize_mb} MB: must be a multiple of 4, at least 20")
    if cf_bytes < 16 * MiB or cf_bytes % MiB:
        raise RefusedError(f"CF size {cf_bytes} bytes: must be whole MiB, at least 16 MiB")
    if not os.path.isfile(firmware):
        raise RefusedError("no such firmware file", path=firmware)
    _empty_destination(folder)
    value = validate_static_mac(mac) if mac else random_static_mac()
    return CreatePlan(os.path.abspath(folder), name, firmware, target, cf_bytes, memsize_mb, value,
                      new_uuid(value), compression_level)


def build_vmx_text(plan: CreatePlan) -> str:
    """The vmx of a new appliance: every key ipva-model §6 asks for."""
    net = ('ethernet0.networkName = "VM Network"' if plan.target == "vsphere"
           else 'ethernet0.connectionType = "bridged"')
    lines = [
        '.encoding = "UTF-8"', 'config.version = "8"', 'virtualHW.version = "7"',
        f'displayName = "{plan.name}"', 'guestOS = "other"', f'memsize = "{plan.memsize_mb}"',
        'numvcpus = "1"', f'{PERFCTR_KEY} = "TRUE"',
    ]
    for slot, role in IDE_ROLES.items():
        lines += [f'{slot}.present = "TRUE"', f'{slot}.fileName = "{DISK_NAMES[role]}"']
    lines += ['ethernet0.present = "TRUE"', 'ethernet0.virtualDev = "vlance"', net,
              'ethernet0.addressType = "static"', f'ethernet0.address = "{format_mac(plan.mac)}"',
              f'uuid.bios = "{format_uuid_bios(plan.uuid_bios or new_uuid(plan.mac))}"']
    return "\n".join(lines) + "\n"


def new_uuid(mac: int) -> bytes:
    """A random uuid.bios whose last three bytes are the MAC's (as set-mac keeps them)."""
    return clock.token_bytes(13) + mac.to_bytes(6, "big")[3:]


def apply_create(plan: CreatePlan, progress: Progress | None = None) -> list[str]:
    """Write the bundle; returns its files (relative to the folder)."""
    say = progress or (lambda _msg: None)
    work = _work_folder(plan.folder)
    try:
        sub, sizes = plan.subformat, plan.sizes()
        path = {role: os.path.join(work, DISK_NAMES[role]) for role in DISK_NAMES}
        say("boot disk")
        level = plan.compression_level
        create_boot_disk(path["boot"], plan.firmware, sizes["boot"], sub, "ide",
                         compression_level=level)
        say("CF disk")
        _from_scratch(path["cf"], sizes["cf"], sub,
                      lambda dev: format_volume(dev, label=CF_LABEL, partition=True), level)
        say("flash disk")
        create_image(path["flash"], sizes["flash"], sub, "ide", compression_level=level)
        say("dump disk")
        _from_scratch(path["dump"], sizes["dump"], sub,
                      lambda dev: apply_clear(dev, plan_clear(dev, ds.DEFAULT_SLOT_SECTORS)), level)
        vmx_path = os.path.join(work, f"{plan.name}.vmx")
        with open(vmx_path, "w", encoding="utf-8", newline="\n") as f:
            f.write(build_vmx_text(plan))
        if plan.target == "ova":
            say("OVF and OVA")
            write_ova(work, plan, path)
        _install(work, plan.folder)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return sorted(os.listdir(plan.folder))


def _from_scratch(path: str, size_bytes: int, subformat: str, fill: Callable[[FileDevice], object],
                  compression_level: int = 6) -> None:
    """Fill a sparse raw scratch file, then write it as a VMDK of `subformat`."""
    scratch = safe.create_temp(path + ".raw")
    try:
        with open(scratch, "r+b") as f:
            platform.set_sparse(f.fileno())
            f.truncate(size_bytes)
        with FileDevice(scratch, writable=True) as dev:
            fill(dev)
            dev.flush()
        with FileDevice(scratch) as src:
            create_image(path, size_bytes, subformat, "ide", source=src,
                         compression_level=compression_level)
    finally:
        os.unlink(scratch)


def _work_folder(dest: str) -> str:
    dest = os.path.abspath(dest)
    work = os.path.join(os.path.dirname(dest), f".{os.path.basename(dest)}{safe.TMP_MARK}{os.getpid()}")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    return work


def _install(work: str, dest: str) -> None:
    """Rename the finished folder into place (an empty destination folder is replaced)."""
    for name in os.listdir(work):
        safe.fsync_path(os.path.join(work, name))
    if os.path.isdir(dest):
        os.rmdir(dest)
    platform.replace(work, dest)
    safe.fsync_dir(dest)


# -- clone ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ClonePlan:
    source_vmx: str
    folder: str
    mac: int
    reset_flash: bool
    disks: tuple[tuple[str, str, tuple[str, ...]], ...]   # (slot, new fileName, files to copy)
    uuid_bios: bytes = b""          # chosen with the plan, so a dry run shows what is written

    def to_dict(self) -> dict[str, object]:
        return {"source": self.source_vmx, "folder": self.folder, "mac": format_mac(self.mac),
                "uuid_bios": format_uuid_bios(self.uuid_bios) if self.uuid_bios else None,
                "reset_flash": self.reset_flash,
                "disks": [{"slot": s, "file": n, "copies": list(f)} for s, n, f in self.disks]}


def plan_clone(src: str, dst: str, *, mac: str | None = None, reset_flash: bool = False,
               force: bool = False) -> ClonePlan:
    """Check the source (not running, disks present, chains inside its folder)."""
    b = open_bundle(src)
    locks = b.lock_paths()
    if locks and not force:
        raise RefusedError(f"{os.path.basename(locks[0])} exists: the source VM is running",
                           path=locks[0], hint="power it off first (or --force for a stale lock)")
    if locks:
        warnings.warn(f"{os.path.basename(locks[0])} exists (the source VM may be running); "
                      "continuing because of --force", LockOverrideWarning, stacklevel=2)
    _empty_destination(dst)
    disks = []
    for slot_name in IDE_ROLES:
        path = b.vmx.disk_for_slot(slot_name)
        if path is None:
            raise RefusedError(f"the source attaches no disk at {slot_name}", path=b.vmx_path,
                               hint="run 'vdisk bundle check' on it")
        with open_image(path) as disk:
            files: list[str] = []
            for link in disk.chain():
                for f in link.files:
                    if f not in files:
                        files.append(f)
        for f in files:
            if relpath_in(b.folder, f) == f or os.path.dirname(relpath_in(b.folder, f)):
                raise UnsupportedError(f"{f} lies outside the bundle folder; copy or consolidate "
                                       "it first", path=b.vmx_path)
        disks.append((slot_name, relpath_in(b.folder, path), tuple(files)))
    value = validate_static_mac(mac) if mac else random_static_mac()
    return ClonePlan(b.vmx_path, os.path.abspath(dst), value, reset_flash, tuple(disks),
                     new_uuid(value))


def apply_clone(plan: ClonePlan, progress: Progress | None = None) -> list[str]:
    say = progress or (lambda _msg: None)
    work = _work_folder(plan.folder)
    try:
        vmx = Vmx.read(plan.source_vmx)
        for slot, name, files in plan.disks:
            if plan.reset_flash and IDE_ROLES[slot] == "flash":
                say(f"{name}: blank flash")
                with open_image(os.path.join(os.path.dirname(plan.source_vmx), name)) as disk:
                    shape = like(disk)
                create_image(os.path.join(work, os.path.basename(name)), int(shape["size_bytes"]),
                             str(shape["subformat"]), str(shape["adapter"]),
                             template=shape["template"])
                continue
            for f in files:
                say(f"copying {os.path.basename(f)}")
                safe.sparse_copy(f, os.path.join(work, os.path.basename(f)))
        apply_mac(vmx, plan.mac)
        vmx.set("uuid.bios", format_uuid_bios(plan.uuid_bios or new_uuid(plan.mac)))
        for key in ("uuid.location", "vc.uuid", "sched.swap.derivedName"):
            vmx.remove(key)
        vmx.set("displayName", os.path.basename(plan.folder))
        vmx.save(os.path.join(work, os.path.basename(plan.source_vmx)))
        _install(work, plan.folder)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return sorted(os.listdir(plan.folder))


# -- OVF / OVA (DSP0243 1.x, with VMware's vmw: extensions) -------------------------------------
NS = {"": "http://schemas.dmtf.org/ovf/envelope/1",
      "ovf": "http://schemas.dmtf.org/ovf/envelope/1",
      "rasd": "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData",
      "vssd": "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData",
      "vmw": "http://www.vmware.com/schema/ovf"}
STREAM_FORMAT = "http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"
RT_CPU, RT_MEMORY, RT_IDE, RT_ETHERNET, RT_DISK = 3, 4, 5, 10, 17


def _q(prefix: str, tag: str) -> str:
    return f"{{{NS[prefix]}}}{tag}"


def _sub(parent: ET.Element, prefix: str, tag: str, text: str | None = None,
         **attrs: str) -> ET.Element:
    el = ET.SubElement(parent, _q(prefix, tag),
                       {_q(k.split("_", 1)[0], k.split("_", 1)[1]): v for k, v in attrs.items()})
    if text is not None:
        el.text = text
    return el


def _item(hw: ET.Element, **rasd: object) -> None:
    """One rasd Item; CIM wants its elements in alphabetical order."""
    item = _sub(hw, "", "Item")
    for key in sorted(rasd):
        _sub(item, "rasd", key, str(rasd[key]))


def build_ovf(plan: CreatePlan, disks: dict[str, str]) -> bytes:
    """The OVF descriptor: four streamOptimized disks on the two IDE controllers, a PCnet
    NIC with the static MAC, and the vmx-only keys as vmw:ExtraConfig."""
    for prefix, uri in NS.items():
        ET.register_namespace(prefix, uri)
    env = ET.Element(_q("", "Envelope"))
    refs = _sub(env, "", "References")
    dsec = _sub(env, "", "DiskSection")
    _sub(dsec, "", "Info", "Virtual disk information")
    sizes = plan.sizes()
    for i, role in enumerate(DISK_NAMES, 1):
        path = disks[role]
        _sub(refs, "", "File", ovf_href=os.path.basename(path), ovf_id=f"file{i}",
             ovf_size=str(os.path.getsize(path)))
        _sub(dsec, "", "Disk", ovf_capacity=str(sizes[role]), ovf_diskId=f"vmdisk{i}",
             ovf_fileRef=f"file{i}", ovf_format=STREAM_FORMAT)
    net = _sub(env, "", "NetworkSection")
    _sub(net, "", "Info", "The logical networks")
    _sub(_sub(net, "", "Network", ovf_name="VM Network"), "", "Description", "The VM Network")
    vs = _sub(env, "", "VirtualSystem", ovf_id=plan.name)
    _sub(vs, "", "Info", "The innovaphone Virtual Appliance")
    _sub(vs, "", "Name", plan.name)
    os_sec = _sub(vs, "", "OperatingSystemSection", ovf_id="1", vmw_osType="otherGuest")
    _sub(os_sec, "", "Info", "The guest operating system")
    hw = _sub(vs, "", "VirtualHardwareSection")
    _sub(hw, "", "Info", "Virtual hardware requirements")
    system = _sub(hw, "", "System")
    for tag, text in (("ElementName", "Virtual Hardware Family"), ("InstanceID", "0"),
                      ("VirtualSystemIdentifier", plan.name), ("VirtualSystemType", "vmx-07")):
        _sub(system, "vssd", tag, text)
    _item(hw, AllocationUnits="hertz * 10^6", ElementName="1 virtual CPU", InstanceID=1,
          ResourceType=RT_CPU, VirtualQuantity=1)
    _item(hw, AllocationUnits="byte * 2^20", ElementName=f"{plan.memsize_mb} MB of memory",
          InstanceID=2, ResourceType=RT_MEMORY, VirtualQuantity=plan.memsize_mb)
    _item(hw, Address=0, ElementName="IDE 0", InstanceID=3, ResourceType=RT_IDE)
    _item(hw, Address=1, ElementName="IDE 1", InstanceID=4, ResourceType=RT_IDE)
    for i, (slot, role) in enumerate(IDE_ROLES.items(), 1):
        _item(hw, AddressOnParent=slot[-1], ElementName=f"{slot} {role}",
              HostResource=f"ovf:/disk/vmdisk{i}", InstanceID=4 + i, Parent=3 + int(slot[3]),
              ResourceType=RT_DISK)
    _item(hw, Address=format_mac(plan.mac), AutomaticAllocation="true", Connection="VM Network",
          ElementName="ethernet0", InstanceID=9, ResourceSubType="PCNet32",
          ResourceType=RT_ETHERNET)
    _sub(hw, "vmw", "ExtraConfig", ovf_required="false", vmw_key=PERFCTR_KEY, vmw_value="TRUE")
    ET.indent(env)
    return ET.tostring(env, encoding="UTF-8", xml_declaration=True) + b"\n"


def write_ova(work: str, plan: CreatePlan, disks: dict[str, str]) -> str:
    """`<name>.ovf`, `<name>.mf` (SHA256 of each file) and the `<name>.ova` tar, descriptor
    first as the OVF specification requires."""
    ovf_path = os.path.join(work, f"{plan.name}.ovf")
    with open(ovf_path, "wb") as f:
        f.write(build_ovf(plan, disks))
    members = [ovf_path] + [disks[r] for r in DISK_NAMES]
    mf_path = os.path.join(work, f"{plan.name}.mf")
    with open(mf_path, "w", encoding="ascii", newline="\n") as f:
        f.writelines(f"SHA256({os.path.basename(m)})= {_sha256(m)}\n" for m in members)
    ova = os.path.join(work, f"{plan.name}.ova")
    with tarfile.open(ova, "w", format=tarfile.USTAR_FORMAT) as tar:
        for m in [ovf_path, mf_path] + members[1:]:
            info = tar.gettarinfo(m, arcname=os.path.basename(m))
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            with open(m, "rb") as f:
                tar.addfile(info, f)
    return ova


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
