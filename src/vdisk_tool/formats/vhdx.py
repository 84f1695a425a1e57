"""Binary structures of VHDX images (Microsoft MS-VHDX v1; specs/vhdx.md).

Schemas and constants only: no file I/O. Field docs carry the spec's own names.
All integers are little-endian; GUIDs are stored in their binary (mixed-endian) form.
"""
from __future__ import annotations

import uuid

import crcmod.predefined
from construct import Bytes, Int16ul, Int32ul, Int64ul, Struct

KIB = 1024
MIB = 1024 * 1024
FILE_IDENTIFIER_OFFSET = 0
HEADER_OFFSETS = (64 * KIB, 128 * KIB)        # §2.2.2
REGION_TABLE_OFFSETS = (192 * KIB, 256 * KIB)  # §2.2.3
HEADER_BYTES = 4 * KIB
REGION_TABLE_BYTES = 64 * KIB
METADATA_TABLE_BYTES = 64 * KIB
HEADER_SECTION_BYTES = 1 * MIB
LOG_SECTOR_BYTES = 4 * KIB
SECTOR_BITMAP_BLOCK_BYTES = 1 * MIB
MIN_BLOCK_BYTES = 1 * MIB
MAX_BLOCK_BYTES = 256 * MIB
MAX_VIRTUAL_BYTES = 64 * 1024 * 1024 * MIB     # 64 TiB (§2.6.2.2)
MAX_REGION_ENTRIES = 2047
MAX_METADATA_ENTRIES = 2047
MAX_METADATA_ITEM_BYTES = 1 * MIB
SECTORS_PER_BITMAP = 1 << 23                   # §2.4: one bitmap block covers 2^23 sectors

FILE_SIGNATURE = b"vhdxfile"
HEADER_SIGNATURE = b"head"
REGION_SIGNATURE = b"regi"
METADATA_SIGNATURE = b"metadata"
LOG_SIGNATURE = b"loge"
ZERO_SIGNATURE = b"zero"
DESC_SIGNATURE = b"desc"
DATA_SIGNATURE = b"data"

crc32c = crcmod.predefined.mkCrcFun("crc-32c")


def guid(text: str) -> bytes:
    """The binary form of a GUID written as in the spec (8-4-4-4-12 hex)."""
    return uuid.UUID(text).bytes_le


def guid_text(raw: bytes) -> str:
    return str(uuid.UUID(bytes_le=bytes(raw)))


ZERO_GUID = bytes(16)
BAT_GUID = guid("2DC27766-F623-4200-9D64-115E9BFD4A08")
METADATA_GUID = guid("8B7CA206-4790-4B9A-B8FE-575F050F886E")
FILE_PARAMETERS_GUID = guid("CAA16737-FA36-4D43-B3B6-33F0AA44E76B")
VIRTUAL_DISK_SIZE_GUID = guid("2FA54224-CD1B-4876-B211-5DBED83BF4B8")
VIRTUAL_DISK_ID_GUID = guid("BECA12AB-B2E6-4523-93EF-C309E000C746")
LOGICAL_SECTOR_SIZE_GUID = guid("8141BF1D-A96F-4709-BA47-F233A8FAAB5F")
PHYSICAL_SECTOR_SIZE_GUID = guid("CDA348C7-445D-4471-9CC9-E9885251C556")
PARENT_LOCATOR_GUID = guid("A8D35F2D-B30B-454D-ABF7-D3D84834AB0C")
VHDX_LOCATOR_TYPE_GUID = guid("B04AEFB7-D19E-4A81-B789-25B8E9445913")

KNOWN_REGIONS = {BAT_GUID: "BAT", METADATA_GUID: "metadata"}
KNOWN_METADATA = {FILE_PARAMETERS_GUID: "file parameters", VIRTUAL_DISK_SIZE_GUID: "virtual disk size",
                  VIRTUAL_DISK_ID_GUID: "virtual disk id (page 83)",
                  LOGICAL_SECTOR_SIZE_GUID: "logical sector size",
                  PHYSICAL_SECTOR_SIZE_GUID: "physical sector size",
                  PARENT_LOCATOR_GUID: "parent locator"}
