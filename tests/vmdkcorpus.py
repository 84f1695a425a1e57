"""Test corpus builders for the VMDK engine: images made by real tools, two independent
streamOptimized writers, and malformed variants derived from small valid images.

Nothing here imports vdisk_tool: the corpus is built from the VMDK 5.0 technote
(specs/vmdk.md) and from qemu-img/qemu-io, so that agreement with vdisk means something.
"""
from __future__ import annotations

import os
import shutil
import struct
import subprocess
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

SECTOR = 512
GRAIN_SECTORS = 128
GRAIN = GRAIN_SECTORS * SECTOR
GTES = 512
GD_AT_END = 0xFFFFFFFFFFFFFFFF
FLAG_NL, FLAG_RGD, FLAG_ZG, FLAG_COMPRESSED, FLAG_MARKERS = 0x1, 0x2, 0x4, 0x10000, 0x20000
MARKER_EOS, MARKER_GT, MARKER_GD, MARKER_FOOTER = 0, 1, 2, 3

# SparseExtentHeader, technote p.6: every field up to compressAlgorithm (79 bytes), packed.
HEADER_FMT = "<4sIIQQQQIQQQB4sH"
HEADER_FIELDS = ("magic", "version", "flags", "capacity", "grain_size", "descriptor_offset",
                 "descriptor_size", "gtes_per_gt", "rgd_offset", "gd_offset", "overhead",
                 "unclean_shutdown", "eol_chars", "compress_algorithm")
HEADER_OFFSETS = dict(zip(HEADER_FIELDS, (0, 4, 8, 12, 20, 28, 36, 44, 48, 56, 64, 72, 73, 77),
                          strict=True))
assert struct.calcsize(HEADER_FMT) == 79


# -- raw byte helpers ---------------------------------------------------------------------
def pack_header(**f: object) -> bytes:
    vals = [f[k] for k in HEADER_FIELDS]
    return struct.pack(HEADER_FMT, *vals).ljust(SECTOR, b"\0")


def read_header(path: str | os.PathLike[str], offset: int = 0) -> dict:
    with open(path, "rb") as fh:
        fh.seek(offset)
        raw = fh.read(79)
    return dict(zip(HEADER_FIELDS, struct.unpack(HEADER_FMT, raw), strict=True))


def patch(path: str | os.PathLike[str], offset: int, data: bytes) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(data)


_FIELD_CODES = dict(zip(HEADER_FIELDS, ["4s", "I", "I", "Q", "Q", "Q", "Q", "I", "Q", "Q", "Q",
                                        "B", "4s", "H"], strict=True))


def patch_header(path: str | os.PathLike[str], base: int = 0, **changes: int | bytes) -> None:
    """Overwrite header fields (by the names in HEADER_FIELDS) in place."""
    for name, value in changes.items():
        patch(path, base + HEADER_OFFSETS[name], struct.pack("<" + _FIELD_CODES[name], value))


def read_u32(path: str | os.PathLike[str], offset: int) -> int:
    with open(path, "rb") as fh:
        fh.seek(offset)
        return struct.unpack("<I", fh.read(4))[0]


def patch_u32(path: str | os.PathLike[str], offset: int, value: int) -> None:
    patch(path, offset, struct.pack("<I", value))


def gd_entry_offset(path: str | os.PathLike[str], index: int, redundant: bool = False) -> int:
    h = read_header(path)
    base = h["rgd_offset"] if redundant else h["gd_offset"]
    return base * SECTOR + 4 * index


def gte_offset(path: str | os.PathLike[str], grain: int, redundant: bool = False) -> int:
    """Byte offset of the GTE of a grain (through the GD, or the RGD)."""
    h = read_header(path)
    gdi, gti = divmod(grain, h["gtes_per_gt"])
    gt_sector = read_u32(path, gd_entry_offset(path, gdi, redundant))
    return gt_sector * SECTOR + 4 * gti


def truncate(path: str | os.PathLike[str], length: int) -> None:
    os.truncate(path, length)


