"""Verify the firmware image `ipva.bin` (specs/ipva-firmware.md; ipva-model.md §3).

`check_firmware` reads any byte source (a BlockDevice, a host file, a file on a FAT volume)
in one streaming pass of at most 1 MiB at a time and reports, in the order of §3, what
the boot loader would find: header, size, section table, each section's CRC, image CRC.
Every byte is fed to zlib.crc32 once; section and image CRCs are joined with
`crc32_combine`, so the cost is one CRC pass however the sections are laid out.
"""
from __future__ import annotations

import enum
import itertools
import os
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Protocol

from ..errors import Finding, FormatError, Severity
from ..formats import ipva_firmware as fw

CHUNK_BYTES = 1 << 20
MAX_IMAGE_BYTES = 1 << 32  # section offsets are u32: nothing can lie beyond 4 GiB

Progress = Callable[[int, int], None]


class ByteSource(Protocol):
    """What the verifier reads: a size and random reads (every BlockDevice qualifies)."""

    size_bytes: int

    def read_at(self, offset: int, length: int) -> bytes: ...


class FileObjectSource:
    """An open binary file (seekable) as a ByteSource."""

    def __init__(self, fileobj: BinaryIO) -> None:
        self._f = fileobj
        fileobj.seek(0, os.SEEK_END)
        self.size_bytes = fileobj.tell()

    def read_at(self, offset: int, length: int) -> bytes:
        self._f.seek(offset)
        data = self._f.read(length)
        if len(data) != length:
            raise FormatError(f"short read of {length} bytes", offset=offset)
        return data


class Status(str, enum.Enum):
    OK = "ok"
    FAILED = "failed"
    SKIPPED = "skipped"


@dataclass(frozen=True)
class Step:
    """One line of the verdict, in the order of §3. `sure` is False once an earlier check
    (the header CRC) failed, so that a failure here may only be its consequence."""

    key: str
    status: Status
    detail: str
    sure: bool = True

    def to_dict(self) -> dict[str, object]:
        return {"key": self.key, "status": self.status.value, "detail": self.detail,
                "sure": self.sure}


@dataclass(frozen=True)
class HeaderInfo:
    """The header's values as stored (meaningful only as far as the steps say)."""

    header_version: int
    header_bytes: int
    build: int
    version: str | None
    product: str | None
    image_bytes: int
    image_crc32: int
    section_count: int
    flags: int
    timestamp: int
    header_crc32: int
    found_header_crc32: int


@dataclass(frozen=True)
class SectionResult:
    index: int
    name: str
    offset: int
    size_bytes: int
    expected_crc32: int
    found_crc32: int | None
    status: Status


@dataclass(frozen=True)
class FirmwareReport:
    path: str | None
    file_bytes: int
    header: HeaderInfo | None
    sections: tuple[SectionResult, ...]
    found_image_crc32: int | None
    steps: tuple[Step, ...]
    findings: tuple[Finding, ...]

    @property
    def ok(self) -> bool:
        return not any(f.severity == Severity.ERROR for f in self.findings)

    def to_dict(self) -> dict[str, object]:
        h = self.header
        return {
            "path": self.path,
            "ok": self.ok,
            "file_bytes": self.file_bytes,
            "header": None if h is None else dict(h.__dict__),
            "sections": [dict(s.__dict__, status=s.status.value) for s in self.sections],
            "found_image_crc32": self.found_image_crc32,
            "steps": [s.to_dict() for s in self.steps],
            "findings": [f.to_dict() for f in self.findings],
        }


@dataclass
class _Checker:
    path: str | None
    findings: list[Finding] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)
    sure: bool = True

    def fail(self, code: str, message: str, offset: int | None = None,
             severity: Severity = Severity.ERROR) -> None:
        if not self.sure and severity == Severity.ERROR:
            message += " (may follow from the wrong header CRC)"
        self.findings.append(Finding(code, severity, message, offset, False, self.path))

    def step(self, key: str, status: Status, detail: str) -> None:
        self.steps.append(Step(key, status, detail, self.sure or status == Status.OK))


def _name(raw: bytes, index: int) -> str:
    text = fw.decode_text(raw)
    return text if text else f"#{index}"


