"""Write the flash and dump sample disks (small monolithicSparse VMDKs, deterministic bytes).

    python sample_images/make_flash_dump_samples.py [OUT_DIR]

- hd-flash-used.vmdk: a 100 MiB flash disk with three 64 KiB flash segments in use.
- hd-dump-3-torn.vmdk: a 64 MiB dump store (specs/dump-store.md) holding records 1..3 in
  slots 0..2; record 3, the newest, is torn (its payload was cut short).

The CIDs are fixed so that every run writes the same bytes (sha256 in README.md).
"""
from __future__ import annotations

import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from samplelib import raw_to_vmdk_fixed_cid  # noqa: E402

from vdisk_tool.formats import dump_store as ds

MiB = 1 << 20
SEGMENT = 64 * 1024
TIME0 = 1700000000


def flash_content(raw: str) -> None:
    """Three segments of PBX-object-like records, the rest blank (zero)."""
    with open(raw, "r+b") as f:
        f.truncate(100 * MiB)
        for seg in (0, 1, 37):
            lines = [f"<obj seg={seg} id={seg * 100 + i} name=\"user{seg}-{i}\" "
                     f"e164=\"{200 + i}\"/>" for i in range(40)]
            f.seek(seg * SEGMENT)
            f.write("\n".join(lines).encode("ascii"))


def dump_text(seq: int) -> bytes:
    lines = [f"IPVA crash dump, record {seq}", "exception: data abort at 0x0012a4c0",
             "task: PBX"]
    lines += [f"r{i:02d}=0x{(seq * 0x2545F491 + i * 0x01000193) & 0xFFFFFFFF:08x}"
              for i in range(16)]
    lines += [f"stack[{i:02d}]=0x{(seq << 20) + i * 4:08x}" for i in range(64)]
    return ("\n".join(lines) + "\n").encode("ascii")


def dump_content(raw: str) -> None:
    size = 64 * MiB
    slot = ds.DEFAULT_SLOT_SECTORS
    count = ds.slots_that_fit(size, slot)
    with open(raw, "r+b") as f:
        f.truncate(size)
        for seq in (1, 2, 3):
            payload = dump_text(seq)
            f.seek(ds.slot_offset(seq - 1, slot))
            f.write(ds.build_record_header(sequence=seq, build=90468, time=TIME0 + seq * 3600,
                                           payload=payload, version="13r2 sr11"))
            # record 3 is torn: the appliance died after 1000 payload bytes
            f.write(payload if seq < 3 else payload[:1000])
        f.seek(0)
        f.write(ds.build_store_header(slot_sectors=slot, slot_count=count, next_slot=3))


def main(out_dir: str) -> None:
    os.makedirs(out_dir, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for name, fill, cid in (("hd-flash-used.vmdk", flash_content, 0x1a5f0001),
                                ("hd-dump-3-torn.vmdk", dump_content, 0x1a5f0002)):
            raw = os.path.join(tmp, name + ".raw")
            open(raw, "wb").close()
            fill(raw)
            raw_to_vmdk_fixed_cid(raw, os.path.join(out_dir, name), cid)
            print(os.path.join(out_dir, name))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__)))
