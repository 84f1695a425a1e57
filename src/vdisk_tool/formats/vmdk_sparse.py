"""Binary structures of hosted sparse VMDK extents (VMDK 5.0 technote; specs/vmdk.md).

Schemas only: no file I/O. Field docs carry the spec's own names.
"""
from __future__ import annotations

import struct
from typing import Any

SECTOR_BYTES = 512
MAGIC = b"KDMV"
COWD_MAGIC = b"COWD"
SESPARSE_MAGIC = b"\xbe\xba\xfe\xca\x00\x00\x00\x00"
GD_AT_END = 0xFFFFFFFFFFFFFFFF

FLAG_VALID_NEWLINE_TEST = 0x1
FLAG_REDUNDANT_GRAIN_TABLE = 0x2
FLAG_ZEROED_GRAIN_GTE = 0x4
FLAG_COMPRESSED = 0x10000
FLAG_MARKERS = 0x20000
KNOWN_INCOMPAT_FLAGS = FLAG_COMPRESSED | FLAG_MARKERS
INCOMPAT_MASK = 0xFFFF0000

COMPRESSION_NONE = 0
COMPRESSION_DEFLATE = 1

MARKER_EOS = 0
MARKER_GT = 1
MARKER_GD = 2
MARKER_FOOTER = 3
MARKER_PROGRESS = 4

GTES_PER_GT = 512
DEFAULT_GRAIN_SECTORS = 128
MAX_GRAIN_SECTORS = 0x200000          # 1 GiB, qemu's limit
MAX_GD_ENTRIES = 32 * 1024 * 1024     # qemu's L1 limit
MAX_EMBEDDED_DESCRIPTOR_SECTORS = 20480
ZERO_GRAIN_GTE = 1

UNCLEAN_SHUTDOWN_OFFSET = 72   # SparseExtentHeader.uncleanShutdown
GRAIN_MARKER_HEADER_BYTES = 12

#: SparseExtentHeader as one struct format, to read headers without loading construct
#: (every command opens one; `vdisk info` starts faster). A test holds it against the
#: construct schema field by field.
HEADER_STRUCT = struct.Struct("<4sIIQQQQIQQQB1s1s1s1sH433s")
HEADER_FIELDS = ("magic_number", "version", "flags", "capacity_sectors", "grain_sectors",
                 "descriptor_offset_sectors", "descriptor_sectors", "gtes_per_gt",
                 "rgd_offset_sectors", "gd_offset_sectors", "overhead_sectors",
                 "unclean_shutdown", "single_end_line_char", "non_end_line_char",
                 "double_end_line_char1", "double_end_line_char2", "compress_algorithm", "pad")
SCHEMA_NAMES = ("SparseExtentHeader", "GrainMarker", "MetadataMarker", "CowdHeader")
_SCHEMAS: dict[str, Any] = {}


def _build_schemas() -> dict[str, Any]:
    """The construct schemas, built on first use (see __getattr__)."""
    from construct import Bytes, Const, Int8ul, Int16ul, Int32ul, Int64ul, Padding, Struct, this

    SparseExtentHeader = Struct(
        "magic_number" / Bytes(4) * "magicNumber",
        "version" / Int32ul * "version",
        "flags" / Int32ul * "flags",
        "capacity_sectors" / Int64ul * "capacity",
        "grain_sectors" / Int64ul * "grainSize",
        "descriptor_offset_sectors" / Int64ul * "descriptorOffset",
        "descriptor_sectors" / Int64ul * "descriptorSize",
        "gtes_per_gt" / Int32ul * "numGTEsPerGT",
        "rgd_offset_sectors" / Int64ul * "rgdOffset",
        "gd_offset_sectors" / Int64ul * "gdOffset",
        "overhead_sectors" / Int64ul * "overHead",
        "unclean_shutdown" / Int8ul * "uncleanShutdown",
        "single_end_line_char" / Bytes(1) * "singleEndLineChar",
        "non_end_line_char" / Bytes(1) * "nonEndLineChar",
        "double_end_line_char1" / Bytes(1) * "doubleEndLineChar1",
        "double_end_line_char2" / Bytes(1) * "doubleEndLineChar2",
        "compress_algorithm" / Int16ul * "compressAlgorithm",
        "pad" / Bytes(433) * "pad",
    )
    assert SparseExtentHeader.sizeof() == SECTOR_BYTES

    GrainMarker = Struct(
        "lba" / Int64ul * "lba: first virtual sector of the grain",
        "compressed_bytes" / Int32ul * "size",
        "data" / Bytes(this.compressed_bytes),
    )

    MetadataMarker = Struct(
        "num_sectors" / Int64ul * "numSectors",
        "size" / Const(0, Int32ul) * "size (0 for metadata markers)",
        "marker_type" / Int32ul * "type",
        "pad" / Bytes(496),
    )
    assert MetadataMarker.sizeof() == SECTOR_BYTES

    CowdHeader = Struct(
        "magic_number" / Const(COWD_MAGIC) * "magicNumber",
        "version" / Int32ul,
        "flags" / Int32ul,
        "capacity_sectors" / Int32ul * "numSectors",
        "grain_sectors" / Int32ul * "grainSize",
        "gd_offset_sectors" / Int32ul * "gdOffset",
        "gd_entries" / Int32ul * "numGDEntries",
        "free_sector" / Int32ul * "freeSector",
        Padding(2048 - 32),
    )
    return {"SparseExtentHeader": SparseExtentHeader, "GrainMarker": GrainMarker,
            "MetadataMarker": MetadataMarker, "CowdHeader": CowdHeader}