# the items every file must have (the parent locator only a differencing one)
REQUIRED_METADATA = (FILE_PARAMETERS_GUID, VIRTUAL_DISK_SIZE_GUID, VIRTUAL_DISK_ID_GUID,
                     LOGICAL_SECTOR_SIZE_GUID, PHYSICAL_SECTOR_SIZE_GUID)

# BAT entry states (§2.5.1.1, §2.5.1.2)
PAYLOAD_BLOCK_NOT_PRESENT = 0
PAYLOAD_BLOCK_UNDEFINED = 1
PAYLOAD_BLOCK_ZERO = 2
PAYLOAD_BLOCK_UNMAPPED = 3
PAYLOAD_BLOCK_FULLY_PRESENT = 6
PAYLOAD_BLOCK_PARTIALLY_PRESENT = 7
SB_BLOCK_NOT_PRESENT = 0
SB_BLOCK_PRESENT = 6
PAYLOAD_STATES = (0, 1, 2, 3, 6, 7)
STATE_MASK = 0x7
RESERVED_MASK = 0xFFFF8          # bits 3-19
OFFSET_SHIFT = 20

METADATA_IS_USER = 0x1
METADATA_IS_VIRTUAL_DISK = 0x2
METADATA_IS_REQUIRED = 0x4
PARAM_LEAVE_BLOCKS_ALLOCATED = 0x1
PARAM_HAS_PARENT = 0x2

FileIdentifier = Struct(
    "signature" / Bytes(8) * "Signature: 'vhdxfile'",
    "creator" / Bytes(512) * "Creator: UTF-16 name of the writer",
)

Header = Struct(
    "signature" / Bytes(4) * "Signature: 'head'",
    "checksum" / Int32ul * "Checksum: CRC-32C over the 4 KiB header, this field zero",
    "sequence_number" / Int64ul * "SequenceNumber: the larger valid header is current",
    "file_write_guid" / Bytes(16) * "FileWriteGuid",
    "data_write_guid" / Bytes(16) * "DataWriteGuid",
    "log_guid" / Bytes(16) * "LogGuid: zero when the log is empty",
    "log_version" / Int16ul * "LogVersion: 0",
    "version" / Int16ul * "Version: 1",
    "log_length_bytes" / Int32ul * "LogLength: multiple of 1 MiB",
    "log_offset" / Int64ul * "LogOffset: multiple of 1 MiB",
    "reserved" / Bytes(4016) * "Reserved",
)
assert Header.sizeof() == HEADER_BYTES
HEADER_CHECKSUM_OFFSET = 4

RegionTableHeader = Struct(
    "signature" / Bytes(4) * "Signature: 'regi'",
    "checksum" / Int32ul * "Checksum: CRC-32C over the 64 KiB table, this field zero",
    "entry_count" / Int32ul * "EntryCount: at most 2047",
    "reserved" / Int32ul * "Reserved",
)
RegionTableEntry = Struct(
    "guid" / Bytes(16) * "Guid",
    "file_offset" / Int64ul * "FileOffset: multiple of 1 MiB, at least 1 MiB",
    "length_bytes" / Int32ul * "Length: multiple of 1 MiB",
    "required" / Int32ul * "Required: bit 0",
)

MetadataTableHeader = Struct(
    "signature" / Bytes(8) * "Signature: 'metadata'",
    "reserved" / Int16ul * "Reserved",
    "entry_count" / Int16ul * "EntryCount: at most 2047",
    "reserved2" / Bytes(20) * "Reserved2",
)
MetadataTableEntry = Struct(
    "item_id" / Bytes(16) * "ItemID",
    "offset" / Int32ul * "Offset: from the region's start, at least 64 KiB",
    "length_bytes" / Int32ul * "Length: at most 1 MiB",
    "flags" / Int32ul * "IsUser bit 0, IsVirtualDisk bit 1, IsRequired bit 2",
    "reserved2" / Int32ul * "Reserved2",
)
FileParameters = Struct(
    "block_bytes" / Int32ul * "BlockSize: power of two, 1 MiB .. 256 MiB",
    "flags" / Int32ul * "LeaveBlockAllocated bit 0, HasParent bit 1",
)
ParentLocatorHeader = Struct(
    "locator_type" / Bytes(16) * "LocatorType",
    "reserved" / Int16ul * "Reserved",
    "key_value_count" / Int16ul * "KeyValueCount",
)
ParentLocatorEntry = Struct(
    "key_offset" / Int32ul * "KeyOffset: within the item",
    "value_offset" / Int32ul * "ValueOffset: within the item",
    "key_length" / Int16ul * "KeyLength: bytes of UTF-16LE",
    "value_length" / Int16ul * "ValueLength: bytes of UTF-16LE",
)

