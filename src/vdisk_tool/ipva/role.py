"""What an appliance disk holds, from its content and its IDE slot (ipva-model.md §1-§5).

Every command that writes a role's structure (a dump store, the flash, the CF's or the boot
disk's volume) asks `require_role` first: a disk holding another role's structure is
refused with one line that says what it holds, so that one slip of a word does not erase
a PBX's configuration. Names prove nothing (vSphere renames disks to `xxx_1.vmdk`...);
the slot in a vmx that attaches the disk is the strongest evidence, then the content:

- boot: a FAT volume labelled IPVABOOT or holding IPVA.BIN in its root;
- cf: a FAT volume labelled IPVACF, or any FAT volume with files on it;
- dump: the store header (intact, or damaged but recognisable), or record headers;
- flash: non-zero bytes in the first 64 MiB and none of the above;
- blank: no data at all (only stored runs are read: the cost grows with the data);
- unknown: anything else (data after 64 MiB only, a partition table whose volume is gone).
"""
from __future__ import annotations

import enum
import glob
import os
import re
from dataclasses import dataclass

from ..errors import FormatError, RefusedError, VdiskError
from ..formats import dump_store as ds
from ..fs.partition import looks_like_mbr, read_partition_table
from ..fs.volume import FatVolume, open_volume
from ..image.base import BlockDevice, SliceDevice
from ..image.disk import open_image
from .dump_scan import scan_records
from .flash import FLASH_REGION_BYTES, used_segments
from .vmx import IDE_ROLES, Vmx

OVERRIDE = "--any-disk"
PARTITION_LBA = 2048
_FAT_PARTITION_TYPES = frozenset({0x01, 0x04, 0x06, 0x0B, 0x0C, 0x0E})


class Role(str, enum.Enum):
    BOOT = "boot"
    CF = "cf"
    FLASH = "flash"
    DUMP = "dump"
    BLANK = "blank"
    UNKNOWN = "unknown"


WHAT = {Role.BOOT: "a boot disk", Role.CF: "a CompactFlash (CF) disk", Role.FLASH: "a flash disk",
        Role.DUMP: "a crash-dump store", Role.BLANK: "a blank disk", Role.UNKNOWN: "an unknown disk"}


@dataclass(frozen=True)
class DiskIdentity:
    """A disk's role by content, and its slot when a vmx attaches it."""

    path: str | None
    role: Role                  # what the content says
    evidence: str               # e.g. "the CF's FAT volume 'IPVACF'"
    slot: str | None = None     # e.g. "ide0:1"
    vmx_path: str | None = None
    files: int | None = None    # files on a FAT volume (None: not a FAT volume)

    @property
    def slot_role(self) -> Role | None:
        role = IDE_ROLES.get(self.slot or "")
        return Role(role) if role else None

    @property
    def where(self) -> str:
        """` (ide0:1 in ipva.vmx)` or ``."""
        if self.slot is None:
            return ""
        return f" ({self.slot} in {os.path.basename(self.vmx_path or 'the vmx')})"

    @property
    def contradicts_slot(self) -> bool:
        """The content is another role's structure than the slot's."""
        sr = self.slot_role
        return sr is not None and self.role not in (sr, Role.BLANK, Role.UNKNOWN) \
            and not _fat_fits(self, sr)

    def accepts(self, expected: Role) -> bool:
        """May a command that writes `expected`'s structure write this disk?"""
        sr = self.slot_role
        if sr is not None and sr != expected:
            return False
        if self.role in (expected, Role.BLANK):
            return True
        if self.role == Role.UNKNOWN:
            return sr == expected           # the slot vouches for a disk the content cannot name
        return _fat_fits(self, expected)

    def refusal(self, expected: tuple[Role, ...]) -> str:
        name = os.path.basename(self.path) if self.path else "the disk"
        want = " or ".join(WHAT[e] for e in expected)
        sr = self.slot_role
        if sr is not None and sr not in expected and self.role in (Role.BLANK, Role.UNKNOWN):
            return f"{name} is attached as {WHAT[sr]}{self.where} and holds {self.evidence}, not {want}"
        return f"{name} holds {self.evidence}{self.where}, not {want}"

    def to_dict(self) -> dict[str, object]:
        return {"path": self.path, "role": self.role.value, "evidence": self.evidence,
                "slot": self.slot, "vmx": self.vmx_path, "files": self.files}


def _fat_fits(ident: DiskIdentity, expected: Role) -> bool:
    """An empty FAT volume without the CF's label may become the boot volume (and the
    other way round): both are FAT roles and nothing on it would be lost."""
    return (ident.files == 0 and {ident.role, expected} <= {Role.BOOT, Role.CF}
            and "IPVA" not in ident.evidence)


