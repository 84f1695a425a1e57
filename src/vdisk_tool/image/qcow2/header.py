"""The qcow2 header, its extensions and the snapshot table, parsed and bounded before any
table is read (docs/interop/qcow2.txt; specs/qcow2.md §Header, §Refusals).

Every number taken from the file is checked against the file's length and qemu's own
limits before anything is allocated from it; what vdisk cannot read safely (encryption,
an external data file, zstd, an unknown incompatible feature) is refused with one line.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field

from ...errors import FormatError, UnsupportedError
from ...formats import qcow2 as q


@dataclass(frozen=True)
class Snapshot:
    """One internal snapshot (listed by `vdisk info`; never read or written)."""

    snapshot_id: str
    name: str
    l1_table_offset: int
    l1_size: int
    date_sec: int
    vm_state_bytes: int
    disk_size_bytes: int | None


@dataclass
class Qcow2Meta:
    """Header fields of one image, validated."""

    version: int
    cluster_bits: int
    size_bytes: int
    l1_size: int
    l1_table_offset: int
    refcount_table_offset: int
    refcount_table_clusters: int
    snapshots_offset: int
    nb_snapshots: int
    incompatible: int = 0
    compatible: int = 0
    autoclear: int = 0
    refcount_order: int = 4
    header_length: int = q.V2_HEADER_BYTES
    backing_name: str | None = None
    backing_format: str | None = None
    feature_names: dict[tuple[int, int], str] = field(default_factory=dict)
    bitmaps: tuple[int, int, int] | None = None      # (count, directory offset, bytes)
    extensions: list[int] = field(default_factory=list)
    snapshots: list[Snapshot] = field(default_factory=list)
    snapshot_table_bytes: int = 0

    @property
    def cluster_bytes(self) -> int:
        return 1 << self.cluster_bits

    @property
    def extended_l2(self) -> bool:
        return bool(self.incompatible & q.INCOMPAT_EXTL2)

    @property
    def l2_entry_bytes(self) -> int:
        return 16 if self.extended_l2 else 8

    @property
    def l2_entries(self) -> int:
        return self.cluster_bytes // self.l2_entry_bytes

    @property
    def l2_coverage_bytes(self) -> int:
        return self.l2_entries * self.cluster_bytes

    @property
    def refcount_bits(self) -> int:
        return 1 << self.refcount_order

    @property
    def refblock_entries(self) -> int:
        return self.cluster_bytes * 8 // self.refcount_bits

    @property
    def dirty(self) -> bool:
        return bool(self.incompatible & q.INCOMPAT_DIRTY)

    @property
    def corrupt(self) -> bool:
        return bool(self.incompatible & q.INCOMPAT_CORRUPT)

    @property
    def lazy_refcounts(self) -> bool:
        return bool(self.compatible & q.COMPAT_LAZY_REFCOUNTS)

    @property
    def compat(self) -> str:
        return "0.10" if self.version == 2 else "1.1"


def l1_entries_for(size_bytes: int, cluster_bits: int, l2_entry_bytes: int = 8) -> int:
    coverage = (1 << cluster_bits) // l2_entry_bytes << cluster_bits
    return -(-size_bytes // coverage)


def parse_meta(first: bytes, file_bytes: int, path: str) -> Qcow2Meta:
    """Validate the header in `first` (the file's first cluster, or all of a shorter file)."""
    def bad(fieldname: str, off: int, msg: str) -> FormatError:
        return FormatError(f"QcowHeader.{fieldname} at 0x{off:x}: {msg}", path=path, offset=off)

    if len(first) < q.V2_HEADER_BYTES:
        raise FormatError(f"file shorter than a qcow2 header ({q.V2_HEADER_BYTES} bytes)",
                          path=path, offset=0)
    h = q.parse_header(first[:q.V2_HEADER_BYTES])
    if h.magic != q.MAGIC:
        raise bad("magic", 0, f"expected {q.MAGIC!r}, got {h.magic!r}")
    if h.version not in (2, 3):
        raise bad("version", 4, f"expected 2 or 3, got {h.version}")
    if not q.MIN_CLUSTER_BITS <= h.cluster_bits <= q.MAX_CLUSTER_BITS:
        raise bad("cluster_bits", 20, f"expected {q.MIN_CLUSTER_BITS} to {q.MAX_CLUSTER_BITS} "
                                      f"(512 B to 2 MiB), got {h.cluster_bits}")
    m = Qcow2Meta(h.version, h.cluster_bits, h.size_bytes, h.l1_size, h.l1_table_offset,
                  h.refcount_table_offset, h.refcount_table_clusters, h.snapshots_offset,
                  h.nb_snapshots)
    cs = m.cluster_bytes
    if h.version == 3:
        if len(first) < q.V3_HEADER_BYTES:
            raise FormatError("file shorter than a version 3 qcow2 header", path=path, offset=0)
        v3 = q.parse_header_v3(first[q.V2_HEADER_BYTES:q.V3_HEADER_BYTES])
        m.incompatible, m.compatible, m.autoclear = (v3.incompatible_features,
                                                     v3.compatible_features, v3.autoclear_features)
        m.refcount_order, m.header_length = v3.refcount_order, v3.header_length
        if not q.V3_HEADER_BYTES <= m.header_length <= min(cs, len(first)) \
                or m.header_length % 8:
            raise bad("header_length", 100, f"{m.header_length} is not a multiple of 8 between "
                                            f"{q.V3_HEADER_BYTES} and the cluster size ({cs})")
        if m.refcount_order > q.MAX_REFCOUNT_ORDER:
            raise bad("refcount_order", 96, f"expected at most {q.MAX_REFCOUNT_ORDER} (64-bit "
                                            f"refcounts), got {m.refcount_order}")
    _parse_extensions(first, m, path)
    _refuse_features(first, m, path)
    if h.crypt_method:
        raise UnsupportedError(f"the image is encrypted (crypt_method {h.crypt_method}); vdisk "
                               "does not read encrypted qcow2 images", path=path)
    if m.extended_l2 and m.cluster_bits < 14:
        raise bad("cluster_bits", 20, "extended L2 entries need clusters of 16 KiB or more")
    _check_tables(m, file_bytes, bad)
    if h.backing_file_offset:
        off, n = h.backing_file_offset, h.backing_file_size
        if n == 0 or n > q.MAX_BACKING_NAME_BYTES or off + n > min(cs, len(first)):
            raise bad("backing_file_offset", 8, f"backing file name ({n} bytes at 0x{off:x}) "
                      f"must be 1 to {q.MAX_BACKING_NAME_BYTES} bytes inside the first cluster")
        try:
            m.backing_name = first[off:off + n].decode("utf-8")
        except UnicodeDecodeError:
            raise bad("backing_file_offset", 8, "backing file name is not UTF-8") from None
    return m


def _parse_extensions(first: bytes, m: Qcow2Meta, path: str) -> None:
    """Walk the header extensions up to the end marker (each inside the first cluster)."""
    pos = m.header_length
    limit = min(m.cluster_bytes, len(first))
    for _ in range(4096):
        if pos + 8 > limit:
            if pos == limit and m.version == 2:
                return   # a v2 header may end at the cluster boundary without an end marker
            raise FormatError(f"header extension at 0x{pos:x} runs past the first cluster",
                              path=path, offset=pos)
        ext = q.HeaderExtension.parse(first[pos:pos + 8])
        if ext.ext_type == q.EXT_END:
            return
        data_at = pos + 8
        if ext.length_bytes > limit - data_at:
            raise FormatError(f"header extension 0x{ext.ext_type:08x} at 0x{pos:x}: length "
                              f"{ext.length_bytes} runs past the first cluster", path=path,
                              offset=pos + 4)
        data = first[data_at:data_at + ext.length_bytes]
        m.extensions.append(ext.ext_type)
        if ext.ext_type == q.EXT_BACKING_FORMAT:
            m.backing_format = data.decode("ascii", "replace").rstrip("\0")
        elif ext.ext_type == q.EXT_FEATURE_TABLE:
            for k in range(min(len(data) // 48, q.MAX_FEATURE_TABLE_ENTRIES)):
                e = q.FeatureNameEntry.parse(data[48 * k:48 * k + 48])
                m.feature_names[(e.feature_type, e.bit)] = e.name.rstrip(b"\0").decode(
                    "utf-8", "replace")
        elif ext.ext_type == q.EXT_BITMAPS and len(data) >= 24:
            b = q.BitmapsExtension.parse(data[:24])
            m.bitmaps = (b.nb_bitmaps, b.bitmap_directory_offset, b.bitmap_directory_size)
        elif ext.ext_type == q.EXT_CRYPTO:
            raise UnsupportedError("the image is encrypted (LUKS header extension); vdisk does "
                                   "not read encrypted qcow2 images", path=path)
        elif ext.ext_type == q.EXT_DATA_FILE:
            raise UnsupportedError("the image keeps its data in an external data file; vdisk "
                                   "does not read such images", path=path)
        pos = data_at + ext.length_bytes + (-ext.length_bytes % 8)
    raise FormatError("more than 4096 header extensions", path=path, offset=m.header_length)


def _refuse_features(first: bytes, m: Qcow2Meta, path: str) -> None:
    if m.incompatible & q.INCOMPAT_DATA_FILE:
        raise UnsupportedError("the image keeps its data in an external data file; vdisk does "
                               "not read such images", path=path)
    if m.incompatible & q.INCOMPAT_COMPRESSION:
        ctype = first[104] if m.header_length > 104 else 0
        if ctype != 0:
            raise UnsupportedError(f"the image uses compression type {ctype} (zstd); vdisk "
                                   "reads deflate-compressed clusters only", path=path)
    unknown = m.incompatible & ~q.KNOWN_INCOMPAT
    if unknown:
        bits = [b for b in range(64) if unknown >> b & 1]
        names = ", ".join(m.feature_names.get((0, b), f"bit {b}") for b in bits)
        raise UnsupportedError(f"the image uses incompatible features vdisk does not know "
                               f"({names})", path=path)


def _check_tables(m: Qcow2Meta, file_bytes: int, bad) -> None:
    cs = m.cluster_bytes
    need = l1_entries_for(m.size_bytes, m.cluster_bits, m.l2_entry_bytes)
    if m.l1_size * 8 > q.MAX_L1_BYTES:
        raise bad("l1_size", 36, f"{m.l1_size} entries: an L1 table larger than "
                                 f"{q.MAX_L1_BYTES >> 20} MiB (qemu's limit)")
    if m.l1_size < need:
        raise bad("l1_size", 36, f"{m.l1_size} entries cannot map {m.size_bytes} bytes "
                                 f"({need} needed)")
    if m.l1_size and (m.l1_table_offset % cs or m.l1_table_offset == 0):
        raise bad("l1_table_offset", 40, f"0x{m.l1_table_offset:x} is not a cluster boundary "
                                         "after the header")
    if m.l1_size and m.l1_table_offset + m.l1_size * 8 > file_bytes:
        raise bad("l1_table_offset", 40, f"the L1 table (0x{m.l1_table_offset:x}, "
                                         f"{m.l1_size * 8} bytes) lies past the end of the file")
    rt_bytes = m.refcount_table_clusters * cs
    if m.refcount_table_clusters == 0 or rt_bytes > q.MAX_REFTABLE_BYTES:
        raise bad("refcount_table_clusters", 56, f"{m.refcount_table_clusters} clusters: "
                  f"expected 1 to {q.MAX_REFTABLE_BYTES // cs}")
    if m.refcount_table_offset % cs or m.refcount_table_offset == 0:
        raise bad("refcount_table_offset", 48, f"0x{m.refcount_table_offset:x} is not a "
                                               "cluster boundary after the header")
    if m.refcount_table_offset + rt_bytes > file_bytes:
        raise bad("refcount_table_offset", 48, "the refcount table lies past the end of the file")
    if m.l1_size and _overlap(m.l1_table_offset, m.l1_size * 8, m.refcount_table_offset, rt_bytes):
        raise bad("l1_table_offset", 40, "the L1 table overlaps the refcount table")
    if m.nb_snapshots > q.MAX_SNAPSHOTS:
        raise bad("nb_snapshots", 60, f"{m.nb_snapshots}: more than {q.MAX_SNAPSHOTS}")
    if m.nb_snapshots and (m.snapshots_offset % cs or m.snapshots_offset == 0
                           or m.snapshots_offset >= file_bytes):
        raise bad("snapshots_offset", 64, f"0x{m.snapshots_offset:x} is not a cluster inside "
                                          "the file")


def _overlap(a: int, alen: int, b: int, blen: int) -> bool:
    return a < b + blen and b < a + alen


def parse_snapshots(read, m: Qcow2Meta, file_bytes: int, path: str) -> None:
    """Read the snapshot table (`read(length, offset)`), bounded by the file."""
    pos = m.snapshots_offset
    for i in range(m.nb_snapshots):
        raw = read(q.SNAPSHOT_HEADER_BYTES, pos)
        if len(raw) < q.SNAPSHOT_HEADER_BYTES:
            raise FormatError(f"snapshot {i + 1} at 0x{pos:x} lies past the end of the file",
                              path=path, offset=pos)
        s = q.SnapshotHeader.parse(raw)
        if s.extra_data_size > q.MAX_SNAPSHOT_EXTRA_BYTES:
            raise FormatError(f"snapshot {i + 1}: extra data of {s.extra_data_size} bytes",
                              path=path, offset=pos + 36)
        tail = s.extra_data_size + s.id_str_size + s.name_size
        body = read(tail, pos + q.SNAPSHOT_HEADER_BYTES)
        if len(body) < tail:
            raise FormatError(f"snapshot {i + 1} at 0x{pos:x} lies past the end of the file",
                              path=path, offset=pos)
        extra = body[:s.extra_data_size]
        disk_size = struct.unpack(">Q", extra[8:16])[0] if len(extra) >= 16 else None
        vm_state = struct.unpack(">Q", extra[:8])[0] if len(extra) >= 8 else s.vm_state_size
        sid = body[s.extra_data_size:s.extra_data_size + s.id_str_size].decode("utf-8", "replace")
        name = body[s.extra_data_size + s.id_str_size:tail].decode("utf-8", "replace")
        if s.l1_size * 8 > q.MAX_L1_BYTES or s.l1_table_offset % m.cluster_bytes or (
                s.l1_size and s.l1_table_offset + s.l1_size * 8 > file_bytes):
            raise FormatError(f"snapshot {sid!r}: its L1 table (0x{s.l1_table_offset:x}, "
                              f"{s.l1_size} entries) is misaligned or past the end of the file",
                              path=path, offset=pos)
        m.snapshots.append(Snapshot(sid, name, s.l1_table_offset, s.l1_size, s.date_sec,
                                    vm_state, disk_size))
        pos += q.SNAPSHOT_HEADER_BYTES + tail
        pos += -pos % 8
    m.snapshot_table_bytes = pos - m.snapshots_offset