def check_firmware(src: ByteSource, path: str | None = None,
                   progress: Progress | None = None) -> FirmwareReport:
    """Judge a firmware image as the boot loader would (§3), without raising for what
    is wrong with it. Reads the header once and the rest in one streaming pass."""
    c = _Checker(path)
    n = src.size_bytes
    if n < fw.HEADER_BYTES:
        c.fail("fw.truncated", f"the file holds {n} bytes, less than the "
               f"{fw.HEADER_BYTES}-byte header", n)
        c.step("header", Status.FAILED, "no complete header")
        return _report(c, n, None, (), None)
    raw = src.read_at(0, fw.HEADER_BYTES)
    h = fw.parse_header(raw)
    if h.magic != fw.MAGIC:
        c.fail("fw.magic", f"magic is {bytes(h.magic)!r}, expected {fw.MAGIC!r}: "
               "not an IPVA firmware image", 0)
        c.step("header", Status.FAILED, "bad magic")
        return _report(c, n, None, (), None)
    info = HeaderInfo(h.header_version, h.header_bytes, h.build, fw.decode_text(h.version),
                      fw.decode_text(h.product), h.image_bytes, h.image_crc32, h.section_count,
                      h.flags, h.timestamp, h.header_crc32, fw.header_crc(raw))
    if h.header_version != fw.HEADER_VERSION or h.header_bytes != fw.HEADER_BYTES:
        c.fail("fw.header-version", f"header_version {h.header_version}, header_size "
               f"{h.header_bytes}: expected {fw.HEADER_VERSION} and {fw.HEADER_BYTES}", 0x8)
        c.step("header", Status.FAILED, "unknown header version")
        return _report(c, n, info, (), None)
    c.step("header", Status.OK, f"build {h.build}, version {info.version!r}")
    if info.found_header_crc32 != h.header_crc32:
        c.fail("fw.header-crc", f"header CRC expected 0x{h.header_crc32:08x}, found "
               f"0x{info.found_header_crc32:08x}", fw.HEADER_CRC_OFFSET)
        c.step("header-crc", Status.FAILED, f"expected 0x{h.header_crc32:08x}, found "
               f"0x{info.found_header_crc32:08x}")
        c.sure = False
    else:
        c.step("header-crc", Status.OK, f"0x{h.header_crc32:08x}")
        _check_fields(c, h, info)
    image_ok = _check_size(c, h.image_bytes, n)
    entries = _check_table(c, h)
    return _check_crcs(c, src, n, info, entries, image_ok, progress)


def _check_fields(c: _Checker, h: Any, info: HeaderInfo) -> None:
    """Fields the loader does not need but the format fixes (warnings)."""
    problems = []
    if info.version is None:
        problems.append("version is not printable ASCII")
    if info.product != fw.PRODUCT:
        problems.append(f"product is {bytes(h.product).rstrip(bytes(1))!r}, expected 'IPVA'")
    if h.flags:
        problems.append(f"flags 0x{h.flags:x}, expected 0")
    if any(h.reserved1) or any(h.reserved2):
        problems.append("reserved bytes are not zero")
    count = min(h.section_count, fw.MAX_SECTIONS)
    for i, e in enumerate(h.sections):
        if i >= count and (any(e.name) or e.offset or e.size_bytes or e.crc32 or e.flags):
            problems.append(f"unused section entry {i} is not zero")
        elif i < count and (e.flags or fw.decode_text(e.name) in (None, "")):
            problems.append(f"section entry {i}: name must be ASCII and flags 0")
    for p in problems:
        c.fail("fw.header-field", p, 0, Severity.WARNING)


def _check_size(c: _Checker, image_bytes: int, n: int) -> bool:
    """Compare image_size with the bytes there are; True when [512, image_size) is readable."""
    if image_bytes < fw.HEADER_BYTES:
        c.fail("fw.image-size", f"image_size {image_bytes} is smaller than the header", 0x40)
        c.step("size", Status.FAILED, f"image_size {image_bytes} < {fw.HEADER_BYTES}")
        return False
    if n < image_bytes:
        c.fail("fw.truncated", f"the file ends after {n} bytes; image_size is {image_bytes} "
               f"({image_bytes - n} bytes missing)", n)
        c.step("size", Status.FAILED, f"truncated: {n} of {image_bytes} bytes")
        return False
    if n > image_bytes:
        c.fail("fw.trailing-data", f"{n - image_bytes} bytes follow the image's end "
               f"(image_size {image_bytes}, file {n} bytes)", image_bytes)
        c.step("size", Status.FAILED, f"trailing data: {n} bytes for an image of {image_bytes}")
        return True
    c.step("size", Status.OK, f"{n} bytes")
    return True