def __getattr__(name: str) -> Any:
    """SparseExtentHeader, GrainMarker, MetadataMarker and CowdHeader, built when first
    asked for (PEP 562), so that importing this module does not load construct."""
    if name in SCHEMA_NAMES:
        if not _SCHEMAS:
            _SCHEMAS.update(_build_schemas())
        return _SCHEMAS[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class Header(dict):
    """A parsed SparseExtentHeader: a dict of its fields that also reads as attributes,
    like construct's Container (and accepted by build_header)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def header_defaults(capacity_sectors: int, *, grain_sectors: int = DEFAULT_GRAIN_SECTORS,
                    version: int = 1, flags: int = FLAG_VALID_NEWLINE_TEST | FLAG_REDUNDANT_GRAIN_TABLE,
                    descriptor_offset_sectors: int = 0, descriptor_sectors: int = 0,
                    rgd_offset_sectors: int = 0, gd_offset_sectors: int = 0,
                    overhead_sectors: int = 0, compress_algorithm: int = COMPRESSION_NONE) -> dict:
    """A header dict ready for SparseExtentHeader.build()."""
    return dict(
        magic_number=MAGIC, version=version, flags=flags, capacity_sectors=capacity_sectors,
        grain_sectors=grain_sectors, descriptor_offset_sectors=descriptor_offset_sectors,
        descriptor_sectors=descriptor_sectors, gtes_per_gt=GTES_PER_GT,
        rgd_offset_sectors=rgd_offset_sectors, gd_offset_sectors=gd_offset_sectors,
        overhead_sectors=overhead_sectors, unclean_shutdown=0,
        single_end_line_char=b"\n", non_end_line_char=b" ", double_end_line_char1=b"\r",
        double_end_line_char2=b"\n", compress_algorithm=compress_algorithm, pad=bytes(433),
    )


def parse_header(data: bytes) -> Header:
    """Parse the 512-byte SparseExtentHeader (no validation; see image/vmdk/sparse.validate)."""
    if len(data) < HEADER_STRUCT.size:
        raise ValueError(f"a SparseExtentHeader is {HEADER_STRUCT.size} bytes, got {len(data)}")
    return Header(zip(HEADER_FIELDS, HEADER_STRUCT.unpack_from(data), strict=True))


def build_header(fields: dict) -> bytes:
    return __getattr__("SparseExtentHeader").build(fields)


def build_metadata_marker(marker_type: int, num_sectors: int) -> bytes:
    return __getattr__("MetadataMarker").build(dict(num_sectors=num_sectors, marker_type=marker_type,
                                     pad=bytes(496)))


def gd_entries_for(capacity_sectors: int, grain_sectors: int, gtes_per_gt: int = GTES_PER_GT) -> int:
    coverage = grain_sectors * gtes_per_gt
    return -(-capacity_sectors // coverage)


def sectors_for_bytes(n: int) -> int:
    return -(-n // SECTOR_BYTES)
