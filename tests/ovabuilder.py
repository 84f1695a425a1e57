"""An independent builder of OVF packages, written from DMTF DSP0243 (OVF 1.1 / 2.0) and
VMware's export layout: the descriptor first, then the manifest, then the disks; the disks
streamOptimized, made by Debian's VMDKstream (VMware's layout) or by qemu-img.

It shares no code with vdisk: the raw disk contents come from mkfs.fat, sfdisk, mtools and
the tests' own firmware and dump builders; the XML is text from a template; the tar is
written by the standard library's tarfile; the digests by hashlib. Hostile variants (names
with `..`, links, devices, duplicates, truncated members, DTDs) are made here too.
"""
from __future__ import annotations

import hashlib
import io
import os
import shutil
import tarfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import dumpbuilder
import fatutil
import fwbuilder
from conftest import need, need_tool, run
from vmdkcorpus import vmdkstream_available, write_stream_vmdkstream

MIB = 1 << 20
OVF1 = "http://schemas.dmtf.org/ovf/envelope/1"
OVF2 = "http://schemas.dmtf.org/ovf/envelope/2"
RASD = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData"
VSSD = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData"
VMW = "http://www.vmware.com/schema/ovf"
STREAM = "http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"
SLOTS = {"boot": "ide0:0", "cf": "ide0:1", "flash": "ide1:0", "dump": "ide1:1"}
CAPACITY = {"boot": 32 * MIB, "cf": 64 * MIB, "flash": 100 * MIB, "dump": 64 * MIB}
FLASH_PATTERN_OFFSET = 3 * 64 * 1024


@dataclass(frozen=True)
class DiskSpec:
    role: str
    href: str                     # the file name inside the package ("may differ")
    slot: str
    capacity: int                 # in `units`
    units: str | None = "byte"


@dataclass(frozen=True)
class NicSpec:
    subtype: str = "PCNet32"
    mac: str | None = "00:50:56:01:02:03"
    network: str = "VM Network"


@dataclass(frozen=True)
class OvaSpec:
    version: int = 2
    name: str = "ipva"
    disks: tuple[DiskSpec, ...] = ()
    nics: tuple[NicSpec, ...] = (NicSpec(),)
    memory_mb: int = 64
    memory_units: str = "byte * 2^20"
    cpus: int = 1
    extra_config: tuple[tuple[str, str], ...] = (("monitor_control.pseudo_perfctr", "TRUE"),)
    reorder: bool = False         # hardware items in reverse document order
    manifest: str | None = "SHA256"
    ovf_name: str = "ipva.ovf"


