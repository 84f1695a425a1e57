"""`vdisk check` of a VHDX file: every structural rule of MS-VHDX as a Finding
(specs/vhdx.md §Invariants). Nothing here raises for what it finds.

The headers, region tables and metadata are parsed in collecting mode (layout.py); the
log is searched for its active sequence without applying it; the BAT is read in 1 MiB
pieces and every entry judged: its state for the file's type, reserved bits, where its
block lies (after the header section, inside the file, overlapping nothing).
"""
from __future__ import annotations

import os
from array import array

from ...errors import Severity, VdiskError
from ...formats import vhdx as vx
from .. import hostio, platform
from . import log as vlog
from .layout import Layout, Problems, _Stop, check_log_fields, read_headers, read_metadata, read_regions

E, W = Severity.ERROR, Severity.WARNING
BAT_PIECE_ENTRIES = 1 << 17      # 1 MiB of BAT at a time


def check_vhdx(path: str, report, allow_outside: bool = False):
    """Fill `report` (image/check.py CheckReport) with the findings of the VHDX at `path`."""
    from ..check import TableFix
    report.units = "blocks"
    fd = platform.open_fd(path, os.O_RDONLY)
    try:
        fb = hostio.file_bytes(fd)

        def read(n: int, off: int) -> bytes:
            return hostio.pread(fd, n, off)

        probs = Problems(strict=False, path=path)
        lay = None
        try:
            headers, current = read_headers(read, fb, probs)
            lay = Layout(fb, headers, current)
            for h in headers:
                if h.fields is None:
                    src = headers[current]
                    report.fixes.append(TableFix(path, src.offset, h.offset, vx.HEADER_BYTES,
                                                 f"header {h.slot + 1} from header {src.slot + 1}"))
            check_log_fields(lay.header, fb, probs, headers[current].offset)
            _check_log(read, lay, report, path)
            read_regions(read, lay, probs)
            if any(p.code == "vhdx.region-table-damaged" for p in probs.found):
                good, bad = lay.region_slot, 1 - lay.region_slot
                report.fixes.append(TableFix(path, vx.REGION_TABLE_OFFSETS[good],
                                             vx.REGION_TABLE_OFFSETS[bad], vx.REGION_TABLE_BYTES,
                                             f"region table {bad + 1} from region table {good + 1}"))
            read_metadata(read, lay, probs)
        except _Stop:
            lay = None
        for p in probs.found:
            report.add(p.code, E if p.fatal else W, p.message, p.offset, p.fixable, path)
        if lay is not None and not report.replay_log:
            _check_bat(read, lay, report, path)
            if lay.has_parent:
                _check_parent(path, report, allow_outside)
    finally:
        os.close(fd)
    return report


def _check_log(read, lay: Layout, report, path: str) -> None:
    h = lay.header
    if h.log_guid == vx.ZERO_GUID or not h.log_length_bytes:
        return
    try:
        seq = vlog.find_active_sequence(read, h.log_offset, h.log_length_bytes, h.log_guid)
    except vlog.LogError as exc:
        report.add(exc.code, E, f"log: {exc}", h.log_offset, path=path)
        raise _Stop from None
    if seq is None:
        report.add("vhdx.log-bad", E, "the log is not empty (LogGuid is set) but holds no valid "
                   "entry sequence", h.log_offset, path=path)
        raise _Stop
    if lay.file_bytes < seq.head.flushed_file_offset:
        report.add("vhdx.log-truncated", E, f"the file is {lay.file_bytes} bytes, shorter than "
                   f"the {seq.head.flushed_file_offset} its log says were flushed", h.log_offset,
                   path=path)
        raise _Stop
    report.add("vhdx.log-pending", W, f"the log holds {len(seq.entries)} entries not yet "
               "applied (an interrupted write): readers apply them first; --repair replays "
               "them into the file", h.log_offset, fixable=True, path=path)
    report.replay_log = True


