"""Magic numbers of the disk-image containers and other files a user may hand to vdisk,
and one function that names what a file's first and last bytes are (specs/vmdk.md
§Identification). Bytes only: no file I/O.

Sources of the magics: VMware's Virtual Disk Format 5.0 (KDMV, COWD), qemu's block
drivers' probe functions (qcow2 `QFI\\xfb`, VHDX `vhdxfile`, VHD `conectix`, VDI, QED,
LUKS), POSIX ustar (magic at 257), Microsoft's FAT specification (boot sector) and the MBR
layout (0x55AA at 510).
"""
from __future__ import annotations

import codecs
import enum
from dataclasses import dataclass

from . import vmdk_descriptor as vd
from . import vmdk_sparse as vs

HEAD_BYTES = 4096        # what identify() looks at from the start of a file
TAIL_BYTES = 512         # ... and from its end (a VHD footer)

QCOW_MAGIC = b"QFI\xfb"
VHDX_MAGIC = b"vhdxfile"
VHD_COOKIE = b"conectix"
VDI_MAGIC_OFFSET, VDI_MAGIC = 0x40, b"\x7f\x10\xda\xbe"
QED_MAGIC = b"QED\0"
LUKS_MAGIC = b"LUKS\xba\xbe"
USTAR_OFFSET, USTAR_MAGIC = 257, b"ustar"
BOOT_SIGNATURE_OFFSET, BOOT_SIGNATURE = 510, b"\x55\xaa"
COMPRESSED = ((b"\x1f\x8b", "gzip"), (b"\xfd7zXZ\0", "xz"), (b"BZh", "bzip2"),
              (b"\x28\xb5\x2f\xfd", "zstd"), (b"PK\x03\x04", "zip"),
              (b"7z\xbc\xaf\x27\x1c", "7-Zip"))


class Family(str, enum.Enum):
    VMDK = "vmdk"             # vdisk opens it as a VMDK
    RAW = "raw"               # raw disk bytes (the fallback, as in qemu-img)
    VMDK_UNSUPPORTED = "vmdk-unsupported"  # a VMDK kind vdisk recognises and refuses
    PACKAGE = "package"       # an OVF package (OVA = tar)
    FOREIGN = "foreign"       # another container or a compressed file


@dataclass(frozen=True)
class Container:
    """What a file is: a stable key, a phrase for messages, and how vdisk treats it."""

    key: str
    name: str
    family: Family


SPARSE = Container("vmdk-sparse", "a sparse VMDK extent", Family.VMDK)
DESCRIPTOR = Container("vmdk-descriptor", "a VMDK descriptor", Family.VMDK)
SPARSE_UNFINISHED = Container("vmdk-unfinished", "a sparse VMDK whose conversion never finished "
                              "(magic 'kdmv')", Family.VMDK_UNSUPPORTED)
SPARSE_DAMAGED = Container("vmdk-damaged", "a sparse VMDK extent whose magic is damaged",
                           Family.VMDK_UNSUPPORTED)
COWD = Container("vmdk-cowd", "an ESXi vmfsSparse (COWD) delta extent", Family.VMDK_UNSUPPORTED)
SESPARSE = Container("vmdk-sesparse", "an ESXi seSparse delta extent", Family.VMDK_UNSUPPORTED)
QCOW2 = Container("qcow2", "a qcow2 image", Family.FOREIGN)
QCOW1 = Container("qcow", "a qcow (version 1) image", Family.FOREIGN)
VHDX = Container("vhdx", "a VHDX image", Family.FOREIGN)
VHD_DYNAMIC = Container("vhd-dynamic", "a dynamic VHD (vpc) image", Family.FOREIGN)
VHD_FIXED = Container("vhd-fixed", "a fixed VHD (vpc) image", Family.FOREIGN)
VDI = Container("vdi", "a VirtualBox VDI image", Family.FOREIGN)
QED = Container("qed", "a QED image", Family.FOREIGN)
LUKS = Container("luks", "a LUKS encrypted volume", Family.FOREIGN)
OVA = Container("ova", "an OVF package (OVA, a tar archive)", Family.PACKAGE)
EMPTY = Container("empty", "an empty file", Family.FOREIGN)
FAT = Container("fat", "a raw FAT volume", Family.RAW)
MBR = Container("mbr", "a raw disk with an MBR", Family.RAW)
TEXT = Container("text", "a text file", Family.RAW)
DATA = Container("raw", "raw data", Family.RAW)


def compressed(kind: str) -> Container:
    return Container(kind.lower(), f"a {kind}-compressed file", Family.FOREIGN)


def identify(head: bytes, tail: bytes, file_bytes: int) -> Container:
    """Name a file from its first HEAD_BYTES and last TAIL_BYTES bytes.

    Order matters only where two magics could both match; each test is the one the
    format's own reader makes (qemu's probes, the VMDK technote, POSIX, Microsoft)."""
    if file_bytes == 0:
        return EMPTY
    magic4 = head[:4]
    if magic4 == vs.MAGIC:
        return SPARSE
    if magic4 == b"kdmv":
        return SPARSE_UNFINISHED
    if magic4 == vs.COWD_MAGIC:
        return COWD
    if head[:8] == vs.SESPARSE_MAGIC:
        return SESPARSE
    if vd.looks_like_descriptor(head):
        return DESCRIPTOR
    if len(head) >= 80 and head[73:77] == b"\n \r\n" and head[4:8] in (
            b"\x01\0\0\0", b"\x02\0\0\0", b"\x03\0\0\0"):
        return SPARSE_DAMAGED   # every field of a sparse header but the magic
    if magic4 == QCOW_MAGIC:
        return QCOW2 if head[4:8] in (b"\0\0\0\x02", b"\0\0\0\x03") else QCOW1
    if head[:8] == VHDX_MAGIC:
        return VHDX
    if head[:8] == VHD_COOKIE:
        return VHD_DYNAMIC
    if tail[-512:][:8] == VHD_COOKIE or tail[-511:][:8] == VHD_COOKIE:
        return VHD_FIXED     # a fixed VHD is the raw disk plus a 512-byte footer
    if head[VDI_MAGIC_OFFSET:VDI_MAGIC_OFFSET + 4] == VDI_MAGIC:
        return VDI
    if magic4 == QED_MAGIC:
        return QED
    if head[:6] == LUKS_MAGIC:
        return LUKS
    if head[USTAR_OFFSET:USTAR_OFFSET + 5] == USTAR_MAGIC:
        return OVA
    for magic, kind in COMPRESSED:
        if head.startswith(magic):
            return compressed(kind)
    return _raw_kind(head)


def _raw_kind(head: bytes) -> Container:
    """Raw bytes: a FAT boot sector, an MBR, text or just data (all opened as raw)."""
    if len(head) >= 512 and head[BOOT_SIGNATURE_OFFSET:BOOT_SIGNATURE_OFFSET + 2] == BOOT_SIGNATURE:
        jump_ok = head[0] == 0xE9 or (head[0] == 0xEB and head[2] == 0x90)
        bytes_per_sector = int.from_bytes(head[11:13], "little")
        if jump_ok and bytes_per_sector in (512, 1024, 2048, 4096):
            return FAT
        return MBR
    sample = head[:HEAD_BYTES]
    if sample and not any(b < 32 and b not in b"\t\n\r" or b == 127 for b in sample):
        try:
            codecs.getincrementaldecoder("utf-8")().decode(sample, final=False)
            return TEXT
        except UnicodeDecodeError:
            pass
    return DATA