def default_disks(names: dict[str, str] | None = None) -> tuple[DiskSpec, ...]:
    names = names or {r: f"ipva-disk{i + 1}.vmdk" for i, r in enumerate(SLOTS)}
    return tuple(DiskSpec(r, names[r], SLOTS[r], CAPACITY[r] // MIB, "byte * 2^20")
                 for r in SLOTS)


# -- the disks --------------------------------------------------------------------------------
def raw_disks(work: Path) -> dict[str, Path]:
    """Raw appliance disks made by the independent tools."""
    work.mkdir(parents=True, exist_ok=True)
    boot = work / "boot.raw"
    fwbuilder.make_raw_boot(str(boot), fwbuilder.standard().to_bytes())
    cf = work / "cf.raw"
    off = fatutil.mkfs(cf, CAPACITY["cf"], 16, partition=True, extra=("-n", "IPVACF"))
    fatutil.mtools_fill(cf, off, {"CONFIG.TXT": b"cf content\r\n" * 100}, work)
    flash = work / "flash.raw"
    with open(flash, "wb") as f:
        f.truncate(CAPACITY["flash"])
        f.seek(FLASH_PATTERN_OFFSET)
        f.write(bytes(range(256)) * 64)
    dump = work / "dump.raw"
    slots = (CAPACITY["dump"] // 512 - dumpbuilder.FIRST_SLOT_LBA) // 2048
    with open(dump, "wb") as f:
        f.truncate(CAPACITY["dump"])
        f.write(dumpbuilder.store_header(2048, slots, 0))
    return {"boot": boot, "cf": cf, "flash": flash, "dump": dump}


def stream_disks(raws: dict[str, Path], work: Path, tool: str = "vmdkstream") -> dict[str, Path]:
    """streamOptimized copies: VMware's layout (VMDKstream) or qemu's."""
    out = {}
    for role, raw in raws.items():
        dst = work / f"{role}-{tool}.vmdk"
        if tool == "vmdkstream":
            need(vmdkstream_available(), "python3-vmdkstream")
            write_stream_vmdkstream(raw, dst)
        else:
            need_tool("qemu-img")
            run("qemu-img", "convert", "-f", "raw", "-O", "vmdk", "-o",
                "subformat=streamOptimized", str(raw), str(dst))
        out[role] = dst
    return out


# -- the descriptor ---------------------------------------------------------------------------
def _item(**rasd: object) -> str:
    body = "".join(f"<rasd:{k}>{v}</rasd:{k}>" for k, v in sorted(rasd.items()) if v is not None)
    return f"      <Item>{body}</Item>\n"


def ovf_xml(spec: OvaSpec, sizes: dict[str, int]) -> bytes:
    ns = OVF2 if spec.version == 2 else OVF1
    refs = "".join(f'    <File ovf:href="{d.href}" ovf:id="file-{d.role}" ovf:size="{sizes[d.href]}"/>\n'
                   for d in spec.disks)
    units = lambda d: f' ovf:capacityAllocationUnits="{d.units}"' if d.units else ""  # noqa: E731
    disks = "".join(f'    <Disk ovf:capacity="{d.capacity}"{units(d)} ovf:diskId="disk-{d.role}" '
                    f'ovf:fileRef="file-{d.role}" ovf:format="{STREAM}"/>\n' for d in spec.disks)
    items = [
        _item(InstanceID=1, ResourceType=3, VirtualQuantity=spec.cpus,
              AllocationUnits="hertz * 10^6", ElementName=f"{spec.cpus} virtual CPU(s)"),
        _item(InstanceID=2, ResourceType=4, VirtualQuantity=spec.memory_mb,
              AllocationUnits=spec.memory_units, ElementName="memory"),
        _item(InstanceID=10, ResourceType=5, Address=0, ElementName="IDE Controller 0"),
        _item(InstanceID=11, ResourceType=5, Address=1, ElementName="IDE Controller 1"),
    ]
    for n, d in enumerate(spec.disks):
        bus, unit = d.slot.split(":")
        items.append(_item(InstanceID=20 + n, ResourceType=17, Parent=10 + int(bus[-1]),
                           AddressOnParent=unit, HostResource=f"ovf:/disk/disk-{d.role}",
                           ElementName=f"Hard disk {n + 1}"))
    for n, nic in enumerate(spec.nics):
        items.append(_item(InstanceID=30 + n, ResourceType=10, ResourceSubType=nic.subtype,
                           Address=nic.mac, Connection=nic.network, AutomaticAllocation="true",
                           AddressOnParent=7 + n, ElementName=f"Network adapter {n + 1}"))
    if spec.reorder:
        items.reverse()
    extra = "".join(f'      <vmw:ExtraConfig ovf:required="false" vmw:key="{k}" vmw:value="{v}"/>\n'
                    for k, v in spec.extra_config)
    text = f"""<?xml version="1.0" encoding="UTF-8"?>
<Envelope xmlns="{ns}" xmlns:ovf="{ns}" xmlns:rasd="{RASD}" xmlns:vssd="{VSSD}" xmlns:vmw="{VMW}">
  <References>
{refs}  </References>
  <DiskSection>
    <Info>Virtual disk information</Info>
{disks}  </DiskSection>
  <NetworkSection>
    <Info>The list of logical networks</Info>
    <Network ovf:name="VM Network"><Description>The VM Network network</Description></Network>
  </NetworkSection>
  <VirtualSystem ovf:id="{spec.name}">
    <Info>A virtual machine</Info>
    <Name>{spec.name}</Name>
    <OperatingSystemSection ovf:id="1" vmw:osType="otherGuest"><Info>OS</Info></OperatingSystemSection>
    <VirtualHardwareSection>
      <Info>Virtual hardware requirements</Info>
      <System>
        <vssd:ElementName>Virtual Hardware Family</vssd:ElementName>
        <vssd:InstanceID>0</vssd:InstanceID>
        <vssd:VirtualSystemIdentifier>{spec.name}</vssd:VirtualSystemIdentifier>
        <vssd:VirtualSystemType>vmx-07</vssd:VirtualSystemType>
      </System>
{"".join(items)}{extra}    </VirtualHardwareSection>
  </VirtualSystem>
</Envelope>
"""
    return text.encode("utf-8")


def manifest(files: dict[str, bytes | Path], algorithm: str) -> bytes:
    lines = []
    for name, content in files.items():
        h = hashlib.new(algorithm.lower())
        h.update(content if isinstance(content, bytes) else content.read_bytes())
        lines.append(f"{algorithm}({name})= {h.hexdigest()}\n")
    return "".join(lines).encode()


# -- the package ------------------------------------------------------------------------------
@dataclass
class Package:
    """What to put in the tar, in order: (name, bytes or a file)."""

    members: list[tuple[str, bytes | Path]] = field(default_factory=list)

    def write_tar(self, path: Path, extra: list[tarfile.TarInfo] | None = None) -> Path:
        with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
            for name, content in self.members:
                data = content if isinstance(content, bytes) else content.read_bytes()
                info = tarfile.TarInfo(name)
                info.size, info.mode, info.mtime = len(data), 0o644, 1700000000
                tar.addfile(info, io.BytesIO(data))
            for info in extra or []:
                tar.addfile(info)
        return path

    def write_folder(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        for name, content in self.members:
            if isinstance(content, bytes):
                (folder / name).write_bytes(content)
            else:
                shutil.copyfile(content, folder / name)
        return folder / self.members[0][0]


def build(spec: OvaSpec, streams: dict[str, Path]) -> Package:
    """VMware's export order: the OVF, the manifest, then the disks in DiskSection order."""
    disks = {d.href: streams[d.role] for d in spec.disks}
    sizes = {h: os.path.getsize(p) for h, p in disks.items()}
    desc = ovf_xml(spec, sizes)
    files: dict[str, bytes | Path] = {spec.ovf_name: desc, **disks}
    pkg = Package([(spec.ovf_name, desc)])
    if spec.manifest:
        pkg.members.append((spec.ovf_name[:-4] + ".mf", manifest(files, spec.manifest)))
    pkg.members += list(disks.items())
    return pkg


def standard_spec(**changes: object) -> OvaSpec:
    return replace(OvaSpec(disks=default_disks()), **changes)  # type: ignore[arg-type]


def FLASH_RAW_MARKER_FILE(folder: Path) -> Path:  # noqa: N802 - reads as a constant
    """A file that is not a VMDK at all, to stand where a disk should be."""
    p = folder / "not-a-vmdk.bin"
    p.write_bytes(b"this is not a virtual disk\n" * 100)
    return p


def special(name: str, kind: bytes, linkname: str = "") -> tarfile.TarInfo:
    """A tar member that is not a regular file (link, device, FIFO)."""
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, linkname, 0o644
    if kind in (tarfile.CHRTYPE, tarfile.BLKTYPE):
        info.devmajor, info.devminor = 1, 3
    return info


def edit_ovf(pkg: Package, old: str, new: str, algorithm: str = "SHA256") -> Package:
    """The package with its descriptor edited (once) and the manifest recomputed, so that
    only the edit is wrong."""
    name, desc = pkg.members[0]
    assert isinstance(desc, bytes) and desc.count(old.encode()) >= 1, old
    members = [(name, desc.replace(old.encode(), new.encode(), 1))] + pkg.members[1:]
    files = {n: c for n, c in members if not n.endswith(".mf")}
    return Package([(n, manifest(files, algorithm) if n.endswith(".mf") else c)
                    for n, c in members])