def _check_table(c: _Checker, h: Any) -> list[tuple[int, str, int, int, int]]:
    """Bounds, order and overlap of the section entries; returns (index, name, offset,
    size, crc) for the entries in use."""
    bad = 0
    count = h.section_count
    if not 1 <= count <= fw.MAX_SECTIONS:
        c.fail("fw.section-range", f"section_count {count}: must be 1..{fw.MAX_SECTIONS}", 0x4C)
        bad += 1
    entries = []
    prev_end, prev_off = fw.HEADER_BYTES, fw.HEADER_BYTES
    for i in range(min(count, fw.MAX_SECTIONS)):
        e = h.sections[i]
        name = _name(e.name, i)
        end = e.offset + e.size_bytes
        where = fw.SECTIONS_OFFSET + i * fw.SECTION_ENTRY_BYTES
        if e.offset < fw.HEADER_BYTES or end > h.image_bytes:
            c.fail("fw.section-range", f"section {name} [{e.offset}, {end}) lies outside "
                   f"[{fw.HEADER_BYTES}, {h.image_bytes})", where)
            bad += 1
        elif i and e.offset < prev_end:
            how = "comes before" if e.offset < prev_off else "overlaps"
            c.fail("fw.section-overlap", f"section {name} [{e.offset}, {end}) {how} the "
                   f"previous section, which ends at {prev_end}", where)
            bad += 1
        if e.offset >= fw.HEADER_BYTES and end <= h.image_bytes:
            prev_end, prev_off = max(prev_end, end), e.offset
        entries.append((i, name, e.offset, e.size_bytes, e.crc32))
    c.step("section-table", Status.FAILED if bad else Status.OK,
           f"{bad} bad entries of {count}" if bad else f"{count} sections")
    return entries


def _check_crcs(c: _Checker, src: ByteSource, n: int, info: HeaderInfo,
                entries: list[tuple[int, str, int, int, int]], image_ok: bool,
                progress: Progress | None) -> FirmwareReport:
    ranges = [(off, off + size) for _, _, off, size, _ in entries if off + size <= n]
    image_range = (fw.HEADER_BYTES, info.image_bytes) if image_ok else None
    crcs = _crc_ranges(src, ranges + ([image_range] if image_range else []), progress)
    results = []
    for i, name, off, size, expected in entries:
        found = crcs.get((off, off + size)) if off + size <= n else None
        if found is None:
            status = Status.SKIPPED
            c.step(f"section:{name}", status, f"[{off}, {off + size}) lies past the end of "
                   f"the file ({n} bytes)")
        elif found == expected:
            status = Status.OK
            c.step(f"section:{name}", status, f"crc32 0x{found:08x}")
        else:
            status = Status.FAILED
            c.fail("fw.section-crc", f"section {name}: CRC expected 0x{expected:08x}, found "
                   f"0x{found:08x}", off)
            c.step(f"section:{name}", status, f"expected 0x{expected:08x}, found 0x{found:08x}")
        results.append(SectionResult(i, name, off, size, expected, found, status))
    found_image = crcs.get(image_range) if image_range else None
    if found_image is None:
        c.step("image-crc", Status.SKIPPED, "the image's bytes are not all there")
    elif found_image == info.image_crc32:
        c.step("image-crc", Status.OK, f"0x{found_image:08x}")
    else:
        c.fail("fw.image-crc", f"image CRC expected 0x{info.image_crc32:08x}, found "
               f"0x{found_image:08x}", fw.HEADER_BYTES)
        c.step("image-crc", Status.FAILED, f"expected 0x{info.image_crc32:08x}, found "
               f"0x{found_image:08x}")
    return _report(c, n, info, tuple(results), found_image)


def _report(c: _Checker, n: int, info: HeaderInfo | None, sections: tuple[SectionResult, ...],
            found_image: int | None) -> FirmwareReport:
    return FirmwareReport(c.path, n, info, sections, found_image, tuple(c.steps),
                          tuple(c.findings))


def _crc_ranges(src: ByteSource, ranges: Iterable[tuple[int, int]],
                progress: Progress | None = None) -> dict[tuple[int, int], int]:
    """CRC-32 of each [start, end) range, reading every byte once: the ranges are cut into
    elementary pieces at all their ends, each piece is CRC'd, and ranges are rebuilt from
    their pieces with crc32_combine."""
    wanted = sorted({r for r in ranges if 0 <= r[0] <= r[1] <= src.size_bytes})
    points = sorted({p for r in wanted for p in r})
    pieces = [(a, b) for a, b in itertools.pairwise(points)
              if any(s <= a and b <= e for s, e in wanted)]
    total = sum(b - a for a, b in pieces)
    piece_crc: dict[int, int] = {}
    done = 0
    for a, b in pieces:
        crc, pos = 0, a
        while pos < b:
            k = min(CHUNK_BYTES, b - pos)
            crc = zlib.crc32(src.read_at(pos, k), crc)
            pos += k
            done += k
            if progress:
                progress(done, total)
        piece_crc[a] = crc
    out = {}
    for s, e in wanted:
        crc = 0
        for a, b in pieces:
            if s <= a and b <= e:
                crc = fw.crc32_combine(crc, piece_crc[a], b - a)
        out[(s, e)] = crc
    return out
