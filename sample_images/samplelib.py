"""What the sample generators share: deterministic filler bytes and a sparse VMDK with a
fixed CID, so that a rerun writes the same bytes."""
from __future__ import annotations

import os
import re

from vdisk_tool.image.base import FileDevice
from vdisk_tool.image.create import create_image


def lcg_bytes(seed: int, size: int) -> bytes:
    """Deterministic bytes that do not look like zeros (a small linear congruential generator)."""
    out = bytearray(size)
    x = seed
    for i in range(size):
        x = (x * 1103515245 + 12345) & 0x7FFFFFFF
        out[i] = (x >> 16) & 0xFF
    return bytes(out)


def raw_to_vmdk_fixed_cid(raw: str, out: str, cid: int) -> None:
    """A monolithicSparse copy of a raw image whose descriptor CID is `cid`."""
    if os.path.exists(out):
        os.unlink(out)
    with FileDevice(raw) as src:
        create_image(out, src.size_bytes, "monolithicSparse", "ide", source=src)
    with open(out, "r+b") as f:            # same length, in the embedded descriptor
        head = f.read(21 * 512)
        fixed = re.sub(rb"CID=[0-9a-f]{8}", b"CID=%08x" % cid, head, count=1)
        f.seek(0)
        f.write(fixed)
