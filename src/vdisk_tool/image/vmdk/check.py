"""The VMDK checks of `vdisk check` (specs/vmdk.md §Invariants): the descriptor and its ddb
values, flat extent sizes, sparse extents (header, grain directories and tables, grains,
leaks), streamOptimized markers and end-of-stream, and the snapshot parent. check_disk
(image/check.py) calls check_vmdk for every disk that is not qcow2 (a raw disk has no VMDK finding).
"""
from __future__ import annotations

import bisect
import os
import re
import struct
from array import array
from collections.abc import Iterator

from ...errors import ImageError, Severity, VdiskError
from ...formats import vmdk_descriptor as vd
from ...formats import vmdk_sparse as vs
from ..check import CheckReport, EntryFix, TableFix
from ..disk import Disk, _resolve, open_image
from .sparse import SparseExtent, eos_problem, zero_entries

SECTOR = vs.SECTOR_BYTES
E, W, INFO = Severity.ERROR, Severity.WARNING, Severity.INFO


def check_vmdk(disk: Disk, r: CheckReport, allow_outside: bool = False) -> None:
    """Every VMDK finding of an opened disk into `r` (a raw disk has none)."""
    _check_descriptor(disk, r)
    for idx, ext in enumerate(disk.extents):
        if isinstance(ext.device, SparseExtent):
            _check_sparse(ext.device, r)
        elif ext.path and ext.line is not None and ext.kind in ("FLAT", "VMFS"):
            _check_flat(idx, ext, r)
    _check_chain(disk, r, allow_outside)


def _check_descriptor(disk: Disk, r: CheckReport) -> None:
    desc = disk.descriptor
    if disk.format == "raw" or desc is None:
        return
    p = disk.descriptor_path
    if desc.cid is None:
        r.add("vmdk.descriptor-cid", W, "descriptor has no valid CID", path=p)
    ctype = desc.create_type
    if ctype is None:
        r.add("vmdk.descriptor-createtype", W, "descriptor has no createType", path=p)
    elif ctype not in vd.CREATE_TYPES:
        r.add("vmdk.descriptor-createtype", W, f"unknown createType {ctype!r}", path=p)
    first = next((ln.strip() for ln in desc.lines if ln.strip()), "")
    if not vd.is_header_line(first):
        r.add("vmdk.descriptor-header", W, f"the first line is {first[:40]!r}, not "
              f"{vd.HEADER_LINE!r}: the descriptor was damaged or hand-edited", path=p)
    _check_ddb(desc, r, p)
    for w in disk.warnings:
        r.add("vmdk.descriptor-extent-size", E, w, path=p)
    seen: dict[str, int] = {}
    for i, ext in enumerate(disk.extents):
        if ext.path is None:
            continue
        real = os.path.realpath(ext.path)
        if real in seen:
            r.add("vmdk.extent-shared", E, f"extent lines {seen[real] + 1} and {i + 1} name the same "
                  f"file {os.path.basename(ext.path)!r}: a write to one overwrites the other", path=p)
        seen.setdefault(real, i)
    adapter = desc.get("ddb.adapterType")
    if adapter is not None and adapter not in vd.ADAPTER_TYPES:
        r.add("vmdk.descriptor-adapter", W, f"unknown ddb.adapterType {adapter!r}", path=p)


def _check_ddb(desc: vd.Descriptor, r: CheckReport, p: str | None) -> None:
    """vmdk.ddb-value: every ddb.* value is quoted, and the well-known keys hold values of
    their form (vmdk_descriptor.DDB_VALUE_FORMS)."""
    for key in sorted(k for k in desc.keys if k.startswith("ddb.")):
        raw = desc.raw_value(key) or ""
        name = desc.lines[desc.keys[key]].split("=", 1)[0].strip()
        if not (len(raw) >= 2 and raw.startswith('"') and raw.endswith('"')):
            r.add("vmdk.ddb-value", W, f"{name} = {raw[:40]}: the value is not quoted", path=p)
            continue
        form = vd.DDB_VALUE_FORMS.get(key)
        if form is not None and not re.fullmatch(form[0], raw[1:-1]):
            r.add("vmdk.ddb-value", W, f"{name} is {raw[:40]}, expected {form[1]}", path=p)


