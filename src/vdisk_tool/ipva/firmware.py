"""Verify and pack the firmware image `ipva.bin` (specs/ipva-firmware.md; ipva-model.md §3).

Verifying lives in `firmware_check` (re-exported here); packing, here, lays the sections
out after the header and writes the header last, once every CRC is known.
"""
from __future__ import annotations

import os
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import BinaryIO

from ..errors import RefusedError
from ..formats import ipva_firmware as fw
from .firmware_check import (
    CHUNK_BYTES,
    MAX_IMAGE_BYTES,
    ByteSource,
    FileObjectSource,
    FirmwareReport,
    HeaderInfo,
    Progress,
    SectionResult,
    Status,
    Step,
    check_firmware,
)

__all__ = [
    "CHUNK_BYTES", "MAX_IMAGE_BYTES", "ByteSource", "FileObjectSource", "FirmwareReport",
    "HeaderInfo", "Progress", "SectionInput", "SectionResult", "Status", "Step",
    "build_firmware", "check_firmware", "plan_layout", "write_firmware",
]


@dataclass(frozen=True)
class SectionInput:
    """A section to pack: its name and a host file holding its bytes."""

    name: str
    path: str


def _align(n: int, align_bytes: int) -> int:
    return -(-n // align_bytes) * align_bytes


def plan_layout(names_sizes: Sequence[tuple[str, int]], align_bytes: int = 512
                ) -> tuple[list[tuple[str, int, int]], int]:
    """Where each section goes: (name, offset, size) after the header, each start aligned;
    returns them and the image size."""
    if not 1 <= len(names_sizes) <= fw.MAX_SECTIONS:
        raise RefusedError(f"{len(names_sizes)} sections: an image holds 1..{fw.MAX_SECTIONS}")
    if align_bytes < 1:
        raise RefusedError("alignment must be at least 1 byte")
    seen = set()
    out, pos = [], fw.HEADER_BYTES
    for name, size in names_sizes:
        fw.encode_text(name, fw.NAME_BYTES, "section name")
        if not name or name in seen:
            raise RefusedError(f"section name {name!r} is empty or used twice")
        seen.add(name)
        pos = _align(pos, align_bytes)
        out.append((name, pos, size))
        pos += size
    if pos >= MAX_IMAGE_BYTES:
        raise RefusedError(f"an image of {pos} bytes is too large: sections must end below 4 GiB")
    return out, pos


def build_firmware(sections: Sequence[tuple[str, bytes]], *, build: int, version: str,
                   timestamp: int, align_bytes: int = 512) -> bytes:
    """A complete, valid image in memory (for small samples and tests)."""
    layout, total = plan_layout([(nm, len(data)) for nm, data in sections], align_bytes)
    body = bytearray(total - fw.HEADER_BYTES)
    specs = []
    for (name, off, size), (_, data) in zip(layout, sections, strict=True):
        body[off - fw.HEADER_BYTES:off - fw.HEADER_BYTES + size] = data
        specs.append(fw.SectionSpec(name, off, size, zlib.crc32(data)))
    header = fw.build_header(build=build, version=version, image_bytes=total,
                             image_crc32=zlib.crc32(body), sections=specs, timestamp=timestamp)
    return header + bytes(body)


def write_firmware(out: BinaryIO, sections: Sequence[SectionInput], *, build: int, version: str,
                   timestamp: int, align_bytes: int = 512,
                   progress: Progress | None = None) -> list[fw.SectionSpec]:
    """Stream a valid image into `out` (positioned at 0) from section files, 1 MiB at a time.
    The header goes in last, once every CRC is known."""
    sizes = [(s.name, os.path.getsize(s.path)) for s in sections]
    layout, total = plan_layout(sizes, align_bytes)
    out.write(bytes(fw.HEADER_BYTES))
    pos, image_crc, done = fw.HEADER_BYTES, 0, 0
    specs = []
    for (name, off, size), src in zip(layout, sections, strict=True):
        pad = bytes(off - pos)
        out.write(pad)
        image_crc = zlib.crc32(pad, image_crc)
        crc, left = 0, size
        with open(src.path, "rb") as f:
            while left:
                chunk = f.read(min(CHUNK_BYTES, left))
                if not chunk:
                    raise RefusedError("section file shrank while packing", path=src.path)
                crc = zlib.crc32(chunk, crc)
                out.write(chunk)
                left -= len(chunk)
                done += len(chunk)
                if progress:
                    progress(done, total)
        image_crc = fw.crc32_combine(image_crc, crc, size)
        specs.append(fw.SectionSpec(name, off, size, crc))
        pos = off + size
    out.seek(0)
    out.write(fw.build_header(build=build, version=version, image_bytes=total,
                              image_crc32=image_crc, sections=specs, timestamp=timestamp))
    out.seek(total)
    return specs