def data_ranges(path: str | os.PathLike[str]) -> list[tuple[int, int]]:
    """(offset, length) stretches the host stores for a (sparse) file, via SEEK_DATA."""
    out = []
    fd = os.open(path, os.O_RDONLY)
    try:
        end = os.fstat(fd).st_size
        pos = 0
        while pos < end:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:
                break
            stop = min(os.lseek(fd, start, os.SEEK_HOLE), end)
            out.append((start, stop - start))
            pos = stop
    finally:
        os.close(fd)
    return out


# -- real tools ----------------------------------------------------------------------------
def tool(*args: str | os.PathLike[str]) -> str:
    res = subprocess.run([os.fspath(a) for a in args], capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, args))} failed ({res.returncode}): "
                             f"{res.stderr.strip() or res.stdout.strip()}")
    return res.stdout


@dataclass(frozen=True)
class Write:
    """A qemu-io write: `pattern` byte over [offset, offset+length)."""

    pattern: int
    offset: int
    length: int


def qemu_create(path: Path, size_bytes: int, subformat: str = "monolithicSparse",
                adapter: str | None = None, backing: Path | None = None) -> Path:
    opts = [f"subformat={subformat}"]
    if adapter:
        opts.append(f"adapter_type={adapter}")
    cmd: list[str | os.PathLike[str]] = ["qemu-img", "create", "-q", "-f", "vmdk",
                                         "-o", ",".join(opts)]
    if backing is not None:
        cmd += ["-b", backing.name, "-F", "vmdk"]
    tool(*cmd, path, str(size_bytes))
    return path


def qemu_write(path: Path, writes: Iterable[Write]) -> None:
    cmd: list[str | os.PathLike[str]] = ["qemu-io", "-f", "vmdk"]
    for w in writes:
        cmd += ["-c", f"write -q -P 0x{w.pattern:02x} {w.offset} {w.length}"]
    tool(*cmd, path)


def qemu_to_raw(path: Path, raw: Path) -> Path:
    tool("qemu-img", "convert", "-f", "vmdk", "-O", "raw", path, raw)
    return raw


def write_raw(path: Path, size_bytes: int, writes: Iterable[Write]) -> Path:
    """A sparse raw file holding the pattern writes (a source for the stream writers)."""
    with open(path, "wb") as fh:
        fh.truncate(size_bytes)
        for w in writes:
            fh.seek(w.offset)
            fh.write(bytes([w.pattern]) * w.length)
    return path


