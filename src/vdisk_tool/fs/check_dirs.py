"""Directory-level checks of a FAT volume: the `.` and `..` entries of a subdirectory and
names that occur twice in one directory (specs/fat.md "Invariants"). Repairs never
overwrite a live entry: an entry in the place of a dot entry is moved to a free slot (the
directory grows by a cluster when it has none), a duplicate is renamed, not dropped."""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import FormatError, Severity
from ..formats import fat as ff
from .dirent import DirEntryInfo, entry_cluster, with_cluster_and_size

if TYPE_CHECKING:
    from .check import _Walk
    from .directory import Directory

E = ff.DIR_ENTRY_BYTES
DOT, DOTDOT = b".          ", b"..         "
FREE_MARKS = (0, ff.DELETED_MARK)
#: A DIR_NTRes bit Linux uses for "no 8.3 name"; meaningless on a dot entry (fsck.fat clears it).
NTRES_NO_83NAME = 0x20


def check_dots(w: _Walk, d: Directory, info: DirEntryInfo, parent_cluster: int) -> None:
    """Slot 0 must be `.` (this directory), slot 1 `..` (the parent, 0 for the root)."""
    vol = w.vol
    want_parent = 0 if parent_cluster == vol.root_first_cluster else parent_cluster
    for slot, name, want in ((0, DOT, info.first_cluster), (1, DOTDOT, want_parent)):
        shown = name.decode().strip()
        raw = d.raw(slot) if d.slots > slot else bytes(E)
        if raw[0:11] == name and raw[11] & ff.ATTR_DIRECTORY and \
                entry_cluster(raw, vol.fat_type) == want and not raw[12] & NTRES_NO_83NAME:
            continue
        if raw[0:11] == name or raw[0] in FREE_MARKS:
            what, act = "missing or not pointing to", f"write the '{shown}' entry of {info.path}"
        else:
            what = "missing; its slot holds another entry, not"
            act = (f"move the entry in slot {slot} of {info.path} to a free slot and write "
                   f"the '{shown}' entry")
        w.add("fat.dot-entries", f"{info.path}: '{shown}' entry {what} cluster {want}",
              d.slot_offset(slot) if d.slots > slot else None, info.path, action=act)
        if not w.fix or d.slots <= slot:
            continue
        if raw[0:11] != name and raw[0] not in FREE_MARKS and not _move_item(w, d, slot):
            continue
        fixed = bytearray(with_cluster_and_size(info.raw_entry, want, 0))
        fixed[0:11], fixed[12] = name, 0
        fixed[11] = ff.ATTR_DIRECTORY
        d.write_slot(slot, bytes(fixed))


def _move_item(w: _Walk, d: Directory, slot: int) -> bool:
    """Move the entry (with its long-name slots) that covers `slot` behind the dot slots."""
    item = next((it for it in d.items() if it.kind in ("entry", "orphan-lfn")
                 and slot in (*it.lfn_slots, it.slot)), None)
    if item is None:
        return True
    slots = sorted({*item.lfn_slots, item.slot} if item.kind == "entry" else set(item.lfn_slots))
    if item.kind == "entry" and d.data[item.slot * E:item.slot * E + 11] in (DOT, DOTDOT):
        _delete(d, slots)              # a dot entry in the wrong slot: it is rewritten anyway
        return True
    before = list(d.clusters)
    end = bytes(d.data[0::E]).find(0)
    try:
        idx = w.vol._free_run(d, len(slots), start=2)
    except FormatError as exc:
        w.actions.append(f"could not move the entry in slot {slot}: {exc.message}")
        return False
    for c in d.clusters[len(before):]:
        w.used[c] = 1
    for k, s in enumerate(slots):
        d.write_slot(idx + k, d.raw(s))
    after = idx + len(slots)
    if 0 <= end <= idx and after < d.slots and d.data[after * E] != 0:
        d.write_slot(after, bytes(E))          # keep the end marker behind the moved entry
    _delete(d, slots)
    return True


def _delete(d: Directory, slots: list[int] | tuple[int, ...]) -> None:
    for s in slots:
        gone = bytearray(d.raw(s))
        gone[0] = ff.DELETED_MARK
        d.write_slot(s, bytes(gone))


def _name_keys(e: DirEntryInfo) -> set[str]:
    return {e.name.casefold(), e.short_name.casefold()}


def check_duplicates(w: _Walk, d: Directory, entries: list[DirEntryInfo],
                     path: str) -> list[DirEntryInfo]:
    """Two entries with the same 8.3 name, or with names equal without regard to case (long
    names included). The later one is renamed as fsck.fat does (FSCKnnnn.nnn, its long name
    dropped), so both files stay. Returns the entries as they are afterwards."""
    seen_raw: set[bytes] = set()
    seen: set[str] = set()
    out: list[DirEntryInfo] = []
    for e in entries:
        if e.is_label or e.raw_name[:1] == b".":
            out.append(e)
            continue
        keys = _name_keys(e)
        if e.raw_name in seen_raw or keys & seen:
            kind = "8.3 name" if e.raw_name in seen_raw else "name (without regard to case)"
            new = _fsck_name(d)
            shown = ff.format_short_name(new)
            w.add("fat.duplicate-name", f"{e.path}: another entry of {path} has the same {kind}",
                  e.entry_offset, e.path, action=f"rename the second {e.path} to {shown}")
            if w.fix:
                e = _rename(d, e, new, path)
        seen_raw.add(e.raw_name)
        seen |= _name_keys(e)
        out.append(e)
    return out


def _fsck_name(d: Directory) -> bytes:
    """fsck.fat's name for a renamed entry: FSCK + seven digits, the first free one."""
    taken = {bytes(d.data[i * E:i * E + 11]) for i in range(d.slots)}
    for n in range(10_000_000):
        cand = f"FSCK{n:07d}".encode()
        if cand not in taken:
            return cand
    raise FormatError("no free FSCKnnnn.nnn name in the directory")


def _rename(d: Directory, e: DirEntryInfo, new: bytes, path: str) -> DirEntryInfo:
    raw = bytearray(e.raw_entry)
    raw[0:11] = new
    d.write_slot(e.slot, bytes(raw))
    _delete(d, e.lfn_slots)
    return d.entry_at(e.slot, path)


def check_lfn_fields(w: _Walk, d: Directory, path: str) -> None:
    """LDIR_Type and LDIR_FstClusLO of a long-name entry must be 0 (fatgen103 §7)."""
    for item in d.items():
        bad = [s for s in item.lfn_slots if d.data[s * E + 12] or d.data[s * E + 26:s * E + 28]
               != b"\0\0"]
        if not bad:
            continue
        w.add("fat.lfn-field", f"{path}: {len(bad)} long-name slot(s) with a non-zero type or "
              "first-cluster field", d.slot_offset(bad[0]), path, Severity.WARNING,
              action=f"zero the type and first-cluster fields of {len(bad)} long-name slot(s)")
        if w.fix:
            for s in bad:
                raw = bytearray(d.raw(s))
                raw[12], raw[26:28] = 0, b"\0\0"
                d.write_slot(s, bytes(raw))
