"""The values of every choice-valued option, as enums: typer lists them in `-h` and in the
usage error for a wrong one (exit 2). Each mirrors a library tuple; a test keeps them equal."""
from __future__ import annotations

from enum import Enum


class Subformat(str, Enum):
    """The VMDK subformats vdisk writes (image.create.SUBFORMATS), or a raw image."""
    monolithicSparse = "monolithicSparse"
    monolithicFlat = "monolithicFlat"
    vmfs = "vmfs"
    twoGbMaxExtentSparse = "twoGbMaxExtentSparse"
    twoGbMaxExtentFlat = "twoGbMaxExtentFlat"
    streamOptimized = "streamOptimized"
    raw = "raw"


class OutputFormat(str, Enum):
    """The containers `create` and `convert` write (-O, as qemu-img): the VMDK subformats,
    raw, qcow2, VHDX."""
    vmdk = "vmdk"
    raw = "raw"
    qcow2 = "qcow2"
    vhdx = "vhdx"


class Adapter(str, Enum):
    """ddb.adapterType values (image.create.ADAPTERS)."""
    ide = "ide"
    lsilogic = "lsilogic"
    buslogic = "buslogic"
    legacyESX = "legacyESX"


class Target(str, Enum):
    """Where a new appliance runs (ipva.golden.TARGETS)."""
    workstation = "workstation"
    vsphere = "vsphere"
    ova = "ova"
    proxmox = "proxmox"
    hyperv = "hyperv"


class DeployTarget(str, Enum):
    """Where a deployed OVF package runs (ipva.ova_deploy.DEPLOY_TARGETS)."""
    workstation = "workstation"
    vsphere = "vsphere"


class FatBits(str, Enum):
    """FAT12, FAT16 or FAT32."""
    fat12 = "12"
    fat16 = "16"
    fat32 = "32"


def value(choice: Enum | None) -> str | None:
    """The plain string of a chosen value (None stays None)."""
    return None if choice is None else str(choice.value)


class NicModel(str, Enum):
    """NIC models of every target (ipva.attachments: VMware, Proxmox, Hyper-V); which ones a
    target takes is checked against the target."""
    vlance = "vlance"
    vmxnet3 = "vmxnet3"
    pcnet = "pcnet"
    e1000 = "e1000"
    e1000e = "e1000e"
    virtio = "virtio"
    rtl8139 = "rtl8139"
    legacy = "legacy"
    synthetic = "synthetic"