# -- independent streamOptimized writers (VMDK 5.0 technote §"Stream-Optimized") ---------
def _descriptor_text(name: str, capacity: int, cid: int = 0x1234ABCD) -> bytes:
    cyl = min(capacity // (255 * 63), 65535)
    return (f"# Disk DescriptorFile\nversion=1\nCID={cid:08x}\nparentCID=ffffffff\n"
            f'createType="streamOptimized"\n\n# Extent description\n'
            f'RDONLY {capacity} SPARSE "{name}"\n\n# The Disk Data Base\n#DDB\n\n'
            f'ddb.adapterType = "lsilogic"\nddb.geometry.cylinders = "{cyl}"\n'
            f'ddb.geometry.heads = "255"\nddb.geometry.sectors = "63"\n'
            f'ddb.virtualHWVersion = "7"\n').encode()


def _grains(raw: Path, capacity: int) -> Iterable[tuple[int, bytes]]:
    """(grain number, full grain bytes) of every grain of `raw` that is not all zero."""
    with open(raw, "rb") as fh:
        seen: set[int] = set()
        for start, length in data_ranges(raw):
            for g in range(start // GRAIN, -(-(start + length) // GRAIN)):
                if g in seen or g * GRAIN_SECTORS >= capacity:
                    continue
                seen.add(g)
                fh.seek(g * GRAIN)
                data = fh.read(GRAIN).ljust(GRAIN, b"\0")
                if data.count(0) != GRAIN:
                    yield g, data


def _pad(data: bytes) -> bytes:
    return data + bytes(-len(data) % SECTOR)


def _grain_block(grain: int, data: bytes) -> bytes:
    blob = zlib.compress(data)
    return _pad(struct.pack("<QI", grain * GRAIN_SECTORS, len(blob)) + blob)


def _marker(kind: int, num_sectors: int) -> bytes:
    return struct.pack("<QII", num_sectors, 0, kind).ljust(SECTOR, b"\0")


def _stream_header(capacity: int, desc_sectors: int, gd_offset: int, overhead: int) -> bytes:
    return pack_header(magic=b"KDMV", version=3, flags=FLAG_NL | FLAG_COMPRESSED | FLAG_MARKERS,
                       capacity=capacity, grain_size=GRAIN_SECTORS, descriptor_offset=1,
                       descriptor_size=desc_sectors, gtes_per_gt=GTES, rgd_offset=0,
                       gd_offset=gd_offset, overhead=overhead, unclean_shutdown=0,
                       eol_chars=b"\n \r\n", compress_algorithm=1)


def write_stream_vmware(raw: Path, out: Path, all_gts: bool = False) -> Path:
    """streamOptimized as VMware/VirtualBox lay it out: header with GD_AT_END, a one-sector
    descriptor, grain markers, a GT marker + GT after each group, GD marker + GD, footer
    marker + footer (the header with the real gdOffset), end-of-stream marker."""
    capacity = -(-os.path.getsize(raw) // SECTOR)
    gd_entries = -(-capacity // (GTES * GRAIN_SECTORS))
    desc = _pad(_descriptor_text(out.name, capacity))
    desc_sectors = len(desc) // SECTOR
    overhead = -(-(1 + desc_sectors) // GRAIN_SECTORS) * GRAIN_SECTORS
    by_group: dict[int, list[tuple[int, bytes]]] = {}
    for g, data in _grains(raw, capacity):
        by_group.setdefault(g // GTES, []).append((g, data))
    gd = [0] * gd_entries
    with open(out, "wb") as fh:
        fh.write(_stream_header(capacity, desc_sectors, GD_AT_END, overhead))
        fh.write(desc)
        fh.write(bytes(overhead * SECTOR - fh.tell()))
        for gdi in range(gd_entries):
            gt = [0] * GTES
            for g, data in sorted(by_group.get(gdi, [])):
                gt[g % GTES] = fh.tell() // SECTOR
                fh.write(_grain_block(g, data))
            if any(gt) or all_gts:
                fh.write(_marker(MARKER_GT, 4))
                gd[gdi] = fh.tell() // SECTOR
                fh.write(struct.pack(f"<{GTES}I", *gt))
        gd_bytes = _pad(struct.pack(f"<{gd_entries}I", *gd))
        fh.write(_marker(MARKER_GD, len(gd_bytes) // SECTOR))
        gd_sector = fh.tell() // SECTOR
        fh.write(gd_bytes)
        fh.write(_marker(MARKER_FOOTER, 1))
        fh.write(_stream_header(capacity, desc_sectors, gd_sector, overhead))
        fh.write(_marker(MARKER_EOS, 0))
    return out


def write_stream_ovmdk(raw: Path, out: Path) -> Path:
    """streamOptimized as VMware's open-vmdk converter lays it out: the header holds the real
    gdOffset (GD then every GT right after a 20-sector descriptor), overHead is the end of
    the GTs (not grain aligned), grain markers follow, then an end-of-stream marker; no
    footer and no metadata markers."""
    capacity = -(-os.path.getsize(raw) // SECTOR)
    gd_entries = -(-capacity // (GTES * GRAIN_SECTORS))
    gd_sectors = -(-gd_entries * 4 // SECTOR)
    gd_offset = 21
    first_gt = gd_offset + gd_sectors
    overhead = first_gt + 4 * gd_entries
    gts = [[0] * GTES for _ in range(gd_entries)]
    with open(out, "wb") as fh:
        fh.write(_stream_header(capacity, 20, gd_offset, overhead))
        fh.write(_descriptor_text(out.name, capacity).ljust(20 * SECTOR, b"\0"))
        fh.write(bytes(overhead * SECTOR - fh.tell()))
        for g, data in _grains(raw, capacity):
            gts[g // GTES][g % GTES] = fh.tell() // SECTOR
            fh.write(_grain_block(g, data))
        fh.write(_marker(MARKER_EOS, 0))
        fh.seek(gd_offset * SECTOR)
        fh.write(struct.pack(f"<{gd_entries}I", *[first_gt + 4 * i for i in range(gd_entries)]))
        fh.seek(first_gt * SECTOR)
        fh.writelines(struct.pack(f"<{GTES}I", *gt) for gt in gts)
    return out


def vmdkstream_available() -> bool:
    """Debian's python3-vmdkstream (for /usr/bin/python3), VMware's layout from Red Hat."""
    if not os.path.exists("/usr/bin/python3"):
        return False
    res = subprocess.run(["/usr/bin/python3", "-c", "import VMDKstream"], capture_output=True,
                         check=False)
    return res.returncode == 0


def write_stream_vmdkstream(raw: Path, out: Path) -> Path:
    tool("/usr/bin/python3", "-c",
         f"import VMDKstream; VMDKstream.convert_to_stream({str(raw)!r}, {str(out)!r})")
    return out


# -- the hostile corpus ----------------------------------------------------------------------
@dataclass(frozen=True)
class Bases:
    """Small valid images the hostile cases start from (never modified in place)."""

    folder: Path
    sparse8: Path        # monolithicSparse, 8 MiB, one GT, grains at 0 and 1 MiB
    sparse64: Path       # monolithicSparse, 64 MiB, two GTs, grains at 0 and 40 MiB
    stream_qemu: Path    # qemu's streamOptimized, 8 MiB
    stream_vmware: Path  # VMware layout (footer), 8 MiB
    split: Path          # twoGbMaxExtentSparse, 16 MiB: descriptor + -s001
    flat: Path           # monolithicFlat, 1 MiB: descriptor + -flat


BASE_WRITES = [Write(0x5A, 0, 65536), Write(0xC3, 1048576 + 512, 4096)]


def make_bases(folder: Path) -> Bases:
    folder.mkdir(parents=True, exist_ok=True)
    s8 = qemu_create(folder / "sparse8.vmdk", 8 << 20)
    qemu_write(s8, BASE_WRITES)
    s64 = qemu_create(folder / "sparse64.vmdk", 64 << 20)
    qemu_write(s64, [Write(0x11, 0, 65536), Write(0x22, 40 << 20, 8192)])
    sq = qemu_create(folder / "streamq.vmdk", 8 << 20, "streamOptimized")
    qemu_write(sq, [Write(0x5A, 0, 65536), Write(0xC3, 1 << 20, 65536)])
    raw = write_raw(folder / "stream-src.raw", 8 << 20, BASE_WRITES)
    sv = write_stream_vmware(raw, folder / "streamvm.vmdk")
    split_dir = folder / "split"
    split_dir.mkdir(exist_ok=True)
    sp = qemu_create(split_dir / "split.vmdk", 16 << 20, "twoGbMaxExtentSparse")
    qemu_write(sp, BASE_WRITES)
    flat_dir = folder / "flat"
    flat_dir.mkdir(exist_ok=True)
    fl = qemu_create(flat_dir / "flat.vmdk", 1 << 20, "monolithicFlat")
    qemu_write(fl, [Write(0x77, 4096, 4096)])
    return Bases(folder, s8, s64, sq, sv, sp, fl)


def copy_image(src: Path, dst_dir: Path) -> Path:
    """Copy an image and, for a text descriptor, every file beside it (extents)."""
    dst_dir.mkdir(parents=True, exist_ok=True)
    if src.parent.name in ("split", "flat"):
        for f in src.parent.iterdir():
            shutil.copy2(f, dst_dir / f.name)
    else:
        shutil.copy2(src, dst_dir / src.name)
    return dst_dir / src.name


def replace_text(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


def replace_embedded(path: Path, old: bytes, new: bytes) -> None:
    """Edit the embedded descriptor of a sparse file in place (same area, NUL padded)."""
    h = read_header(path)
    off, size = h["descriptor_offset"] * SECTOR, h["descriptor_size"] * SECTOR
    with open(path, "r+b") as fh:
        fh.seek(off)
        area = fh.read(size)
        text = area.split(b"\0", 1)[0]
        assert old in text, f"{old!r} not in the embedded descriptor of {path}"
        text = text.replace(old, new, 1)
        assert len(text) <= size, "edited descriptor does not fit"
        fh.seek(off)
        fh.write(text.ljust(size, b"\0"))


@dataclass(frozen=True)
class Case:
    """One malformed image. `level` says what an honest reader must do:
    "open"  – refuse to open it (info and map exit 3; reading raises at open);
    "read"  – may open, but reading the damaged part must raise (never zeros);
    "check" – reads may succeed (the bytes exist), only a check can tell."""

    name: str
    build: Callable[[Path, Bases], Path]
    level: str


def _hdr(base_attr: str, **changes: int | bytes) -> Callable[[Path, Bases], Path]:
    def build(tmp: Path, b: Bases) -> Path:
        p = copy_image(getattr(b, base_attr), tmp)
        patch_header(p, **changes)
        return p
    return build


def _footer(base_attr: str, **changes: int | bytes) -> Callable[[Path, Bases], Path]:
    def build(tmp: Path, b: Bases) -> Path:
        p = copy_image(getattr(b, base_attr), tmp)
        patch_header(p, base=os.path.getsize(p) - 2 * SECTOR, **changes)
        return p
    return build


def _fn(fn: Callable[[Path], None], base_attr: str = "sparse8") -> Callable[[Path, Bases], Path]:
    def build(tmp: Path, b: Bases) -> Path:
        p = copy_image(getattr(b, base_attr), tmp)
        fn(p)
        return p
    return build


def _write_file(name: str, content: Callable[[], bytes]) -> Callable[[Path, Bases], Path]:
    def build(tmp: Path, b: Bases) -> Path:
        tmp.mkdir(parents=True, exist_ok=True)
        p = tmp / name
        p.write_bytes(content())
        return p
    return build


def _gd_point_past_eof(p: Path) -> None:
    patch_u32(p, gd_entry_offset(p, 0), 0x00FFFFF0)
    patch_u32(p, gd_entry_offset(p, 0, redundant=True), 0x00FFFFF0)


def _gte(grain: int, value: int) -> Callable[[Path], None]:
    def fn(p: Path) -> None:
        patch_u32(p, gte_offset(p, grain), value)
        if read_header(p)["flags"] & FLAG_RGD:
            patch_u32(p, gte_offset(p, grain, redundant=True), value)
    return fn


def _gt_loop(p: Path) -> None:
    for red in (False, True):
        patch_u32(p, gd_entry_offset(p, 1, red), read_u32(p, gd_entry_offset(p, 0, red)))


def _rgd_mismatch(p: Path) -> None:
    # the redundant GT of grain 0 names another sector than the primary one
    patch_u32(p, gte_offset(p, 0, redundant=True), read_u32(p, gte_offset(p, 0)) + 128)


def _stream_grain_patch(rel: int, data: bytes) -> Callable[[Path], None]:
    """Patch the first grain marker of a stream file (at overHead) at byte `rel`."""
    def fn(p: Path) -> None:
        patch(p, read_header(p)["overhead"] * SECTOR + rel, data)
    return fn


def _truncate_at(where: Callable[[Path], int]) -> Callable[[Path], None]:
    return lambda p: truncate(p, where(p))


def _split_desc(old: str, new: str) -> Callable[[Path, Bases], Path]:
    def build(tmp: Path, b: Bases) -> Path:
        p = copy_image(b.split, tmp)
        replace_text(p, old, new)
        return p
    return build


def _split_desc_fn(fn: Callable[[Path], None]) -> Callable[[Path, Bases], Path]:
    def build(tmp: Path, b: Bases) -> Path:
        p = copy_image(b.split, tmp)
        fn(p)
        return p
    return build


def _flat_desc(old: str, new: str) -> Callable[[Path, Bases], Path]:
    def build(tmp: Path, b: Bases) -> Path:
        p = copy_image(b.flat, tmp)
        replace_text(p, old, new)
        return p
    return build


def _flat_fn(fn: Callable[[Path], None]) -> Callable[[Path, Bases], Path]:
    def build(tmp: Path, b: Bases) -> Path:
        p = copy_image(b.flat, tmp)
        fn(p.parent)
        return p
    return build


def _flat_symlink_outside(tmp: Path, b: Bases) -> Path:
    """The flat extent's file name is inside the folder, but it is a symlink to a host file."""
    p = copy_image(b.flat, tmp)
    (p.parent / "flat-flat.vmdk").unlink()
    (p.parent / "flat-flat.vmdk").symlink_to("/etc/hostname" if os.path.exists("/etc/hostname")
                                            else "/etc/passwd")
    return p


def _oversized_grain(p: Path) -> None:
    """The first compressed grain inflates to two grains' worth of bytes (in the same sector)."""
    off = read_header(p)["overhead"] * SECTOR
    blob = zlib.compress(b"\x5a" * (2 * GRAIN))
    block = struct.pack("<QI", 0, len(blob)) + blob
    assert len(block) <= SECTOR
    patch(p, off, block.ljust(SECTOR, b"\0"))


def _child_without_hint(tmp: Path, b: Bases) -> Path:
    """A child (grain 0 of its own, the rest from a parent) whose descriptor keeps the
    parentCID but lost its parentFileNameHint line."""
    d = tmp / "chain"
    d.mkdir(parents=True, exist_ok=True)
    child = d / "child.vmdk"
    qemu_create(d / "parent.vmdk", 8 << 20)
    qemu_write(d / "parent.vmdk", [Write(0x77, 1 << 20, 65536)])
    qemu_create(child, 8 << 20, backing=d / "parent.vmdk")
    qemu_write(child, [Write(0x66, 0, 65536)])
    replace_embedded(child, b'parentFileNameHint="parent.vmdk"', b"")
    return child


def _chain_loop(tmp: Path, b: Bases) -> Path:
    tmp.mkdir(parents=True, exist_ok=True)
    a = copy_image(b.sparse8, tmp / "a")
    c = tmp / "a" / "b.vmdk"
    shutil.copy2(a, c)
    for me, other in ((a, c), (c, a)):
        replace_embedded(me, b"parentCID=ffffffff", b"parentCID=00000000")
        replace_embedded(me, b'createType="monolithicSparse"',
                         f'createType="monolithicSparse"\nparentFileNameHint="{other.name}"'
                         .encode())
    # each names the other's CID as its parentCID
    for me, other in ((a, c), (c, a)):
        cid = _embedded_value(other, b"CID=")
        replace_embedded(me, b"parentCID=00000000", b"parentCID=" + cid)
    return a


def _embedded_value(path: Path, key: bytes) -> bytes:
    h = read_header(path)
    with open(path, "rb") as fh:
        fh.seek(h["descriptor_offset"] * SECTOR)
        text = fh.read(h["descriptor_size"] * SECTOR).split(b"\0", 1)[0]
    for line in text.splitlines():
        if line.startswith(key):
            return line[len(key):].strip()
    raise AssertionError(f"{key!r} not in {path}")


def _child_of(hint: str, parent_cid: str | None = None) -> Callable[[Path, Bases], Path]:
    """A copy of sparse8 made a child of `hint` (a parent copy sits beside it as parent.vmdk)."""
    def build(tmp: Path, b: Bases) -> Path:
        d = tmp / "chain"
        parent = copy_image(b.sparse8, d)
        parent = parent.rename(d / "parent.vmdk")
        child = d / "child.vmdk"
        shutil.copy2(b.sparse8, child)
        cid = parent_cid.encode() if parent_cid else _embedded_value(parent, b"CID=")
        replace_embedded(child, b"parentCID=ffffffff", b"parentCID=" + cid)
        replace_embedded(child, b'createType="monolithicSparse"',
                         f'createType="monolithicSparse"\nparentFileNameHint="{hint}"'.encode())
        return child
    return build


def _descriptor_file(text: Callable[[], bytes]) -> Callable[[Path, Bases], Path]:
    def build(tmp: Path, b: Bases) -> Path:
        p = copy_image(b.split, tmp)
        p.write_bytes(text())
        return p
    return build


def _many_extents() -> bytes:
    head = (b'# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\n'
            b'createType="twoGbMaxExtentSparse"\n\n# Extent description\n')
    return head + b"".join(b'RW 32768 SPARSE "split-s001.vmdk"\n' for _ in range(65537))


def _many_lines() -> bytes:
    """200k comment lines in 400 KB: under the byte cap, far over any sane line count."""
    head = (b'# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\n'
            b'createType="twoGbMaxExtentSparse"\n\n# Extent description\n'
            b'RW 32768 SPARSE "split-s001.vmdk"\n\n#DDB\n')
    return head + b"#\n" * 200_000


def _huge_descriptor() -> bytes:
    head = (b'# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\n'
            b'createType="twoGbMaxExtentSparse"\n\n# Extent description\n'
            b'RW 32768 SPARSE "split-s001.vmdk"\n\n#DDB\n')
    return head + b'ddb.comment = "' + b"x" * (10 << 20) + b'"\n'


def _garbage(seed: int, n: int = 65536) -> bytes:
    import random
    return random.Random(seed).randbytes(n)


def _cowd() -> bytes:
    h = struct.pack("<4sIIIIIII", b"COWD", 1, 3, 16384, 1, 4, 1, 8)
    return h.ljust(2048, b"\0") + bytes(8192)


def _sesparse() -> bytes:
    h = struct.pack("<QQQQQ", 0xCAFEBABE, 0x0000000200000001, 16384, 8, 64)
    return h.ljust(512, b"\0") + bytes(8192)


def _unfinished_magic(p: Path) -> None:
    patch(p, 0, b"kdmv")


def _compressed_no_markers(p: Path) -> None:
    h = read_header(p)
    patch_header(p, flags=(h["flags"] | FLAG_COMPRESSED) & ~FLAG_MARKERS, compress_algorithm=1)


HOSTILE: list[Case] = [
    # header numbers
    Case("capacity-2^63", _hdr("sparse8", capacity=1 << 63), "open"),
    Case("capacity-u64-max", _hdr("sparse8", capacity=(1 << 64) - 1), "open"),
    Case("capacity-over-32Mi-gd-entries", _hdr("sparse8", capacity=(32 * 1024 * 1024 + 1) * 65536),
         "open"),
    Case("grain-size-0", _hdr("sparse8", grain_size=0), "open"),
    Case("grain-size-7", _hdr("sparse8", grain_size=7), "open"),
    Case("grain-size-96", _hdr("sparse8", grain_size=96), "open"),
    Case("grain-size-2^40", _hdr("sparse8", grain_size=1 << 40), "open"),
    Case("gtes-per-gt-0", _hdr("sparse8", gtes_per_gt=0), "open"),
    Case("gtes-per-gt-3", _hdr("sparse8", gtes_per_gt=3), "open"),
    Case("gtes-per-gt-2^20", _hdr("sparse8", gtes_per_gt=1 << 20), "open"),
    Case("gd-offset-outside", _hdr("sparse8", gd_offset=1 << 40), "open"),
    Case("gd-offset-zero", _hdr("sparse8", gd_offset=0), "open"),
    Case("rgd-offset-outside", _hdr("sparse8", rgd_offset=1 << 40), "check"),
    Case("bad-magic", _hdr("sparse8", magic=b"KDMX"), "open"),
    Case("unfinished-magic-kdmv", _fn(_unfinished_magic), "open"),
    Case("version-0", _hdr("sparse8", version=0), "open"),
    Case("version-4", _hdr("sparse8", version=4), "open"),
    Case("unknown-incompat-flag", _hdr("sparse8", flags=FLAG_NL | FLAG_RGD | 0x00040000), "open"),
    Case("compress-algorithm-7", _hdr("sparse8", compress_algorithm=7), "open"),
    Case("compressed-without-markers", _fn(_compressed_no_markers), "open"),
    Case("descriptor-offset-past-eof", _hdr("sparse8", descriptor_offset=1 << 30), "open"),
    Case("descriptor-size-huge", _hdr("sparse8", descriptor_size=1 << 40), "open"),
    # tables and pointers
    Case("gt-past-eof", _fn(_gd_point_past_eof), "read"),
    Case("grain-past-eof", _fn(_gte(0, 0x00FFFF00)), "read"),
    Case("grain-straddles-eof", _fn(lambda p: _gte(0, os.path.getsize(p) // SECTOR - 8)(p)),
         "read"),
    Case("grain-into-header", _fn(_gte(0, 2)), "check"),
    Case("gt-loop-shared-gt", _fn(_gt_loop, "sparse64"), "check"),
    Case("gd-rgd-gt-mismatch", _fn(_rgd_mismatch), "check"),
    # truncation
    Case("truncated-half-header", _fn(_truncate_at(lambda p: 256)), "open"),
    Case("truncated-half-gt", _fn(_truncate_at(
        lambda p: read_u32(p, gd_entry_offset(p, 0)) * SECTOR + 1024)), "read"),
    Case("truncated-mid-grain", _fn(_truncate_at(
        lambda p: read_u32(p, gte_offset(p, 0)) * SECTOR + 30000)), "read"),
    # streamOptimized
    Case("stream-bad-footer-magic", _footer("stream_vmware", magic=b"XXXX"), "open"),
    Case("stream-footer-gd-outside", _footer("stream_vmware", gd_offset=1 << 40), "open"),
    Case("stream-missing-eos", _fn(lambda p: truncate(p, os.path.getsize(p) - SECTOR),
                                   "stream_vmware"), "open"),
    Case("stream-bad-grain-lba", _fn(_stream_grain_patch(0, struct.pack("<Q", 5 * 128)),
                                     "stream_vmware"), "read"),
    Case("stream-corrupt-zlib", _fn(_stream_grain_patch(12 + 6, b"\xff" * 32), "stream_vmware"),
         "read"),
    Case("stream-compressed-size-0", _fn(_stream_grain_patch(8, struct.pack("<I", 0)),
                                         "stream_vmware"), "read"),
    Case("stream-compressed-size-huge", _fn(_stream_grain_patch(8, struct.pack("<I", 0xFFFFFFF0)),
                                            "stream_vmware"), "read"),
    Case("stream-grain-inflates-too-large", _fn(_oversized_grain, "stream_vmware"), "read"),
    Case("stream-qemu-grain-past-eof", _fn(_gte(0, 0x00FFFF00), "stream_qemu"), "read"),
    # descriptors
    Case("descriptor-10MiB", _descriptor_file(_huge_descriptor), "open"),
    Case("descriptor-200k-lines", _descriptor_file(_many_lines), "open"),
    Case("descriptor-65537-extents", _descriptor_file(_many_extents), "open"),
    Case("extent-path-dotdot", _split_desc('"split-s001.vmdk"', '"../split/split-s001.vmdk"'),
         "open"),
    Case("extent-path-absolute", _split_desc('SPARSE "split-s001.vmdk"', 'FLAT "/etc/passwd" 0'),
         "open"),
    Case("extent-missing-file", _split_desc('"split-s001.vmdk"', '"nowhere-s001.vmdk"'), "open"),
    Case("extent-size-disagrees", _split_desc("RW 32768 SPARSE", "RW 32000 SPARSE"), "open"),
    Case("extent-line-invalid", _split_desc("RW 32768 SPARSE", "RW lots SPARSE"), "open"),
    Case("extent-type-unknown", _split_desc("RW 32768 SPARSE", "RW 32768 BOGUS"), "open"),
    Case("flat-offset-past-eof",
         _flat_desc(' FLAT "flat-flat.vmdk" 0', ' FLAT "flat-flat.vmdk" 999999'), "read"),
    Case("flat-file-truncated", _flat_fn(lambda d: truncate(d / "flat-flat.vmdk", 300000)), "read"),
    Case("extent-symlink-outside", _flat_symlink_outside, "open"),
    Case("extent-listed-twice", _split_desc('RW 32768 SPARSE "split-s001.vmdk"',
                                            'RW 32768 SPARSE "split-s001.vmdk"\n'
                                            'RW 32768 SPARSE "./split-s001.vmdk"'), "check"),
    Case("descriptor-no-extents", _split_desc('RW 32768 SPARSE "split-s001.vmdk"', ""), "open"),
    Case("descriptor-binary-garbage", _descriptor_file(
        lambda: b"# Disk DescriptorFile\nversion=1\n" + _garbage(7, 4096)), "open"),
    Case("parent-hint-outside-folder", _child_of("../../etc/parent.vmdk"), "open"),
    Case("parent-hint-absolute", _child_of("/etc/passwd"), "open"),
    Case("parent-missing", _child_of("gone.vmdk"), "open"),
    Case("parent-cid-mismatch", _child_of("parent.vmdk", parent_cid="0badc0de"), "open"),
    Case("parent-chain-loop", _chain_loop, "open"),
    Case("parent-hint-missing", _child_without_hint, "open"),
    # foreign magics and garbage
    Case("cowd-magic", _write_file("delta.vmdk", _cowd), "open"),
    Case("sesparse-magic", _write_file("snap-sesparse.vmdk", _sesparse), "open"),
    Case("kdmv-then-garbage", _write_file("garbage.vmdk", lambda: b"KDMV" + _garbage(3)), "open"),
]