def _check_flat(idx: int, ext, r: CheckReport) -> None:
    need = ext.size_bytes + (ext.line.offset_sectors or 0) * SECTOR
    have = os.path.getsize(ext.path)
    if have == need:
        return
    if have % SECTOR == 0 and (ext.line.offset_sectors or 0) == 0:
        r.extent_sizes[idx] = have // SECTOR
        r.add("vmdk.flat-size-mismatch", E if have < need else W,
              f"extent line says {ext.line.sectors} sectors, {os.path.basename(ext.path)} holds "
              f"{have // SECTOR}", fixable=True, path=ext.path)
    else:
        r.add("vmdk.flat-size-mismatch", E, f"{os.path.basename(ext.path)} is {have} bytes, the "
              f"descriptor needs {need}", path=ext.path)


def _gte_valid(entry: int, geo, file_bytes: int, meta: _Spans) -> str | None:
    """None when a grain pointer is acceptable, else why not."""
    if entry == 0 or (entry == 1):
        return None
    start = entry * SECTOR
    if not geo.compressed:
        end = start + geo.grain_bytes
        if end > file_bytes:
            return "points past the end of the file"
    elif start + 12 > file_bytes:
        return "points past the end of the file"
    if entry < geo.overhead_sectors and not geo.compressed:
        return "points into the metadata area"
    if meta.hit(entry):
        return "points into the grain directory or a grain table"
    return None


class _Spans:
    """Sorted, merged metadata spans (sectors) with a bisect lookup."""

    def __init__(self, spans: list[tuple[int, int]]) -> None:
        merged: list[list[int]] = []
        for lo, hi in sorted(spans):
            if merged and lo <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], hi)
            else:
                merged.append([lo, hi])
        self.starts = [m[0] for m in merged]
        self.spans = [(m[0], m[1]) for m in merged]

    def hit(self, sector: int) -> bool:
        i = bisect.bisect_right(self.starts, sector) - 1
        return i >= 0 and sector < self.spans[i][1]


