"""Binary structures of qcow2 images, versions 2 and 3 (qemu's docs/interop/qcow2.txt;
specs/qcow2.md).

Schemas and bit layouts only: no file I/O. All numbers are big-endian.
"""
from __future__ import annotations

from construct import Bytes, Int8ub, Int16ub, Int32ub, Int64ub, Struct

MAGIC = b"QFI\xfb"
V2_HEADER_BYTES = 72
V3_HEADER_BYTES = 104
MIN_CLUSTER_BITS = 9          # 512 B
MAX_CLUSTER_BITS = 21         # 2 MiB
MAX_BACKING_NAME_BYTES = 1023
MAX_REFCOUNT_ORDER = 6        # 64-bit refcounts

# incompatible_features
INCOMPAT_DIRTY = 1 << 0
INCOMPAT_CORRUPT = 1 << 1
INCOMPAT_DATA_FILE = 1 << 2
INCOMPAT_COMPRESSION = 1 << 3
INCOMPAT_EXTL2 = 1 << 4
KNOWN_INCOMPAT = (INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_DATA_FILE
                  | INCOMPAT_COMPRESSION | INCOMPAT_EXTL2)
# compatible_features
COMPAT_LAZY_REFCOUNTS = 1 << 0
# autoclear_features
AUTOCLEAR_BITMAPS = 1 << 0
AUTOCLEAR_DATA_FILE_RAW = 1 << 1

# header extension types
EXT_END = 0x00000000
EXT_BACKING_FORMAT = 0xE2792ACA
EXT_FEATURE_TABLE = 0x6803F857
EXT_BITMAPS = 0x23852875
EXT_CRYPTO = 0x0537BE77
EXT_DATA_FILE = 0x44415441

# L1 / L2 entries
OFLAG_COPIED = 1 << 63
OFLAG_COMPRESSED = 1 << 62
OFLAG_ZERO = 1 << 0
L1E_OFFSET_MASK = 0x00FFFFFFFFFFFE00
L2E_OFFSET_MASK = 0x00FFFFFFFFFFFE00
L1E_RESERVED_MASK = 0x7F000000000001FF
L2E_STD_RESERVED_MASK = 0x3F000000000001FE
REFT_OFFSET_MASK = 0xFFFFFFFFFFFFFE00
REFT_RESERVED_MASK = 0x1FF
SUBCLUSTERS = 32              # per cluster with extended L2 entries

# bounds vdisk applies before allocating from header numbers (qemu's own limits)
MAX_L1_BYTES = 32 << 20                   # QCOW_MAX_L1_SIZE
MAX_REFTABLE_BYTES = 8 << 20              # QCOW_MAX_REFTABLE_SIZE
MAX_SNAPSHOTS = 65536                     # QCOW_MAX_SNAPSHOTS
MAX_SNAPSHOT_EXTRA_BYTES = 1024
MAX_FEATURE_TABLE_ENTRIES = 256

Qcow2Header = Struct(
    "magic" / Bytes(4) * "magic",
    "version" / Int32ub * "version",
    "backing_file_offset" / Int64ub * "backing_file_offset",
    "backing_file_size" / Int32ub * "backing_file_size",
    "cluster_bits" / Int32ub * "cluster_bits",
    "size_bytes" / Int64ub * "size",
    "crypt_method" / Int32ub * "crypt_method",
    "l1_size" / Int32ub * "l1_size: entries of the active L1 table",
    "l1_table_offset" / Int64ub * "l1_table_offset",
    "refcount_table_offset" / Int64ub * "refcount_table_offset",
    "refcount_table_clusters" / Int32ub * "refcount_table_clusters",
    "nb_snapshots" / Int32ub * "nb_snapshots",
    "snapshots_offset" / Int64ub * "snapshots_offset",
)
assert Qcow2Header.sizeof() == V2_HEADER_BYTES

Qcow2HeaderV3 = Struct(
    "incompatible_features" / Int64ub * "incompatible_features",
    "compatible_features" / Int64ub * "compatible_features",
    "autoclear_features" / Int64ub * "autoclear_features",
    "refcount_order" / Int32ub * "refcount_order",
    "header_length" / Int32ub * "header_length",
)
assert Qcow2HeaderV3.sizeof() == V3_HEADER_BYTES - V2_HEADER_BYTES

HeaderExtension = Struct(
    "ext_type" / Int32ub * "Header extension type",
    "length_bytes" / Int32ub * "Length of the header extension data",
)

FeatureNameEntry = Struct(
    "feature_type" / Int8ub * "Type of feature (0 incompatible, 1 compatible, 2 autoclear)",
    "bit" / Int8ub * "Bit number within the selected feature bitmap",
    "name" / Bytes(46) * "Feature name (padded with zeros)",
)