def _check_bat(read, lay: Layout, report, path: str) -> None:
    ratio = lay.chunk_ratio
    diff = lay.has_parent
    count = lay.bat_count
    block_bytes = lay.block_bytes
    spans = array("Q")              # start, end pairs of every allocated block
    metas = [(lay.header.log_offset, lay.header.log_offset + lay.header.log_length_bytes)]
    metas += [(o, o + n) for o, n in lay.regions.values()]
    reported = 0
    for first in range(0, count, BAT_PIECE_ENTRIES):
        n = min(BAT_PIECE_ENTRIES, count - first)
        raw = read(n * 8, lay.bat_offset + first * 8)
        vals = array("Q", raw[:n * 8])
        for k, e in enumerate(vals):
            i = first + k
            at = lay.bat_offset + i * 8
            bitmap = i % (ratio + 1) == ratio
            st = e & vx.STATE_MASK
            kind = "sector bitmap" if bitmap else f"block {i - i // (ratio + 1)}"
            what = f"BAT entry {i} ({kind})"
            bad = _bad_state(st, bitmap, diff)
            if bad:
                if reported < 20:
                    report.add("vhdx.bat-state-invalid", E, f"{what}: state {st} {bad}", at, path=path)
                reported += 1
                continue
            if e & vx.RESERVED_MASK:
                report.add("vhdx.bat-reserved-bits", W, f"{what}: reserved bits set "
                           f"(0x{e & vx.RESERVED_MASK:x})", at, path=path)
            allocated = (st == vx.SB_BLOCK_PRESENT) if bitmap else st in (
                vx.PAYLOAD_BLOCK_FULLY_PRESENT, vx.PAYLOAD_BLOCK_PARTIALLY_PRESENT)
            if not allocated:
                continue
            off = vx.bat_offset(e)
            length = vx.SECTOR_BITMAP_BLOCK_BYTES if bitmap else block_bytes
            if off < vx.HEADER_SECTION_BYTES:
                report.add("vhdx.bat-misplaced", E, f"{what} points to 0x{off:x}, inside the "
                           "header section", at, path=path)
                continue
            block = i - i // (ratio + 1)
            need = length if bitmap else min(block_bytes, lay.virtual_bytes - block * block_bytes)
            if off + need > lay.file_bytes:
                report.add("vhdx.bat-past-eof", E, f"{what} points to 0x{off:x}, past the end of "
                           f"the file ({lay.file_bytes} bytes)", at, path=path)
                continue
            if not bitmap and st == vx.PAYLOAD_BLOCK_PARTIALLY_PRESENT:
                sb = _entry(read, lay, (i // (ratio + 1)) * (ratio + 1) + ratio)
                if sb & vx.STATE_MASK != vx.SB_BLOCK_PRESENT:
                    report.add("vhdx.bitmap-missing", E, f"{what} is partially present but its "
                               "chunk has no sector bitmap block", at, path=path)
            spans.extend((off, off + length))
            report.grains_checked += 1
    if reported > 20:
        report.add("vhdx.bat-state-invalid", E, f"... and {reported - 20} more BAT entries with "
                   "invalid states", lay.bat_offset, path=path)
    _overlaps(spans, metas, report, path, lay.bat_offset)


def _entry(read, lay: Layout, index: int) -> int:
    return int.from_bytes(read(8, lay.bat_offset + index * 8).ljust(8, b"\0"), "little")


def _bad_state(st: int, bitmap: bool, diff: bool) -> str | None:
    if bitmap:
        if st == vx.SB_BLOCK_NOT_PRESENT or (st == vx.SB_BLOCK_PRESENT and diff):
            return None
        return "is not valid for a sector bitmap entry" + ("" if diff else " of a file without parent")
    if st not in vx.PAYLOAD_STATES:
        return "is reserved"
    if st == vx.PAYLOAD_BLOCK_PARTIALLY_PRESENT and not diff:
        return "(partially present) is only valid in a differencing file"
    return None


def _overlaps(spans: array, metas: list[tuple[int, int]], report, path: str, at: int) -> None:
    pairs = sorted([(spans[i], spans[i + 1], "block") for i in range(0, len(spans), 2)]
                   + [(a, b, "structure") for a, b in metas if b > a])
    shown = 0
    for (a0, a1, ak), (b0, _b1, bk) in zip(pairs, pairs[1:], strict=False):
        if b0 < a1 and not (ak == bk == "structure"):
            if shown < 20:
                report.add("vhdx.block-overlap", E, f"the {ak} at 0x{a0:x}..0x{a1:x} overlaps the "
                           f"{bk} at 0x{b0:x}", at, path=path)
            shown += 1


def _check_parent(path: str, report, allow_outside: bool) -> None:
    from . import open_vhdx
    try:
        open_vhdx(path, allow_outside=allow_outside).close()
    except VdiskError as exc:
        report.add("vhdx.parent-unusable", E, str(exc.message), path=path)
