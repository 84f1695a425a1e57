"""Where things are on a FAT volume: the boot sector parsed into a validated layout
(fatgen103 §3; specs/fat.md "Boot sector")."""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from construct import ConstructError

from ..errors import FormatError
from ..formats import fat as ff

VALID_SECTOR_BYTES = (512, 1024, 2048, 4096)


@dataclass(frozen=True)
class FatLayout:
    """The geometry of one FAT volume, all offsets in bytes from the volume's first byte.

    The derived sizes and offsets are computed once per layout (cached properties) since
    the cluster arithmetic of every read and write uses them."""

    fat_type: int
    bytes_per_sector: int
    sectors_per_cluster: int
    reserved_sectors: int
    fat_count: int
    fat_sectors: int
    root_entries: int
    total_sectors: int
    hidden_sectors: int
    media: int
    cluster_count: int
    root_cluster: int          # FAT32 only; 0 on FAT12/16
    fsinfo_sector: int         # FAT32 only
    backup_boot_sector: int    # FAT32 only (0 = none)
    active_fat: int | None     # FAT32 mirroring disabled: the one active FAT, else None
    volume_id: int
    label: str
    oem_name: str

    @cached_property
    def cluster_bytes(self) -> int:
        return self.bytes_per_sector * self.sectors_per_cluster

    @cached_property
    def fat_offset(self) -> int:
        return self.reserved_sectors * self.bytes_per_sector

    @cached_property
    def fat_bytes(self) -> int:
        return self.fat_sectors * self.bytes_per_sector

    @cached_property
    def root_dir_offset(self) -> int:
        return self.fat_offset + self.fat_count * self.fat_bytes

    @cached_property
    def root_dir_bytes(self) -> int:
        return self.root_entries * ff.DIR_ENTRY_BYTES

    @cached_property
    def data_offset(self) -> int:
        rs = -(-self.root_dir_bytes // self.bytes_per_sector) * self.bytes_per_sector
        return self.root_dir_offset + rs

    @cached_property
    def volume_bytes(self) -> int:
        return self.total_sectors * self.bytes_per_sector

    @cached_property
    def max_cluster(self) -> int:
        """Highest valid data cluster number."""
        return self.cluster_count + 1

    def cluster_offset(self, cluster: int) -> int:
        return self.data_offset + (cluster - 2) * self.cluster_bytes

    def fat_copy_offset(self, index: int) -> int:
        return self.fat_offset + index * self.fat_bytes

    def fat_entry_offset(self, cluster: int) -> int:
        """Where FAT #1 holds the entry of `cluster` (FAT12 entries take 1.5 bytes)."""
        pos = cluster * 3 // 2 if self.fat_type == 12 else cluster * self.fat_type // 8
        return self.fat_offset + pos


def _bad(field: str, offset: int, msg: str, path: str | None) -> FormatError:
    return FormatError(f"BiosParameterBlock.{field} at 0x{offset:x}: {msg}", path=path)


def parse_boot_sector(sector: bytes, device_bytes: int, path: str | None = None) -> FatLayout:
    """Parse and validate a FAT boot sector; every size is checked against the device."""
    if len(sector) < ff.SECTOR_BYTES:
        raise FormatError("volume shorter than one sector", path=path)
    try:
        bpb = ff.BiosParameterBlock.parse(sector)
    except ConstructError as exc:  # pragma: no cover - 36 bytes always parse
        raise FormatError(f"BiosParameterBlock: {exc}", path=path) from None
    if sector[0] not in (0xEB, 0xE9) and sector[510:512] != ff.BOOT_SIGNATURE:
        raise FormatError("no FAT boot sector here (no jump instruction, no 0x55AA signature)",
                          path=path, offset=0)
    bps = bpb.bytes_per_sector
    if bps not in VALID_SECTOR_BYTES:
        raise _bad("bytes_per_sector", 11, f"expected 512..4096, got {bps}", path)
    spc = bpb.sectors_per_cluster
    if spc == 0 or spc & (spc - 1) or spc > 128:
        raise _bad("sectors_per_cluster", 13, f"expected a power of two up to 128, got {spc}", path)
    if bpb.reserved_sectors == 0:
        raise _bad("reserved_sectors", 14, "expected at least 1, got 0", path)
    if not 1 <= bpb.fat_count <= 4:
        raise _bad("fat_count", 16, f"expected 1..4, got {bpb.fat_count}", path)
    total = bpb.total_sectors_16 or bpb.total_sectors_32
    if total == 0:
        raise _bad("total_sectors_32", 32, "volume size is zero", path)
    is32 = bpb.fat_sectors_16 == 0
    ext32 = ff.ExtendedBpb32.parse(sector[36:]) if is32 else None
    fat_sectors = ext32.fat_sectors_32 if ext32 is not None else bpb.fat_sectors_16
    if fat_sectors == 0:
        raise _bad("fat_sectors_32", 36, "FAT size is zero", path)
    root_entries = 0 if is32 else bpb.root_entries
    if is32 and bpb.root_entries:
        raise _bad("root_entries", 17, "FAT32 volume with a fixed root directory", path)
    volume_bytes = total * bps
    if volume_bytes > device_bytes:
        raise _bad("total_sectors", 19 if bpb.total_sectors_16 else 32,
                   f"volume of {volume_bytes} bytes does not fit the device of {device_bytes} bytes",
                   path)
    root_sectors = -(-root_entries * ff.DIR_ENTRY_BYTES // bps)
    data_sector = bpb.reserved_sectors + bpb.fat_count * fat_sectors + root_sectors
    if data_sector >= total:
        raise _bad("fat_sectors", 22, "the FATs and root directory leave no data area", path)
    clusters = (total - data_sector) // spc
    if is32:
        fat_type = 32
        clusters = min(clusters, ff.MAX_CLUSTERS_32)
    else:
        fat_type = 12 if clusters <= ff.MAX_CLUSTERS_12 else 16
        if clusters > ff.MAX_CLUSTERS_16:
            raise _bad("fat_sectors_16", 22, f"{clusters} clusters is too many for FAT16", path)
    if clusters < 1:
        raise _bad("total_sectors", 32, "no data clusters", path)
    # The FAT must hold an entry for every cluster.
    if (clusters + 2) * fat_type > fat_sectors * bps * 8:
        raise _bad("fat_sectors", 22 if not is32 else 36,
                   f"FAT of {fat_sectors} sectors is too small for {clusters} clusters", path)
    label_raw = (ext32.volume_label if ext32 is not None else sector[43:54])
    boot_sig = ext32.boot_signature if ext32 is not None else sector[38]
    volid = ext32.volume_id if ext32 is not None else int.from_bytes(sector[39:43], "little")
    root_cluster = fsinfo = backup = 0
    active = None
    if ext32 is not None:
        root_cluster, fsinfo, backup = ext32.root_cluster, ext32.fsinfo_sector, ext32.backup_boot_sector
        if not 2 <= root_cluster <= clusters + 1:
            raise _bad("root_cluster", 44, f"root cluster {root_cluster} out of range", path)
        if ext32.ext_flags & 0x80:
            active = ext32.ext_flags & 0x0F
            if active >= bpb.fat_count:
                raise _bad("ext_flags", 40, f"active FAT {active} does not exist", path)
    return FatLayout(
        fat_type=fat_type, bytes_per_sector=bps, sectors_per_cluster=spc,
        reserved_sectors=bpb.reserved_sectors, fat_count=bpb.fat_count, fat_sectors=fat_sectors,
        root_entries=root_entries, total_sectors=total, hidden_sectors=bpb.hidden_sectors,
        media=bpb.media, cluster_count=clusters, root_cluster=root_cluster, fsinfo_sector=fsinfo,
        backup_boot_sector=backup, active_fat=active,
        volume_id=volid if boot_sig in (0x28, 0x29) else 0,
        label=(label_raw.rstrip(b" \0").decode("cp437") if boot_sig == 0x29 else ""),
        oem_name=bpb.oem_name.decode("cp437", "replace"),
    )
