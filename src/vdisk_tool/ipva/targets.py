"""Where an appliance runs: one row per platform (specs/platforms.md §Targets).

Each target names the container its four disks are written in, the subformat asked of the
container writer, the disk file names (by role) and the attachment the platform needs
beside the disks: a vmx (VMware), a vmx with an OVF package (ova), a `qm` VM configuration
(Proxmox VE) or a PowerShell script that creates the VM (Hyper-V). Writing a disk is one
call, `write_disk`, whatever the container; the callers never branch on it.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import RefusedError
from ..image import create as image_create
from ..image.base import BlockDevice

ROLES = ("boot", "cf", "flash", "dump")


@dataclass(frozen=True)
class TargetSpec:
    name: str
    container: str        # "vmdk", "qcow2" or "vhdx"
    subformat: str        # what the container writer is asked for
    attachment: str       # "vmx", "ova", "qm" or "hyperv"
    description: str

    @property
    def extension(self) -> str:
        return "." + self.container

    @property
    def vmware(self) -> bool:
        return self.container == "vmdk"

    def disk_names(self, vmid: int | None = None) -> dict[str, str]:
        """The file of each role. Proxmox's directory storage owns a volume by the
        `vm-<vmid>-` prefix of its name, so its disks carry it before the role name."""
        prefix = f"vm-{vmid}-" if self.attachment == "qm" and vmid is not None else ""
        return {role: f"{prefix}hd-{role}{self.extension}" for role in ROLES}


TARGETS: dict[str, TargetSpec] = {
    "workstation": TargetSpec("workstation", "vmdk", "monolithicSparse", "vmx",
                              "VMware Workstation/Player: monolithicSparse disks and a vmx"),
    "vsphere": TargetSpec("vsphere", "vmdk", "vmfs", "vmx",
                          "VMware vSphere/ESXi: vmfs disks (descriptor + -flat) and a vmx"),
    "ova": TargetSpec("ova", "vmdk", "streamOptimized", "ova",
                      "an OVF package: streamOptimized disks, .ovf, .mf and the .ova tar"),
    "proxmox": TargetSpec("proxmox", "qcow2", "qcow2", "qm",
                          "Proxmox VE (directory storage): qcow2 disks and a qm VM configuration"),
    "hyperv": TargetSpec("hyperv", "vhdx", "vhdx-dynamic", "hyperv",
                         "Hyper-V: dynamic VHDX disks and a PowerShell script making a "
                         "generation 1 VM"),
}


def target_spec(name: str) -> TargetSpec:
    if name not in TARGETS:
        raise RefusedError(f"unknown target {name!r}; choose one of {', '.join(TARGETS)}")
    return TARGETS[name]


def write_disk(path: str, spec: TargetSpec, size_bytes: int, source: BlockDevice | None,
               progress: image_create.Progress | None = None, compression_level: int = 6
               ) -> list[str]:
    """Write one disk of the appliance in the target's container (sparse: runs that hold
    no data stay holes or unallocated clusters). Returns the files written."""
    return image_create.create_image(path, size_bytes, spec.subformat, "ide", source=source,
                                     progress=progress, compression_level=compression_level)