# -- content ---------------------------------------------------------------------------------
def identify_device(dev: BlockDevice, path: str | None = None) -> DiskIdentity:
    """The role a device's content shows (no slot). Costs O(data), bounded by 64 MiB of
    flash reads and the dump scan's O(data)."""
    if dev.size_bytes < ds.SECTOR_BYTES:
        return _ident(path, Role.BLANK if dev.size_bytes == 0 else Role.UNKNOWN,
                      "no data" if dev.size_bytes == 0 else "less than one sector")
    sector0 = dev.read_at(0, ds.SECTOR_BYTES)
    dump = _dump_header(sector0)
    if dump:
        return _ident(path, Role.DUMP, dump)
    fat = _fat_identity(dev, path)
    if fat is not None:
        return fat
    if looks_like_mbr(sector0, dev.size_bytes):
        return _damaged_partition(dev, path)
    lost = _fat_without_table(dev, path)
    if lost is not None:
        return lost
    if sector0[0] not in (0xEB, 0xE9) and dev.size_bytes > (ds.FIRST_SLOT_LBA + 1) * ds.SECTOR_BYTES:
        _slots, records = scan_records(dev)
        if records:
            return _ident(path, Role.DUMP, f"crash-dump records ({len(records)}) without a "
                                           "store header")
    region = min(FLASH_REGION_BYTES, dev.size_bytes)
    used = sum(1 for _ in used_segments(dev, 0, region))
    if used:
        return _ident(path, Role.FLASH, f"flash content ({used} segment(s) of 64 KiB in use)")
    if next(used_segments(dev, region, dev.size_bytes), None) is not None:
        return _ident(path, Role.UNKNOWN, "data vdisk does not recognise (after the first "
                                          "64 MiB only)")
    return _ident(path, Role.BLANK, "no data")


def _ident(path: str | None, role: Role, evidence: str, files: int | None = None) -> DiskIdentity:
    return DiskIdentity(path, role, evidence, files=files)


def _dump_header(sector0: bytes) -> str | None:
    """Evidence of a store header: intact, or damaged but recognisable."""
    f = ds.parse_store_header(sector0)
    if f.magic == ds.STORE_MAGIC:
        intact = f.crc_ok and f.version == ds.STORE_VERSION and f.header_size == ds.HEADER_BYTES
        return "a crash-dump store" + ("" if intact else " (its header damaged)")
    if f.crc_ok and f.version == ds.STORE_VERSION and f.header_size == ds.HEADER_BYTES:
        return "a crash-dump store (its magic damaged)"
    return None


def _fat_identity(dev: BlockDevice, path: str | None) -> DiskIdentity | None:
    try:
        vol = open_volume(dev, None, path)
        label = vol.label.strip()
        has_bin = vol.find_root_entry(b"IPVA    BIN") is not None
        files = _count_files(vol)
    except (VdiskError, ValueError, IndexError):
        return None
    named = f" '{label}'" if label else " (no label)"
    if has_bin or label.upper() == "IPVABOOT":
        what = "the boot volume" + named + (" with IPVA.BIN" if has_bin else " (no IPVA.BIN)")
        return _ident(path, Role.BOOT, what, files)
    if label.upper() == "IPVACF":
        return _ident(path, Role.CF, f"the CF's FAT volume{named}", files)
    return _ident(path, Role.CF, f"a FAT volume{named} with {files} file(s)", files)


def _fat_without_table(dev: BlockDevice, path: str | None) -> DiskIdentity | None:
    """A FAT volume where ipva-model §2 puts the partition, its partition table gone."""
    start = PARTITION_LBA * ds.SECTOR_BYTES
    if dev.size_bytes <= start + ds.SECTOR_BYTES:
        return None
    found = _fat_identity(SliceDevice(dev, start, dev.size_bytes - start), path)
    if found is None:
        return None
    return DiskIdentity(path, found.role, found.evidence + " (its partition table lost)",
                        files=found.files)


def _count_files(vol: FatVolume, limit: int = 1000) -> int:
    n = 0
    for _d, kids in vol.walk("/"):
        n += sum(1 for k in kids if not k.is_dir)
        if n >= limit:
            break
    return n