SnapshotHeader = Struct(
    "l1_table_offset" / Int64ub * "l1_table_offset",
    "l1_size" / Int32ub * "l1_size",
    "id_str_size" / Int16ub * "id_str_size",
    "name_size" / Int16ub * "name_size",
    "date_sec" / Int32ub * "date_sec",
    "date_nsec" / Int32ub * "date_nsec",
    "vm_clock_nsec" / Int64ub * "vm_clock_nsec",
    "vm_state_size" / Int32ub * "vm_state_size",
    "extra_data_size" / Int32ub * "extra_data_size",
)
SNAPSHOT_HEADER_BYTES = SnapshotHeader.sizeof()

BitmapsExtension = Struct(
    "nb_bitmaps" / Int32ub * "nb_bitmaps",
    "reserved" / Int32ub * "reserved32",
    "bitmap_directory_size" / Int64ub * "bitmap_directory_size",
    "bitmap_directory_offset" / Int64ub * "bitmap_directory_offset",
)

# offsets of header fields a writer changes in place
INCOMPAT_OFFSET = 72
SIZE_OFFSET = 24
L1_SIZE_OFFSET = 36           # l1_size, then l1_table_offset at 40


def parse_header(data: bytes):
    """The 72-byte common header (no validation: see image/qcow2/header.py)."""
    return Qcow2Header.parse(data)


def parse_header_v3(data: bytes):
    return Qcow2HeaderV3.parse(data)


def build_header(fields: dict) -> bytes:
    return Qcow2Header.build(fields)


def build_header_v3(fields: dict) -> bytes:
    return Qcow2HeaderV3.build(fields)


def build_extension(ext_type: int, data: bytes) -> bytes:
    """A header extension: type, length, data padded to a multiple of 8 bytes."""
    return HeaderExtension.build(dict(ext_type=ext_type, length_bytes=len(data))) + data \
        + bytes(-len(data) % 8)


def compressed_layout(cluster_bits: int) -> tuple[int, int]:
    """(csize_shift, csize_mask) of a compressed L2 entry: x = 62 - (cluster_bits - 8) bits
    of host offset, then the count of additional 512-byte sectors."""
    shift = 62 - (cluster_bits - 8)
    return shift, (1 << (cluster_bits - 8)) - 1


def refcount_get(block: bytes | bytearray | memoryview, index: int, order: int) -> int:
    """Entry `index` of a refcount block of 2**order-bit entries. Entries narrower than a
    byte are packed from the least significant bit (as qemu stores them)."""
    bits = 1 << order
    if bits < 8:
        per = 8 // bits
        return (block[index // per] >> (bits * (index % per))) & ((1 << bits) - 1)
    width = bits // 8
    return int.from_bytes(block[index * width:(index + 1) * width], "big")


def refcount_set(block: bytearray, index: int, order: int, value: int) -> None:
    bits = 1 << order
    if value < 0 or value >> bits:
        raise ValueError(f"refcount {value} does not fit {bits} bits")
    if bits < 8:
        per = 8 // bits
        shift = bits * (index % per)
        mask = ((1 << bits) - 1) << shift
        block[index // per] = (block[index // per] & ~mask) | (value << shift)
        return
    width = bits // 8
    block[index * width:(index + 1) * width] = value.to_bytes(width, "big")


def _has_zero_entry(order: int) -> bytes:
    """A translate table: byte -> 1 when one of its 2**order-bit entries is 0, else 0."""
    bits = 1 << order
    full = (1 << bits) - 1
    return bytes(int(any(not (b >> (bits * k)) & full for k in range(8 // bits)))
                 for b in range(256))


_HAS_ZERO = {order: _has_zero_entry(order) for order in range(3)}


def refcount_find_zero(block: bytes | bytearray, start: int, order: int) -> int | None:
    """The first entry index >= start of a refcount block whose value is 0 (None if none)."""
    bits = 1 << order
    entries = len(block) * 8 // bits
    if bits < 8:
        per = 8 // bits
        i = start
        while i < entries:
            if i % per == 0:
                pos = block.translate(_HAS_ZERO[order]).find(1, i // per)
                if pos == -1:
                    return None
                i = pos * per
            if not refcount_get(block, i, order):
                return i
            i += 1
        return None
    width = bits // 8
    zero = bytes(width)
    pos = block.find(zero, start * width)
    while pos != -1:
        if pos % width == 0:
            return pos // width
        pos = block.find(zero, pos + width - pos % width)
    return None