def _check_sparse(ext: SparseExtent, r: CheckReport) -> None:
    p, geo, h = ext.path, ext.geo, ext.footer or ext.header
    fb = ext.file_bytes
    if h.flags & vs.FLAG_VALID_NEWLINE_TEST and (
            h.single_end_line_char, h.non_end_line_char, h.double_end_line_char1,
            h.double_end_line_char2) != (b"\n", b" ", b"\r", b"\n"):
        r.add("vmdk.header-newline", E, "newline test characters are wrong: the file went through a "
              "text-mode (CR/LF) transfer", 73, path=p)
    if not 8 <= geo.grain_sectors <= 128:
        r.add("vmdk.grain-size-unusual", W, f"grainSize {geo.grain_sectors} sectors is outside "
              "VMware's range 8..128", 0x14, path=p)
    if geo.gtes_per_gt != vs.GTES_PER_GT:
        r.add("vmdk.gtes-per-gt", W, f"numGTEsPerGT is {geo.gtes_per_gt}, VMware uses 512", 0x2c, path=p)
    if geo.compressed and h.version < 3:
        r.add("vmdk.stream-version", W, f"streamOptimized header version {h.version}: ESXi "
              "rejects versions below 3", 4, path=p)
    if ext.header.unclean_shutdown:
        r.clear_unclean.append(p)
        r.add("vmdk.unclean-shutdown", W, "uncleanShutdown is set: the disk was not closed cleanly",
              72, fixable=True, path=p)
    if not geo.compressed and geo.overhead_sectors * SECTOR > fb:
        r.add("vmdk.truncated", E, f"file is {fb} bytes, shorter than its metadata "
              f"({geo.overhead_sectors * SECTOR} bytes)", fb, path=p)
    gd = ext.gd
    rgd = _safe(lambda: ext.read_rgd(), r, "vmdk.rgd-unreadable", p)
    layout = _regular_layout(ext, rgd)
    gt_sectors = vs.sectors_for_bytes(geo.gt_bytes)
    if layout is not None and rgd is not None:
        first, rfirst = layout
        for gdi in range(geo.gd_entries):
            if gd[gdi] != first + gt_sectors * gdi or rgd[gdi] != rfirst + gt_sectors * gdi:
                _fix_directory_entry(ext, gdi, rgd, layout, r)
    meta = [(geo.gd_offset_sectors, geo.gd_offset_sectors + vs.sectors_for_bytes(geo.gd_bytes))]
    if rgd is not None:
        meta.append((geo.rgd_offset_sectors,
                     geo.rgd_offset_sectors + vs.sectors_for_bytes(geo.gd_bytes)))
    for table in (gd, rgd):
        for _i, v in _nonzero(table):
            meta.append((v, v + gt_sectors))
    spans = _Spans(meta)
    tables, rtables = _TableReader(ext), _TableReader(ext)
    capacity_grains = -(-geo.capacity_sectors // geo.grain_sectors)
    owners: dict[int, int] = {}
    grain_owner: dict[int, int] = {}
    used: list[tuple[int, int]] = []
    gdi = -1
    while gdi + 1 < geo.gd_entries:
        gdi += 1
        if gd[gdi] == 0 and (rgd is None or rgd[gdi] == 0):
            skip = min(zero_entries(gd, gdi), zero_entries(rgd, gdi) if rgd is not None else 1 << 62)
            if skip > 1:
                gdi += skip - 1
                continue
        if gd[gdi] and gd[gdi] not in owners and _both_zero(tables, rtables, gdi, gd, rgd, fb):
            owners[gd[gdi]] = gdi   # two empty tables (most of a large disk): nothing to check
            continue
        primary = _load_gt(tables, gd[gdi], fb, r, p, f"grain table {gdi}")
        backup = _load_gt(rtables, rgd[gdi], fb, r, p, f"redundant grain table {gdi}") \
            if rgd is not None else None
        if gd[gdi] and gd[gdi] in owners:
            r.add("vmdk.gt-shared", E, f"grain directory entries {owners[gd[gdi]]} and {gdi} name the "
                  f"same grain table (sector {gd[gdi]})", geo.gd_offset_sectors * SECTOR + 4 * gdi, path=p)
            primary = None
        elif gd[gdi]:
            owners[gd[gdi]] = gdi
        chosen = _reconcile(ext, gdi, primary, backup, rgd, spans, r)
        if chosen is None:
            continue
        if zero_entries(chosen, 0) >= len(chosen):
            continue
        base_grain = gdi * geo.gtes_per_gt
        within = max(0, min(len(chosen), capacity_grains - base_grain))
        for i in _nonzero_below(chosen, within):
            grain, entry = base_grain + i, chosen[i]
            r.grains_checked += 1
            if entry == 1:
                if not geo.zero_grain_flag:
                    r.add("vmdk.zero-grain-without-flag", W, f"grain {grain} is marked zeroed (GTE 1) "
                          "but the header lacks the zeroed-grain flag", path=p)
                continue
            why = _gte_valid(entry, geo, fb, spans)
            if why:
                r.add("vmdk.grain-pointer", E, f"grain {grain} (sector {entry}) {why}",
                      entry * SECTOR, path=p)
                continue
            if entry in grain_owner:
                r.add("vmdk.grain-shared", E, f"grains {grain_owner[entry]} and {grain} share the "
                      f"data at sector {entry}", entry * SECTOR, path=p)
                continue
            grain_owner[entry] = grain
            if geo.compressed:
                _check_compressed_grain(ext, grain, entry, r)
            else:
                used.append((entry, entry + geo.grain_sectors))
        if within < len(chosen):
            extra = [base_grain + k for k in range(within, len(chosen)) if chosen[k] > 1]
            if extra:
                r.add("vmdk.gte-beyond-capacity", INFO, f"grain {extra[0]} lies beyond the capacity "
                      f"but is allocated ({len(extra)} such entries)", path=p)
                used.extend((chosen[g - base_grain], chosen[g - base_grain] + geo.grain_sectors)
                            for g in extra if _gte_valid(chosen[g - base_grain], geo, fb, spans) is None)
    if not geo.compressed:
        _check_leaks(ext, used, meta, r)
    else:
        _check_stream(ext, r)


_ZERO_BLOCK = bytes(4 * 64)


def _nonzero_below(table: array, n: int) -> Iterator[int]:
    """The indexes below `n` of the table's non-zero entries, skipping blocks of 64 zero
    entries without a Python step per entry."""
    for lo in range(0, n, 64):
        hi = min(lo + 64, n)
        if table[lo:hi].tobytes() == _ZERO_BLOCK[:4 * (hi - lo)]:
            continue
        for i in range(lo, hi):
            if table[i]:
                yield i


def _nonzero(table: array | None):
    """(index, value) of the non-zero entries, skipping all-zero blocks without a Python step
    per entry."""
    i = 0
    n = len(table) if table is not None else 0
    while i < n:
        z = zero_entries(table, i)  # type: ignore[arg-type]
        if z:
            i += z
            continue
        for k in range(i, min(i + 4096, n)):
            if table[k]:  # type: ignore[index]
                yield k, table[k]  # type: ignore[index]
        i += 4096


def _safe(fn, r: CheckReport, code: str, p: str):
    try:
        return fn()
    except VdiskError as exc:
        r.add(code, E, exc.message, exc.offset, path=p)
        return None


def _regular_layout(ext: SparseExtent, rgd: array | None) -> tuple[int, int] | None:
    """(first GT sector, first redundant GT sector) when the tables sit right after their
    directories, one after the other, as VMware and qemu lay them out; None otherwise."""
    if rgd is None:
        return None
    geo = ext.geo
    gd_sectors = vs.sectors_for_bytes(geo.gd_bytes)
    gt_sectors = vs.sectors_for_bytes(geo.gt_bytes)
    first, rfirst = geo.gd_offset_sectors + gd_sectors, geo.rgd_offset_sectors + gd_sectors
    n = geo.gd_entries
    end, rend = first + gt_sectors * n, rfirst + gt_sectors * n
    inside = end <= geo.overhead_sectors and rend <= geo.overhead_sectors
    apart = rend <= geo.gd_offset_sectors or rfirst >= geo.gd_offset_sectors + gd_sectors
    if not (inside and apart):
        return None
    agree = sum(1 for i in range(n) if ext.gd[i] == first + gt_sectors * i)
    ragree = sum(1 for i in range(n) if rgd[i] == rfirst + gt_sectors * i)
    return (first, rfirst) if inside and apart and agree + ragree >= n else None


def _fix_directory_entry(ext: SparseExtent, gdi: int, rgd: array, layout: tuple[int, int],
                         r: CheckReport) -> None:
    """A directory entry that is not where the regular layout puts its table is repaired
    when the table at the expected place equals the other directory's table (not a guess:
    the two copies agree). The in-memory directory is corrected for the rest of the check."""
    geo, p = ext.geo, ext.path
    gt_sectors = vs.sectors_for_bytes(geo.gt_bytes)
    fb = ext.file_bytes
    pairs = (("grain directory", ext.gd, rgd, layout[0], layout[1], geo.gd_offset_sectors),
             ("redundant grain directory", rgd, ext.gd, layout[1], layout[0], geo.rgd_offset_sectors))
    for which, entries, others, first, other_first, dir_sector in pairs:
        expected = first + gt_sectors * gdi
        if entries[gdi] == expected or others[gdi] != other_first + gt_sectors * gdi:
            continue
        if (expected + gt_sectors) * SECTOR > fb or (others[gdi] + gt_sectors) * SECTOR > fb:
            continue
        candidate = ext.read_gt_at(expected)
        if candidate != ext.read_gt_at(others[gdi]):
            continue
        r.entry_fixes.append(EntryFix(p, dir_sector * SECTOR + 4 * gdi, expected,
                                      f"{which} entry {gdi}"))
        r.add("vmdk.gd-entry", E, f"{which} entry {gdi} is {entries[gdi]}; its table is at sector "
              f"{expected}, where it agrees with the other directory's table",
              dir_sector * SECTOR + 4 * gdi, fixable=True, path=p)
        entries[gdi] = expected


class _TableReader:
    """Grain tables of one directory, read a window at a time while they follow each other
    in the file (VMware and qemu lay them out back to back): the check of a large-capacity
    disk makes a few large reads, not thousands of 2 KiB ones. Memory: one window."""

    WINDOW = 1 << 20

    def __init__(self, ext: SparseExtent) -> None:
        self.ext = ext
        self.size = ext.geo.gt_bytes
        self.zero = bytes(self.size)
        self.window, self.at, self.next = b"", -1, -1

    def raw(self, sector: int) -> bytes:
        """The table's bytes (the caller has checked that the table lies inside the file)."""
        off = sector * SECTOR
        if not (self.at <= off and off + self.size <= self.at + len(self.window)):
            if off != self.next:   # not where the last table ended: read just this one
                self.next = off + self.size
                return self.ext.pread(self.size, off)
            self.window = self.ext.pread(max(self.size, min(self.WINDOW, self.ext.file_bytes - off)),
                                         off)
            self.at = off
        self.next = off + self.size
        start = off - self.at
        return self.window[start:start + self.size]

    def read(self, sector: int) -> array:
        gt = array("I")
        gt.frombytes(self.raw(sector))
        return gt


def _both_zero(tables: _TableReader, rtables: _TableReader, gdi: int, gd: array,
               rgd: array | None, fb: int) -> bool:
    """Whether grain table gdi and its redundant copy (if any) both lie in the file and hold
    only zeros: then they agree, allocate nothing, and the full comparison is not needed."""
    secs = [gd[gdi]] if rgd is None else [gd[gdi], rgd[gdi]]
    gt_sectors = vs.sectors_for_bytes(tables.size)
    if 0 in secs or any((sec + gt_sectors) * SECTOR > fb for sec in secs):
        return False
    readers = (tables, rtables)[:len(secs)]
    return all(reader.raw(sec) == tables.zero for reader, sec in zip(readers, secs, strict=True))


def _load_gt(tables: _TableReader, sector: int, fb: int, r: CheckReport, p: str,
             what: str) -> array | None:
    if sector == 0:
        return None
    if (sector + vs.sectors_for_bytes(tables.size)) * SECTOR > fb:
        r.add("vmdk.gt-out-of-range", E, f"{what} at sector {sector} lies past the end of the file",
              sector * SECTOR, path=p)
        return None
    return tables.read(sector)


def _table_ok(t: array | None, ext: SparseExtent, meta) -> bool:
    return t is not None and all(_gte_valid(v, ext.geo, ext.file_bytes, meta) is None for v in t)


def _reconcile(ext: SparseExtent, gdi: int, primary: array | None, backup: array | None,
               rgd: array | None, meta, r: CheckReport) -> array | None:
    """Compare a GT with its redundant copy; plan a fix when exactly one side is sound."""
    geo, p = ext.geo, ext.path
    if rgd is None:
        return primary
    gd_sec, rgd_sec = ext.gd[gdi], rgd[gdi]
    if (gd_sec == 0) != (rgd_sec == 0):
        r.add("vmdk.gd-rgd-mismatch", E, f"grain directory entry {gdi} is {gd_sec}, its redundant "
              f"copy is {rgd_sec}", geo.gd_offset_sectors * SECTOR + 4 * gdi, path=p)
        return primary if primary is not None else backup
    if primary is None and backup is None:
        return None
    if primary is not None and backup is not None and primary == backup:
        return primary
    p_ok, b_ok = _table_ok(primary, ext, meta), _table_ok(backup, ext, meta)
    gb = geo.gt_bytes
    if p_ok and not b_ok and backup is not None:
        r.fixes.append(TableFix(p, gd_sec * SECTOR, rgd_sec * SECTOR, gb,
                                f"redundant grain table {gdi} from the primary"))
        r.add("vmdk.gt-rgt-mismatch", E, f"redundant grain table {gdi} is damaged; the primary is "
              "sound", rgd_sec * SECTOR, fixable=True, path=p)
        return primary
    if b_ok and not p_ok and primary is not None:
        r.fixes.append(TableFix(p, rgd_sec * SECTOR, gd_sec * SECTOR, gb,
                                f"grain table {gdi} from its redundant copy"))
        r.add("vmdk.gt-rgt-mismatch", E, f"grain table {gdi} is damaged; its redundant copy is "
              "sound", gd_sec * SECTOR, fixable=True, path=p)
        return backup
    r.add("vmdk.gt-rgt-mismatch", E, f"grain table {gdi} and its redundant copy differ and both "
          "look plausible: cannot tell which is right", gd_sec * SECTOR, path=p)
    return primary if p_ok else None


def _check_leaks(ext: SparseExtent, used: list[tuple[int, int]], meta, r: CheckReport) -> None:
    """Grain-sized stretches after the metadata that no table points to (space wasted)."""
    geo = ext.geo
    end_sector = ext.file_bytes // SECTOR
    spans = sorted(used + [m for m in meta if m[0] >= geo.overhead_sectors])
    pos, leaked = geo.overhead_sectors, 0
    for lo, hi in spans:
        if lo > pos:
            leaked += (lo - pos) // geo.grain_sectors
        pos = max(pos, hi)
    if end_sector > pos:
        leaked += (end_sector - pos) // geo.grain_sectors
    if leaked:
        r.add("vmdk.leaked-grains", W, f"{leaked} grain(s) of file space are not referenced by any "
              "grain table (wasted space; `vdisk convert` compacts)", path=ext.path)


def _check_compressed_grain(ext: SparseExtent, grain: int, entry: int, r: CheckReport) -> None:
    try:
        ext.read_grain(grain, entry)
    except VdiskError as exc:
        r.add("vmdk.stream-grain", E, exc.message, entry * SECTOR, path=ext.path)


def _next_nonzero_sector(ext: SparseExtent, pos: int, fb: int) -> int:
    """The first sector at or after pos holding a non-zero byte (fb when none)."""
    while pos < fb:
        block = ext.pread(min(1 << 16, fb - pos), pos)
        if not block:
            return fb
        stripped = block.lstrip(b"\0")
        if stripped:
            return pos + (len(block) - len(stripped)) // SECTOR * SECTOR
        pos += len(block)
    return fb


def _check_stream(ext: SparseExtent, r: CheckReport) -> None:
    """Walk the markers from the first grain to the end: types, EOS, footer.

    A zero sector is the end-of-stream marker only when nothing but zeros follows it
    (qemu pads between grains with zeros)."""
    geo, p, fb = ext.geo, ext.path, ext.file_bytes
    pos = geo.overhead_sectors * SECTOR
    saw_eos = saw_footer = False
    # with a footer but no EOS after it, walk only up to where the EOS belongs
    end = fb if ext.eos_offset is None else ext.eos_offset
    while pos + SECTOR <= end:
        head = ext.pread(16, pos)
        val, size, mtype = struct.unpack("<QII", head)
        if size:
            pos += -(-(12 + size) // SECTOR) * SECTOR
            continue
        if mtype == vs.MARKER_EOS and val == 0:
            nxt = _next_nonzero_sector(ext, pos, end)
            if nxt >= end:
                saw_eos = True
                break
            if nxt == pos:   # looks like an end-of-stream marker, but its padding is not zero
                r.add("vmdk.stream-marker", W, "a marker of type 0 with non-zero padding", pos,
                      path=p)
                nxt = pos + SECTOR
            pos = nxt
            continue
        if mtype in (vs.MARKER_GT, vs.MARKER_GD, vs.MARKER_FOOTER):
            if ext.pread(496, pos + 16).count(0) != 496:
                r.add("vmdk.stream-marker", W, "metadata marker padding is not zero", pos, path=p)
            saw_footer |= mtype == vs.MARKER_FOOTER
            pos += SECTOR * (1 + min(val, fb // SECTOR))
        elif mtype == vs.MARKER_PROGRESS:
            pos += SECTOR
        else:
            r.add("vmdk.stream-marker", E, f"unknown marker type {mtype} (numSectors {val})", pos,
                  path=p)
            return
    if not saw_eos:
        _no_eos(ext, end, r)
    if ext.header.gd_offset_sectors == vs.GD_AT_END and not saw_footer:
        r.add("vmdk.stream-footer", E, "header says GD_AT_END but no footer marker was found", path=p)


def _no_eos(ext: SparseExtent, eos_at: int, r: CheckReport) -> None:
    """vmdk.stream-no-eos: an error where the footer needs the EOS after it (GD_AT_END:
    readers refuse the file), a warning otherwise (older qemu streams). Fixable when the
    marker walk found nothing else wrong: the EOS sector is written where it belongs."""
    p = ext.path
    intact = not any(f.severity == E and f.path == p for f in r.findings)
    footer_first = ext.header.gd_offset_sectors == vs.GD_AT_END
    why = (eos_problem(ext.eos_offset, ext.file_bytes) if ext.eos_offset is not None
           else "the stream has no end-of-stream marker")
    if intact:
        r.eos_fixes.append((p, eos_at))
    r.add("vmdk.stream-no-eos", E if footer_first else W,
          why + (": readers (qemu-img, vdisk) refuse the file" if footer_first
                 else ": ESXi's OVF import rejects such files (older qemu writes them)"),
          eos_at, fixable=intact, path=p)


def _check_chain(disk: Disk, r: CheckReport, allow_outside: bool) -> None:
    desc = disk.descriptor
    if desc is None:
        return
    hint, pcid = desc.get("parentFileNameHint"), desc.parent_cid
    if pcid is None or pcid == vd.NO_PARENT_CID:
        if hint:
            r.add("vmdk.parent-hint-orphan", W, "parentFileNameHint is set but parentCID says no parent")
        return
    if not hint:
        r.add("vmdk.parent-missing", E, "parentCID names a parent but there is no parentFileNameHint")
        return
    base = os.path.dirname(os.path.abspath(disk.descriptor_path or disk.path))
    try:
        ppath = _resolve(base, hint, allow_outside, "parent", disk.path)
    except ImageError as exc:
        r.add("vmdk.parent-outside", E, exc.message)
        return
    if not os.path.exists(ppath):
        r.add("vmdk.parent-missing", E, f"parent {hint!r} does not exist")
        return
    try:
        with open_image(ppath, allow_outside=allow_outside) as parent:
            pc = parent.descriptor.cid if parent.descriptor else None
            if pc != pcid:
                r.add("vmdk.cid-mismatch", E, f"parentCID {pcid:08x} does not match the parent's CID "
                      f"{'none' if pc is None else format(pc, '08x')}: the parent changed after the "
                      "snapshot")
            if parent.size_bytes != disk.size_bytes:
                r.add("vmdk.parent-size", W, "parent and child capacities differ")
    except VdiskError as exc:
        r.add("vmdk.parent-unreadable", E, f"parent {hint!r}: {exc.message}")