def _damaged_partition(dev: BlockDevice, path: str | None) -> DiskIdentity:
    """A partition table whose volume cannot be read: hd-boot's partition is active,
    hd-cf's is not (ipva-model §2); anything else is unknown."""
    try:
        parts = read_partition_table(dev, path).partitions
    except FormatError:
        parts = ()
    if len(parts) == 1 and parts[0].partition_type in _FAT_PARTITION_TYPES:
        role = Role.BOOT if parts[0].active else Role.CF
        what = "an active" if parts[0].active else "a"
        return _ident(path, role, f"{what} FAT partition whose volume cannot be read")
    return _ident(path, Role.UNKNOWN, "a partition table vdisk does not recognise")


# -- a folder without a vmx ----------------------------------------------------------------
_EXTENT_NAME = re.compile(r"-(?:flat|delta|sesparse|[sf]\d{3})\.vmdk$", re.IGNORECASE)
_ROLE_NAME = re.compile(r"(?:^|[-_])(boot|cf|flash|dump)(?:[-_.]|$)", re.IGNORECASE)


def disks_by_role(folder: str) -> dict[str, str]:
    """The appliance disks of a folder that has no vmx (a Proxmox or Hyper-V copy): the
    disk images (*.vmdk, *.qcow2, *.vhdx, extent files left out) by what their content is,
    a blank or unknown disk by its name (hd-<role>.*); role -> path, each role once."""
    from .vmx import DISK_SUFFIXES
    names = sorted(n for n in os.listdir(folder) if n.lower().endswith(DISK_SUFFIXES)
                   and not _EXTENT_NAME.search(n) and os.path.isfile(os.path.join(folder, n)))
    by_content: dict[str, list[str]] = {}
    by_name: dict[str, list[str]] = {}
    for n in names:
        path = os.path.join(folder, n)
        try:
            held = identify_disk(path).role
        except (VdiskError, OSError):
            held = Role.UNKNOWN
        if held not in (Role.BLANK, Role.UNKNOWN):
            by_content.setdefault(held.value, []).append(path)
        m = _ROLE_NAME.search(os.path.splitext(n)[0])
        if m:
            by_name.setdefault(m.group(1).lower(), []).append(path)
    found: dict[str, str] = {}
    for name in ("boot", "cf", "flash", "dump"):
        for cands in (by_content.get(name, []), by_name.get(name, [])):
            left = [c for c in cands if c not in found.values()]
            if len(left) == 1 or (left and cands is by_name.get(name)):
                found[name] = left[0]
                break
    return found


# -- slot ------------------------------------------------------------------------------------
def find_slot(path: str, vmx: str | None = None) -> tuple[str, str] | None:
    """(slot, vmx path) of the vmx beside the disk (or `vmx`) that attaches `path`."""
    me = os.path.realpath(path)
    folder = os.path.dirname(os.path.abspath(path))
    cands = [vmx] if vmx else sorted(glob.glob(os.path.join(glob.escape(folder), "*.vmx")))
    for cand in cands:
        try:
            parsed = Vmx.read(cand)
        except (OSError, VdiskError):
            if vmx:
                raise
            continue
        for s in parsed.slots():
            if s.is_disk and s.path and os.path.realpath(s.path) == me:
                return s.slot, cand
    return None


def identify_disk(device_or_path: BlockDevice | str, vmx: str | None = None, *,
                  allow_outside: bool = False) -> DiskIdentity:
    """What a disk holds: its content's role, plus the slot of a vmx that attaches it
    (`vmx`, else any vmx beside the disk)."""
    if not isinstance(device_or_path, str):
        return identify_device(device_or_path)
    path = device_or_path
    with open_image(path, allow_outside=allow_outside) as disk:
        ident = identify_device(disk, path)
    found = find_slot(path, vmx)
    if found is None:
        return ident
    return DiskIdentity(path, ident.role, ident.evidence, found[0], found[1], ident.files)


def require_role(path: str, expected: Role | tuple[Role, ...], *, vmx: str | None = None,
                 any_disk: bool = False, allow_outside: bool = False) -> str | None:
    """Refuse (RefusedError, nothing changed) to write `expected`'s structure on a disk that
    holds another role's; with any_disk return the refusal text as a warning instead.
    None when the disk is fit for the role."""
    if not os.path.lexists(path):
        return None                      # the open that follows reports it
    roles = expected if isinstance(expected, tuple) else (expected,)
    ident = identify_disk(path, vmx, allow_outside=allow_outside)
    if any(ident.accepts(r) for r in roles):
        return None
    text = ident.refusal(roles)
    if any_disk:
        return f"{text}; writing it anyway because of {OVERRIDE}"
    raise RefusedError(f"{text}; nothing was changed", hint=f"check the file name; pass "
                       f"{OVERRIDE} only if you are sure this disk may lose what it holds")
