"""Write the boot disk samples (32 MiB monolithicSparse VMDKs, deterministic bytes).

    python sample_images/make_boot_samples.py [OUT_DIR]

- hd-boot.vmdk: a healthy boot disk (specs/ipva-firmware.md): MBR with one active FAT16-LBA
  partition at LBA 2048, FAT16 volume IPVABOOT, IPVA.BIN holding a small firmware image
  (build 90468, "9.00 hotfix4", sections LOADER, KERNEL, PBX, WEBUI).
- hd-boot-crashed.vmdk: the same disk after an update that crashed: IPVA.BIN's directory
  entry has the new size, but only the first 24 clusters of its chain were linked
  (the rest are lost clusters). `vdisk verify` reports boot.chain-short and fw.truncated;
  `vdisk boot restore hd-boot-crashed.vmdk --firmware <good ipva.bin>` repairs it.

A good ipva.bin for the restore can be copied out of hd-boot.vmdk (mtools, after
`qemu-img convert -O raw`) or made with `vdisk firmware pack`.
The volume id, disk signature, times and CIDs are fixed so that every run writes the same
bytes (sha256 in README.md).
"""
from __future__ import annotations

import datetime as dt
import hashlib
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from samplelib import lcg_bytes, raw_to_vmdk_fixed_cid  # noqa: E402

from vdisk_tool.fs.dirent import build_entry
from vdisk_tool.fs.format import format_volume
from vdisk_tool.fs.volume import open_volume
from vdisk_tool.image.base import FileDevice
from vdisk_tool.ipva.firmware import build_firmware

MiB = 1 << 20
TIME0 = 1700000000
WHEN = dt.datetime(2023, 11, 14, 22, 13, 20)
KEEP_CLUSTERS = 24


def sample_firmware() -> bytes:
    parts = [("LOADER", lcg_bytes(1, 6000)), ("KERNEL", lcg_bytes(2, 40000)),
             ("PBX", lcg_bytes(3, 30000)), ("WEBUI", lcg_bytes(4, 9000))]
    return build_firmware(parts, build=90468, version="9.00 hotfix4", timestamp=TIME0)


def boot_raw(raw: str, firmware: bytes, crashed: bool) -> None:
    with open(raw, "wb") as f:
        f.truncate(32 * MiB)
    with FileDevice(raw, writable=True) as dev:
        format_volume(dev, label="IPVABOOT", partition=True, active=True,
                      volume_id=0x1A5F0B00)
        vol = open_volume(dev, 1, raw)
        root = vol.directory(vol.root_first_cluster)   # the label entry: a fixed time
        label = root.raw(0)
        root.write_slot(0, build_entry(label[:11], label[11], 0, 0, WHEN))
        info = vol.write_file("/IPVA.BIN", firmware, mtime=WHEN)
        if crashed:
            chain = vol.fat.chain_list(info.first_cluster)
            vol.fat.set(chain[KEEP_CLUSTERS - 1], vol.fat.eoc)
        vol.flush()
        dev.flush()


def main(out_dir: str) -> None:
    os.makedirs(out_dir, exist_ok=True)
    firmware = sample_firmware()
    with tempfile.TemporaryDirectory() as tmp:
        for name, crashed, cid in (("hd-boot.vmdk", False, 0x1A5F0B01),
                                   ("hd-boot-crashed.vmdk", True, 0x1A5F0B02)):
            raw = os.path.join(tmp, name + ".raw")
            boot_raw(raw, firmware, crashed)
            out = os.path.join(out_dir, name)
            raw_to_vmdk_fixed_cid(raw, out, cid)
            with open(out, "rb") as f:
                digest = hashlib.sha256(f.read()).hexdigest()
            print(f"{out}  {os.path.getsize(out)} bytes  sha256 {digest}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__)))
