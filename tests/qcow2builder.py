"""An independent qcow2 writer for tests, written from qemu's docs/interop/qcow2.txt (not from
vdisk's code): header v2/v3, header extensions, one refcount table cluster, refcount blocks,
an L1 table, L2 tables and data clusters, laid out in order. Every field can be overridden
and every table entry replaced, so a test can build exactly the damage it needs.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

MAGIC = b"QFI\xfb"
COPIED = 1 << 63


def refcount_pack(values: list[int], bits: int, cluster: int) -> bytes:
    out = bytearray(cluster)
    for i, v in enumerate(values):
        if bits < 8:
            per = 8 // bits
            out[i // per] |= v << (bits * (i % per))
        else:
            w = bits // 8
            out[i * w:(i + 1) * w] = v.to_bytes(w, "big")
    return bytes(out)


@dataclass
class Qcow2Builder:
    size: int = 4 << 20
    cluster_bits: int = 16
    version: int = 3
    refcount_order: int = 4
    extended_l2: bool = False
    header: dict = field(default_factory=dict)          # field name -> value override
    extensions: list[tuple[int, bytes]] = field(default_factory=list)
    backing: str | None = None
    data: dict[int, bytes] = field(default_factory=dict)   # virtual cluster -> content
    l2_override: dict[int, int] = field(default_factory=dict)   # virtual cluster -> entry
    bitmap_override: dict[int, int] = field(default_factory=dict)
    refcount_delta: dict[int, int] = field(default_factory=dict)  # host cluster -> +/-
    incompatible: int = 0
    raw_tail: bytes = b""

    @property
    def cs(self) -> int:
        return 1 << self.cluster_bits

    def build(self, path: Path | str) -> dict:
        """Write the image; returns where things went (cluster indexes)."""
        cs = self.cs
        esize = 16 if self.extended_l2 else 8
        l2n = cs // esize
        l1_entries = -(-self.size // (l2n * cs))
        l1_clusters = max(1, -(-l1_entries * 8 // cs))
        # 0 header, 1 refcount table, 2 refcount block, 3.. L1, then L2 tables and data
        l1_at = 3
        nxt = l1_at + l1_clusters
        l2_at: dict[int, int] = {}
        data_at: dict[int, int] = {}
        for vc in sorted(self.data):
            li = vc // l2n
            if li not in l2_at:
                l2_at[li] = nxt
                nxt += 1
            data_at[vc] = nxt
            nxt += 1
        for vc in self.l2_override:
            li = vc // l2n
            if li not in l2_at:
                l2_at[li] = nxt
                nxt += 1
        total = nxt
        img = bytearray(total * cs)
        l1 = [0] * l1_entries
        for li, c in l2_at.items():
            l1[li] = (c * cs) | COPIED
        struct.pack_into(f">{l1_entries}Q", img, l1_at * cs, *l1)
        for vc, c in data_at.items():
            img[c * cs:c * cs + len(self.data[vc])] = self.data[vc]
        for li, c in l2_at.items():
            for j in range(l2n):
                vc = li * l2n + j
                entry = self.l2_override.get(vc, (data_at[vc] * cs) | COPIED if vc in data_at else 0)
                bitmap = self.bitmap_override.get(vc, 0xFFFFFFFF if vc in data_at else 0)
                struct.pack_into(">Q", img, c * cs + j * esize, entry)
                if self.extended_l2:
                    struct.pack_into(">Q", img, c * cs + j * esize + 8, bitmap)
        bits = 1 << self.refcount_order
        counts = [1] * total
        for c, d in self.refcount_delta.items():
            while len(counts) <= c:
                counts.append(0)
            counts[c] += d
        img[2 * cs:3 * cs] = refcount_pack(counts[:cs * 8 // bits], bits, cs)
        struct.pack_into(">Q", img, cs, 2 * cs)
        self._header(img, l1_entries, l1_at * cs)
        Path(path).write_bytes(bytes(img) + self.raw_tail)
        return {"l1": l1_at, "l2": l2_at, "data": data_at, "clusters": total}

    def _header(self, img: bytearray, l1_entries: int, l1_off: int) -> None:
        f = dict(magic=MAGIC, version=self.version, backing_file_offset=0, backing_file_size=0,
                 cluster_bits=self.cluster_bits, size=self.size, crypt_method=0,
                 l1_size=l1_entries, l1_table_offset=l1_off, refcount_table_offset=self.cs,
                 refcount_table_clusters=1, nb_snapshots=0, snapshots_offset=0,
                 incompatible_features=self.incompatible | (16 if self.extended_l2 else 0),
                 compatible_features=0, autoclear_features=0,
                 refcount_order=self.refcount_order, header_length=104)
        f.update(self.header)
        out = struct.pack(">4sIQIIQIIQQIIQ", f["magic"], f["version"], f["backing_file_offset"],
                          f["backing_file_size"], f["cluster_bits"], f["size"],
                          f["crypt_method"], f["l1_size"], f["l1_table_offset"],
                          f["refcount_table_offset"], f["refcount_table_clusters"],
                          f["nb_snapshots"], f["snapshots_offset"])
        if self.version >= 3:
            out += struct.pack(">QQQII", f["incompatible_features"], f["compatible_features"],
                               f["autoclear_features"], f["refcount_order"], f["header_length"])
        for etype, edata in self.extensions:
            out += struct.pack(">II", etype, len(edata)) + edata + bytes(-len(edata) % 8)
        if not self.header.get("no_end"):
            out += bytes(8)
        if self.backing is not None and "backing_file_offset" not in self.header:
            name = self.backing.encode()
            out = out[:8] + struct.pack(">QI", len(out), len(name)) + out[20:] + name
        img[:len(out)] = out
