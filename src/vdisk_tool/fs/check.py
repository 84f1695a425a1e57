"""Checking and repairing a FAT volume (specs/fat.md "Invariants"). One walk finds every
problem; with `fix` it repairs each where it finds it, so a repair is a check that writes.

When the FAT copies differ, the walk runs once per copy and the copy with the fewest
problems is trusted (fsck.fat always trusts FAT #1, losing files whose chain only FAT #2
still holds)."""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from ..errors import Finding, FormatError, Severity
from ..formats import fat as ff
from ..image.base import BlockDevice
from .check_dirs import check_dots, check_duplicates, check_lfn_fields
from .check_lost import check_lost
from .dirent import DirEntryInfo, with_cluster_and_size
from .volume import Directory, FatVolume, open_volume

E = ff.DIR_ENTRY_BYTES


@dataclass
class _Walk:
    vol: FatVolume
    fix: bool
    findings: list[Finding] = field(default_factory=list)
    used: bytearray = field(default_factory=bytearray)
    actions: list[str] = field(default_factory=list)

    def add(self, code: str, message: str, offset: int | None = None, path: str | None = None,
            severity: Severity = Severity.ERROR, fixable: bool = True, action: str = "") -> None:
        disk_off = None if offset is None else offset + _base(self.vol)
        self.findings.append(Finding(code, severity, message, disk_off, fixable, path))
        if self.fix and action:
            self.actions.append(action)


def _base(vol: FatVolume) -> int:
    return vol.partition.start_bytes if vol.partition is not None else 0


def _fat_entry_offset(vol: FatVolume, cluster: int) -> int:
    return vol.layout.fat_entry_offset(cluster)


def _follow(w: _Walk, first: int, what: str, path: str, limit: int | None) -> tuple[list[int], str]:
    """Walk a chain, claiming clusters; returns (clusters, how it ended): 'eoc', 'range',
    'cross', 'free', 'bad', 'limit'. With fix, cuts the chain where it goes wrong.

    A cluster whose own FAT entry is free (0) or bad ends the chain before it, as
    fsck.fat does ("Contains a free cluster. Assuming EOF."): its entry says it holds no data
    of any file."""
    vol, fat = w.vol, w.vol.fat
    clusters: list[int] = []
    bad = ff.BAD_CLUSTER[vol.fat_type]
    c = first
    while True:
        if not 2 <= c <= vol.layout.max_cluster:
            end = "range"
            break
        if w.used[c]:
            end = "cross"
            break
        nxt = fat.get(c)
        if nxt in (0, bad):
            end = "free" if nxt == 0 else "bad"
            break
        w.used[c] = 1
        clusters.append(c)
        if limit is not None and len(clusters) >= limit:
            end = "limit"
            break
        if fat.is_eoc(nxt):
            return clusters, "eoc"
        c = nxt
    prev = clusters[-1] if clusters else None
    if end in ("free", "bad"):
        w.add("fat.chain-free-cluster" if end == "free" else "fat.chain-bad-cluster",
              f"{what} {path}: the chain runs into cluster {c}, which the FAT marks {end}",
              _fat_entry_offset(vol, prev if prev else c), path,
              action=f"end the chain of {path} at cluster {prev}" if prev else
              f"mark cluster {c}, the first of {path}, as the end of its chain"
              if what == "directory" and end == "free" else f"clear the first cluster of {path}")
    elif end == "range":
        w.add("fat.cluster-out-of-range",
              f"{what} {path}: chain points to cluster {c:#x}, outside 2..{vol.layout.max_cluster:#x}",
              _fat_entry_offset(vol, prev) if prev else None, path,
              action=f"end the chain of {path} at cluster {prev}" if prev else
              f"clear the first cluster of {path}")
    elif end == "cross" and c in clusters:
        w.add("fat.chain-loop", f"{what} {path}: the chain loops back to its own cluster {c}",
              _fat_entry_offset(vol, prev) if prev else None, path,
              action=f"end the chain of {path} at cluster {prev}")
    elif end == "cross":
        w.add("fat.cross-linked", f"{what} {path}: cluster {c} already belongs to another chain",
              _fat_entry_offset(vol, prev) if prev else None, path,
              action=f"end the chain of {path} before the shared cluster {c}")
    if w.fix and prev is not None and end in ("range", "cross", "free", "bad"):
        fat.set(prev, fat.eoc)
    return clusters, end


