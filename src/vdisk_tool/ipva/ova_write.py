"""Writing an OVF package (DSP0243 1.x, with VMware's vmw: extensions): the descriptor of an
appliance with four streamOptimized disks on the two IDE controllers, its manifest and the
`.ova` tar, descriptor first as the OVF specification requires (specs/ovf.md §Writer)."""
from __future__ import annotations

import hashlib
import os
import tarfile
import xml.etree.ElementTree as ET

from .attachments import Machine, nic_for
from .bundle import PERFCTR_KEY, format_mac, format_uuid_bios
from .targets import ROLES
from .vmx import IDE_ROLES

NS = {"": "http://schemas.dmtf.org/ovf/envelope/1",
      "ovf": "http://schemas.dmtf.org/ovf/envelope/1",
      "rasd": "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData",
      "vssd": "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData",
      "vmw": "http://www.vmware.com/schema/ovf"}
STREAM_FORMAT = "http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"
RT_CPU, RT_MEMORY, RT_IDE, RT_ETHERNET, RT_DISK = 3, 4, 5, 10, 17
OVF_NIC_OF_VMWARE = {"vlance": "PCNet32", "vmxnet3": "VmxNet3"}


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


def build_ovf(m: Machine, disks: dict[str, tuple[str, int]]) -> bytes:
    """The OVF descriptor: four streamOptimized disks on the two IDE controllers, the NIC
    (PCnet unless the machine names vmxnet3) with the MAC, and the vmx-only keys as
    vmw:ExtraConfig. `disks` maps each role to (stream file, capacity in bytes)."""
    for prefix, uri in NS.items():
        ET.register_namespace(prefix, uri)
    env = ET.Element(_q("", "Envelope"))
    refs = _sub(env, "", "References")
    dsec = _sub(env, "", "DiskSection")
    _sub(dsec, "", "Info", "Virtual disk information")
    for i, role in enumerate(ROLES, 1):
        path, capacity = disks[role]
        _sub(refs, "", "File", ovf_href=os.path.basename(path), ovf_id=f"file{i}",
             ovf_size=str(os.path.getsize(path)))
        _sub(dsec, "", "Disk", ovf_capacity=str(capacity), ovf_diskId=f"vmdisk{i}",
             ovf_fileRef=f"file{i}", ovf_format=STREAM_FORMAT)
    net = _sub(env, "", "NetworkSection")
    _sub(net, "", "Info", "The logical networks")
    _sub(_sub(net, "", "Network", ovf_name="VM Network"), "", "Description", "The VM Network")
    vs = _sub(env, "", "VirtualSystem", ovf_id=m.name)
    _sub(vs, "", "Info", "The innovaphone Virtual Appliance")
    _sub(vs, "", "Name", m.name)
    os_sec = _sub(vs, "", "OperatingSystemSection", ovf_id="1", vmw_osType="otherGuest")
    _sub(os_sec, "", "Info", "The guest operating system")
    hw = _sub(vs, "", "VirtualHardwareSection")
    _sub(hw, "", "Info", "Virtual hardware requirements")
    system = _sub(hw, "", "System")
    for tag, text in (("ElementName", "Virtual Hardware Family"), ("InstanceID", "0"),
                      ("VirtualSystemIdentifier", m.name), ("VirtualSystemType", "vmx-07")):
        _sub(system, "vssd", tag, text)
    _item(hw, AllocationUnits="hertz * 10^6", ElementName=f"{m.cpus} virtual CPU(s)",
          InstanceID=1, ResourceType=RT_CPU, VirtualQuantity=m.cpus)
    _item(hw, AllocationUnits="byte * 2^20", ElementName=f"{m.memsize_mb} MB of memory",
          InstanceID=2, ResourceType=RT_MEMORY, VirtualQuantity=m.memsize_mb)
    _item(hw, Address=0, ElementName="IDE 0", InstanceID=3, ResourceType=RT_IDE)
    _item(hw, Address=1, ElementName="IDE 1", InstanceID=4, ResourceType=RT_IDE)
    for i, (slot, role) in enumerate(IDE_ROLES.items(), 1):
        _item(hw, AddressOnParent=slot[-1], ElementName=f"{slot} {role}",
              HostResource=f"ovf:/disk/vmdisk{i}", InstanceID=4 + i, Parent=3 + int(slot[3]),
              ResourceType=RT_DISK)
    nic = {"ElementName": "ethernet0", "InstanceID": 9, "AutomaticAllocation": "true",
           "Connection": "VM Network", "ResourceType": RT_ETHERNET,
           "ResourceSubType": OVF_NIC_OF_VMWARE[nic_for("ova", m.nic, None)]}
    if m.mac is not None:
        nic["Address"] = format_mac(m.mac)
    _item(hw, **nic)
    _sub(hw, "vmw", "ExtraConfig", ovf_required="false", vmw_key=PERFCTR_KEY, vmw_value="TRUE")
    if m.uuid_bios:       # read back by bundle convert; deploy gives the vmx its own
        _sub(hw, "vmw", "ExtraConfig", ovf_required="false", vmw_key="uuid.bios",
             vmw_value=format_uuid_bios(m.uuid_bios))
    ET.indent(env)
    return ET.tostring(env, encoding="UTF-8", xml_declaration=True) + b"\n"


def write_ova(work: str, m: Machine, disks: dict[str, tuple[str, int]]) -> str:
    """`<name>.ovf`, `<name>.mf` (SHA256 of each file) and the `<name>.ova` tar."""
    ovf_path = os.path.join(work, f"{m.name}.ovf")
    with open(ovf_path, "wb") as f:
        f.write(build_ovf(m, disks))
    members = [ovf_path] + [disks[r][0] for r in ROLES]
    mf_path = os.path.join(work, f"{m.name}.mf")
    with open(mf_path, "w", encoding="ascii", newline="\n") as f:
        f.writelines(f"SHA256({os.path.basename(p)})= {_sha256(p)}\n" for p in members)
    ova = os.path.join(work, f"{m.name}.ova")
    with tarfile.open(ova, "w", format=tarfile.USTAR_FORMAT) as tar:
        for p in [ovf_path, mf_path] + members[1:]:
            info = tar.gettarinfo(p, arcname=os.path.basename(p))
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            with open(p, "rb") as f:
                tar.addfile(info, f)
    return ova


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