LogEntryHeader = Struct(
    "signature" / Bytes(4) * "Signature: 'loge'",
    "checksum" / Int32ul * "Checksum: CRC-32C over EntryLength bytes, this field zero",
    "entry_length_bytes" / Int32ul * "EntryLength: multiple of 4 KiB",
    "tail" / Int32ul * "Tail: log offset of the first entry of the sequence",
    "sequence_number" / Int64ul * "SequenceNumber: larger than zero",
    "descriptor_count" / Int32ul * "DescriptorCount",
    "reserved" / Int32ul * "Reserved",
    "log_guid" / Bytes(16) * "LogGuid: must match the header's",
    "flushed_file_offset" / Int64ul * "FlushedFileOffset: the file is at least this long",
    "last_file_offset" / Int64ul * "LastFileOffset: every structure fits below it",
)
assert LogEntryHeader.sizeof() == 64
LogDescriptor = Struct(
    "signature" / Bytes(4) * "'zero' or 'desc'",
    "trailing_bytes" / Bytes(4) * "TrailingBytes (desc) / Reserved (zero)",
    "leading_bytes" / Bytes(8) * "LeadingBytes (desc) / ZeroLength (zero, u64)",
    "file_offset" / Int64ul * "FileOffset: multiple of 4 KiB",
    "sequence_number" / Int64ul * "SequenceNumber: the entry's",
)
LOG_DESCRIPTOR_BYTES = 32
LOG_HEADER_BYTES = 64


def chunk_ratio(block_bytes: int, logical_sector_bytes: int) -> int:
    """Payload blocks per sector-bitmap block (§2.4)."""
    return (SECTORS_PER_BITMAP * logical_sector_bytes) // block_bytes


def data_blocks(virtual_bytes: int, block_bytes: int) -> int:
    return -(-virtual_bytes // block_bytes)


def bat_entries(virtual_bytes: int, block_bytes: int, logical_sector_bytes: int,
                has_parent: bool) -> int:
    """The BAT entries a disk of this shape needs (§2.5)."""
    n = data_blocks(virtual_bytes, block_bytes)
    ratio = chunk_ratio(block_bytes, logical_sector_bytes)
    if has_parent:
        return -(-n // ratio) * (ratio + 1)
    return n + (n - 1) // ratio if n else 0


def payload_index(block: int, ratio: int) -> int:
    """BAT index of payload block `block`: the bitmap entry of each chunk follows it."""
    return block + block // ratio


def bitmap_index(chunk: int, ratio: int) -> int:
    return chunk * (ratio + 1) + ratio


def bat_state(entry: int) -> int:
    return entry & STATE_MASK


def bat_offset(entry: int) -> int:
    """FileOffsetMB of an entry, in bytes."""
    return (entry >> OFFSET_SHIFT) * MIB


def bat_entry(state: int, file_offset: int) -> int:
    return (file_offset // MIB) << OFFSET_SHIFT | state


def with_checksum(raw: bytes | bytearray, at: int = HEADER_CHECKSUM_OFFSET) -> bytes:
    """`raw` with its CRC-32C (computed with the checksum field zero) stored at `at`."""
    buf = bytearray(raw)
    buf[at:at + 4] = bytes(4)
    buf[at:at + 4] = crc32c(bytes(buf)).to_bytes(4, "little")
    return bytes(buf)


def checksum_ok(raw: bytes, at: int = HEADER_CHECKSUM_OFFSET) -> bool:
    stored = int.from_bytes(raw[at:at + 4], "little")
    return crc32c(raw[:at] + bytes(4) + raw[at + 4:]) == stored