def _check_entry(w: _Walk, d: Directory, info: DirEntryInfo) -> DirEntryInfo | None:
    """Check one 8.3 entry and its chain; returns the entry to descend into (directories)."""
    vol = w.vol
    lay = vol.layout
    if not ff.short_name_valid(info.raw_name):
        w.add("fat.bad-name", f"{info.path}: 8.3 name {info.raw_name!r} is not valid",
              info.entry_offset, info.path, action=f"rename {info.path} to a valid 8.3 name")
        if w.fix:
            _rename_short(d, info)
            info = replace(info, raw_entry=d.raw(info.slot), raw_name=d.raw(info.slot)[0:11])
    if info.is_dir:
        if info.size_bytes:
            w.add("fat.bad-entry", f"{info.path}: directory entry with size {info.size_bytes}",
                  info.entry_offset, info.path, action=f"set the size of {info.path} to 0")
            if w.fix:
                d.write_slot(info.slot, with_cluster_and_size(info.raw_entry, info.first_cluster, 0))
        if info.first_cluster < 2 or info.first_cluster > lay.max_cluster:
            w.add("fat.bad-entry", f"{info.path}: directory without a valid first cluster "
                  f"({info.first_cluster})", info.entry_offset, info.path,
                  action=f"delete the entry {info.path}")
            if w.fix:
                _erase(d, info)
            return None
        if w.used[info.first_cluster]:
            w.add("fat.cross-linked", f"{info.path}: directory shares cluster "
                  f"{info.first_cluster} with another chain", info.entry_offset, info.path,
                  action=f"delete the entry {info.path}")
            if w.fix:
                _erase(d, info)
            return None
        return info
    need = -(-info.size_bytes // lay.cluster_bytes)
    if info.first_cluster == 0:
        if need:
            w.add("fat.chain-too-short", f"{info.path}: size {info.size_bytes} but no clusters",
                  info.entry_offset, info.path, action=f"set the size of {info.path} to 0")
            if w.fix:
                d.write_slot(info.slot, with_cluster_and_size(info.raw_entry, 0, 0))
        return None
    if info.first_cluster == 1 or info.first_cluster > lay.max_cluster or w.used[info.first_cluster]:
        code = "fat.cross-linked" if 2 <= info.first_cluster <= lay.max_cluster \
            else "fat.cluster-out-of-range"
        w.add(code, f"{info.path}: first cluster {info.first_cluster} is "
              + ("already in use" if code == "fat.cross-linked" else "out of range"),
              info.entry_offset, info.path, action=f"truncate {info.path} to 0 bytes")
        if w.fix:
            d.write_slot(info.slot, with_cluster_and_size(info.raw_entry, 0, 0))
        return None
    if need == 0:
        extra = vol.fat.chain_list(info.first_cluster)
        w.add("fat.chain-too-long", f"{info.path}: empty file owns {len(extra)} cluster(s)",
              info.entry_offset, info.path, action=f"free the clusters of the empty {info.path}")
        if w.fix:
            d.write_slot(info.slot, with_cluster_and_size(info.raw_entry, 0, 0))
        else:
            for c in extra:
                w.used[c] = 1
        return None
    clusters, end = _follow(w, info.first_cluster, "file", info.path, need)
    have = len(clusters) * lay.cluster_bytes
    if end == "limit" and not vol.fat.is_eoc(vol.fat.get(clusters[-1])):
        extra = vol.fat.chain_list(vol.fat.get(clusters[-1]))
        w.add("fat.chain-too-long", f"{info.path}: chain has {len(extra)} cluster(s) more than "
              f"its size of {info.size_bytes} bytes needs", info.entry_offset, info.path,
              action=f"free the {len(extra)} surplus cluster(s) of {info.path}")
        if w.fix:
            vol.fat.set(clusters[-1], vol.fat.eoc)
        else:
            for c in extra:
                w.used[c] = 1
    elif have < info.size_bytes:
        w.add("fat.chain-too-short", f"{info.path}: size {info.size_bytes} but the chain holds "
              f"{have} bytes", info.entry_offset, info.path,
              action=f"set the size of {info.path} to {have}")
        if w.fix:
            d.write_slot(info.slot, with_cluster_and_size(
                info.raw_entry, info.first_cluster if clusters else 0, have))
    return None


def _erase(d: Directory, info: DirEntryInfo) -> None:
    for s in info.lfn_slots + (info.slot,):
        raw = bytearray(d.raw(s))
        raw[0] = ff.DELETED_MARK
        d.write_slot(s, bytes(raw))


def _rename_short(d: Directory, info: DirEntryInfo) -> None:
    taken = {bytes(d.data[i * E:i * E + 11]) for i in range(d.slots)}
    fixed = bytearray()
    for b in info.raw_name:
        if b in ff.SHORT_NAME_INVALID:
            b = ord("_")
        elif 0x61 <= b <= 0x7A:
            b -= 0x20
        fixed.append(b)
    if fixed[0] == 0x20:
        fixed[0] = ord("_")
    body = bytes(fixed)
    base = body[:8].rstrip(b" ").replace(b" ", b"_").ljust(8, b" ")
    ext = body[8:].rstrip(b" ").replace(b" ", b"_").ljust(3, b" ")
    cand = base + ext
    n = 1
    while cand in taken or not ff.short_name_valid(cand):
        tail = f"~{n}".encode()
        cand = (base.rstrip(b" ")[:8 - len(tail)] + tail).ljust(8, b" ") + ext
        n += 1
    raw = bytearray(info.raw_entry)
    raw[0:11] = cand
    d.write_slot(info.slot, bytes(raw))
    for s in info.lfn_slots:   # the long name's checksum named the old 8.3 name
        lfn = bytearray(d.raw(s))
        lfn[13] = ff.lfn_checksum(cand)
        d.write_slot(s, bytes(lfn))


def _walk_dir(w: _Walk, first: int, path: str, parent_cluster: int | None,
              info: DirEntryInfo | None) -> None:
    vol = w.vol
    pending = [(first, path, parent_cluster, info)]
    while pending:
        first, path, parent_cluster, info = pending.pop()
        if first or vol.fat_type == 32:
            limit = max(1, 65536 * E // vol.layout.cluster_bytes)
            start = first or vol.layout.root_cluster
            clusters, end = _follow(w, start, "directory", path, limit)
            if not clusters and end == "free" and w.fix:
                vol.fat.set(start, vol.fat.eoc)     # keep the directory's first cluster
                w.used[start] = 1
        d = vol.directory(first)
        if info is not None and parent_cluster is not None:
            check_dots(w, d, info, parent_cluster)
        check_lfn_fields(w, d, path)
        for item in d.items():
            if item.kind == "orphan-lfn":
                w.add("fat.lfn-orphan", f"{path}: {len(item.lfn_slots)} long-name slot(s) that "
                      "belong to no entry", d.slot_offset(item.slot), path, Severity.WARNING,
                      action=f"delete {len(item.lfn_slots)} stray long-name slot(s) in {path}")
                if w.fix:
                    for s in item.lfn_slots:
                        raw = bytearray(d.raw(s))
                        raw[0] = ff.DELETED_MARK
                        d.write_slot(s, bytes(raw))
        entries = check_duplicates(w, d, list(d.entries(path)), path)
        for e in entries:
            if e.is_label and not e.is_dir or e.raw_name[:1] == b"." and e.slot < 2 and first:
                continue
            if e.lfn_slots and e.name == e.short_name and _lfn_bad(d, e):
                w.add("fat.lfn-checksum", f"{e.path}: long-name checksum does not match the 8.3 "
                      "name", d.slot_offset(e.lfn_slots[0]), e.path,
                      action=f"drop the long name of {e.path}")
                if w.fix:
                    for s in e.lfn_slots:
                        raw = bytearray(d.raw(s))
                        raw[0] = ff.DELETED_MARK
                        d.write_slot(s, bytes(raw))
            sub = _check_entry(w, d, e)
            if sub is not None:
                pending.append((sub.first_cluster, sub.path, first or vol.root_first_cluster, sub))


def _lfn_bad(d: Directory, e: DirEntryInfo) -> bool:
    return d.raw(e.lfn_slots[0])[13] != ff.lfn_checksum(e.raw_name)


def _walk_volume(vol: FatVolume, fix: bool, discard_lost: bool = False) -> _Walk:
    w = _Walk(vol, fix, used=bytearray(vol.layout.max_cluster + 1))
    _walk_dir(w, vol.root_first_cluster if vol.fat_type == 32 else 0, "/", None, None)
    check_lost(w, discard_lost)
    media = vol.fat.get(0) & 0xFF
    if media != vol.layout.media:
        w.add("fat.media-mismatch", f"FAT[0] holds media byte {media:#04x}, the boot sector "
              f"says {vol.layout.media:#04x}", vol.layout.fat_offset, None,
              action="write the media byte into FAT[0]")
        if fix:
            vol.fat.set(0, (ff.ENTRY_MASK[vol.fat_type] & ~0xFF) | vol.layout.media)
    return w


def _score(w: _Walk) -> int:
    return sum(1 for f in w.findings if f.code != "fat.fsinfo-free-count")


@dataclass(frozen=True)
class CheckResult:
    findings: list[Finding]
    actions: list[str]
    fat_copy: int          # the FAT copy trusted (0 = FAT #1)


def check_volume(target: FatVolume | BlockDevice, partition: int | None = None,
                 path: str | None = None, fix: bool = False,
                 discard_lost: bool = False) -> CheckResult:
    """Every finding of a volume (and, with fix, repair them on its device; lost chains
    are saved as files unless `discard_lost`). The dirty flags are cleared last, once
    everything else is repaired."""
    from .check_meta import (
        check_backup_boot,
        check_dirty,
        check_fat_copies,
        check_fsinfo,
        check_label,
        recover_boot_sector,
    )
    findings: list[Finding] = []
    actions: list[str] = []
    if isinstance(target, FatVolume):
        vol = target
    else:
        try:
            vol = open_volume(target, partition, path)
        except FormatError as exc:
            recovered = recover_boot_sector(target, partition, path, exc, fix, findings, actions)
            if recovered is None:
                return CheckResult(findings, actions, 0)
            vol = recovered
    findings += check_backup_boot(vol, fix, actions)
    copy, differ = check_fat_copies(vol)
    if differ:
        scores = []
        for k in range(vol.layout.fat_count):
            trial = FatVolume(vol.dev, vol.layout, vol.path, vol.partition, k)
            scores.append((_score(_walk_volume(trial, False)), k))
        copy = min(scores)[1]
        findings.append(Finding("fat.fats-differ", Severity.ERROR,
                                f"the {vol.layout.fat_count} FAT copies differ; FAT #{copy + 1} "
                                "is the consistent one", _base(vol) + vol.layout.fat_offset, True))
        if fix:
            actions.append(f"copy FAT #{copy + 1} over the other FAT copies")
    work = FatVolume(vol.dev, vol.layout, vol.path, vol.partition, copy)
    if fix and differ:
        work.fat.mark_all_dirty()
    w = _walk_volume(work, fix, discard_lost)
    findings += w.findings
    actions += w.actions
    if fix:
        work.fat.flush()
    findings += check_label(work, fix, actions)
    findings += check_fsinfo(work, fix, actions)
    findings += check_dirty(work, fix, actions)
    if fix:
        work.dev.flush()
        if vol is target:
            vol.forget()        # the repair went through another view of the device
    return CheckResult(findings, actions, copy)
