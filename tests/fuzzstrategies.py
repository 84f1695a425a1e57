"""Seed images and hypothesis strategies that damage them (issue #8, "never crash on bad input").

`build_seeds(folder)` makes one small valid example of every input vdisk parses, each in its
own sub-folder, with real tools and the test builders (qemu-img, mkfs.fat, mtools, sfdisk,
fwbuilder, dumpbuilder), never with vdisk itself. Every seed lists its *fields*: the offsets
of header fields, table entries, BPB and FAT entries, directory entries, firmware and dump
headers, found by parsing the seed here with `struct`, so that damage lands where a parser
decides something. `damage(seed)` is a strategy of `Damage` recipes (a list of operations)
that `apply()` replays on a sparse copy of the seed: bit flips (anywhere, or in a field),
field extremes (0, 1, all ones, 2^31, 2^63), truncation, table damage (GD entries sharing a
GT, FAT chain loops, directory loops, a snapshot chain A->B->A) and huge capacities.
"""
from __future__ import annotations

import os
import shutil
import struct
from dataclasses import dataclass, field
from pathlib import Path

import fwbuilder
import vmdkcorpus as vc
from conftest import need_tool, run
from dumpbuilder import StoreBuilder, slot_offset
from hypothesis import strategies as st

MIB = 1 << 20
EXTREMES = (0, 1, 0x7F, 0xFF, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 1 << 32, 1 << 40,
            1 << 63, (1 << 64) - 1)


# -- damage operations ------------------------------------------------------------------------
@dataclass(frozen=True)
class Put:
    """Write `data` at `offset` of `file` (a field extreme, a table entry, a loop)."""

    file: str
    offset: int
    data: bytes
    why: str = ""


@dataclass(frozen=True)
class Flip:
    file: str
    offset: int
    bit: int


@dataclass(frozen=True)
class Cut:
    """Truncate (or, when longer, extend with a hole) `file` to `length` bytes."""

    file: str
    length: int


@dataclass(frozen=True)
class Text:
    """Replace the first `old` by `new` in `file`; inside a sparse file's embedded descriptor
    the edit keeps the file's length (the area is NUL padded)."""

    file: str
    old: bytes
    new: bytes


Op = Put | Flip | Cut | Text


@dataclass(frozen=True)
class Damage:
    seed: str
    ops: tuple[Op, ...]

    def __str__(self) -> str:
        return f"{self.seed}: " + "; ".join(map(repr, self.ops))


@dataclass(frozen=True)
class Field:
    file: str
    offset: int
    width: int
    label: str


@dataclass
class Seed:
    """A valid input: `folder` holds `files`; `main` is what the parsers are given."""

    name: str
    kind: str                  # vmdk, fat, boot, firmware, dump, flash, vmx, bundle
    folder: Path
    main: str
    files: dict[str, int] = field(default_factory=dict)       # name -> size in bytes
    fields: list[Field] = field(default_factory=list)
    recipes: list[tuple[str, tuple[Op, ...]]] = field(default_factory=list)
    tokens: list[tuple[str, bytes]] = field(default_factory=list)   # (file, text token)

    def scan(self) -> Seed:
        self.files = {p.relative_to(self.folder).as_posix(): p.stat().st_size
                      for p in sorted(self.folder.rglob("*")) if p.is_file()}
        return self


# -- applying damage --------------------------------------------------------------------------
def sparse_copy(src: Path, dst: Path) -> None:
    """Copy only the stored stretches of `src` (holes stay holes): seeds of 32 MiB are cheap."""
    with open(src, "rb") as fi, open(dst, "wb") as fo:
        for start, length in vc.data_ranges(src):
            fi.seek(start)
            fo.seek(start)
            fo.write(fi.read(length))
        fo.truncate(os.path.getsize(src))


def apply(seed: Seed, dmg: Damage, dest: Path) -> Path:
    """Lay out the damaged copy of the seed in `dest` (made empty first); its main path."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for rel in seed.files:
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        sparse_copy(seed.folder / rel, target)
    for op in dmg.ops:
        path = dest / op.file
        if not path.exists():
            continue
        size = path.stat().st_size
        if isinstance(op, Cut):
            os.truncate(path, op.length)
        elif isinstance(op, Flip):
            if op.offset < size:
                with open(path, "r+b") as f:
                    f.seek(op.offset)
                    b = f.read(1)[0]
                    f.seek(op.offset)
                    f.write(bytes([b ^ (1 << op.bit)]))
        elif isinstance(op, Put):
            if op.offset <= size:
                with open(path, "r+b") as f:
                    f.seek(op.offset)
                    f.write(op.data)
        elif isinstance(op, Text):
            _edit_text(path, op.old, op.new)
    return dest / seed.main


def _edit_text(path: Path, old: bytes, new: bytes) -> None:
    data = bytearray(path.read_bytes())
    if data[:4] == b"KDMV" and len(data) >= 512:
        # the embedded descriptor, wherever the (possibly damaged) header says it is
        off, size = _u(data, 28, 8) * 512, _u(data, 36, 8) * 512
        if off + size > len(data) or size == 0:
            return
        area = bytes(data[off:off + size])
        text = area.split(b"\0", 1)[0]
        if old not in text:
            return
        text = text.replace(old, new, 1)[:size]
        data[off:off + size] = text.ljust(size, b"\0")
    elif old in data:
        data = bytearray(bytes(data).replace(old, new, 1))
    else:
        return
    path.write_bytes(bytes(data))


# -- strategies -------------------------------------------------------------------------------
def _value_bytes(width: int, value: int) -> bytes:
    return (value & ((1 << (8 * width)) - 1)).to_bytes(width, "little")


def op_strategy(seed: Seed) -> st.SearchStrategy[Op]:
    names = sorted(n for n, s in seed.files.items() if s > 0) or sorted(seed.files)
    weighted = [n for n in names if n == seed.main or n.endswith((".vmdk", ".bin", ".raw"))] \
        or names

    @st.composite
    def flip_anywhere(draw) -> Op:
        name = draw(st.sampled_from(weighted))
        size = max(1, seed.files[name])
        off = draw(st.one_of(st.integers(0, min(size, 65536) - 1), st.integers(0, size - 1)))
        return Flip(name, off, draw(st.integers(0, 7)))

    @st.composite
    def truncate(draw) -> Op:
        name = draw(st.sampled_from(weighted))
        size = seed.files[name]
        cuts = sorted({0, 1, 511, 512, 513, size // 2, max(0, size - 1), max(0, size - 512)}
                      | {f.offset + k for f in seed.fields if f.file == name for k in (0, 1)})
        return Cut(name, draw(st.one_of(st.sampled_from(cuts), st.integers(0, size))))

    choices: list[st.SearchStrategy[Op]] = [flip_anywhere(), truncate()]
    if seed.fields:
        fields = st.sampled_from(seed.fields)

        @st.composite
        def flip_field(draw) -> Op:
            f = draw(fields)
            return Flip(f.file, f.offset + draw(st.integers(0, f.width - 1)),
                        draw(st.integers(0, 7)))

        @st.composite
        def extreme(draw) -> Op:
            f = draw(fields)
            value = draw(st.one_of(st.sampled_from(EXTREMES), st.integers(0, (1 << 64) - 1)))
            return Put(f.file, f.offset, _value_bytes(f.width, value), f"{f.label}={value:#x}")

        choices += [flip_field(), extreme(), extreme()]
    if seed.recipes:
        choices.append(st.sampled_from(seed.recipes).map(lambda r: _Bundle(r[1])))
    if seed.tokens:
        @st.composite
        def text(draw) -> Op:
            name, tok = draw(st.sampled_from(seed.tokens))
            new = draw(st.sampled_from([b"", b"0", b"-1", b"18446744073709551616",
                                        b"9223372036854775807", b"\xff\xfe", b"\"",
                                        b"../../etc/passwd", b"/etc/passwd", b"C:\\x.vmdk",
                                        tok + tok, b"\0", b"\n" + tok, b"ffffffff"]))
            return Text(name, tok, new)
        choices.append(text())
    return st.one_of(*choices)


class _Bundle(tuple):
    """Several operations drawn as one (a structural recipe)."""

    def __new__(cls, ops):
        return super().__new__(cls, ops)


def damage(seed: Seed, max_ops: int = 3) -> st.SearchStrategy[Damage]:
    """Damage recipes for `seed`: 1..max_ops operations, recipes flattened."""
    def flatten(items) -> Damage:
        ops: list[Op] = []
        for it in items:
            ops.extend(it if isinstance(it, _Bundle) else (it,))
        return Damage(seed.name, tuple(ops))
    return st.lists(op_strategy(seed), min_size=1, max_size=max_ops).map(flatten)


# -- seed-side parsing (struct only) ------------------------------------------------------------
def _u(data: bytes, off: int, width: int) -> int:
    return int.from_bytes(data[off:off + width], "little")


def sparse_fields(folder: Path, name: str, base: int = 0, label: str = "") -> list[Field]:
    """Header fields, GD/RGD entries and the first GTEs of a sparse extent file."""
    path = folder / name
    h = vc.read_header(path, base)
    widths = dict(zip(vc.HEADER_FIELDS, (4, 4, 4, 8, 8, 8, 8, 4, 8, 8, 8, 1, 4, 2), strict=False))
    out = [Field(name, base + vc.HEADER_OFFSETS[k], w, f"{label}hdr.{k}") for k, w in widths.items()]
    size = path.stat().st_size
    with open(path, "rb") as f:
        data = f.read()
    for which in ("gd_offset", "rgd_offset"):
        gd = h[which]
        if not gd or gd * 512 >= size:
            continue
        for i in range(4):
            out.append(Field(name, gd * 512 + 4 * i, 4, f"{label}{which}[{i}]"))
            gt = _u(data, gd * 512 + 4 * i, 4)
            if gt and gt * 512 < size:
                out += [Field(name, gt * 512 + 4 * k, 4, f"{label}{which}.gt{i}[{k}]")
                        for k in (0, 1, 2, 8, 511)]
    return out


def sparse_host_offset(path: Path, virtual: int) -> int | None:
    """Where a monolithicSparse file stores virtual byte `virtual` (None: not allocated)."""
    h = vc.read_header(path)
    grain = h["grain_size"] * 512
    try:
        gte = vc.read_u32(path, vc.gte_offset(path, virtual // grain))
    except struct.error:
        return None
    return gte * 512 + virtual % grain if gte > 1 else None


def _sparse_recipes(name: str, fields: list[Field], data: bytes) -> list[tuple[str, tuple[Op, ...]]]:
    by = {f.label: f for f in fields}
    out: list[tuple[str, tuple[Op, ...]]] = []
    gd0, gd1 = by.get("gd_offset[0]"), by.get("gd_offset[1]")
    if gd0 and gd1:
        out.append(("gd1-shares-gt0", (Put(name, gd1.offset, data[gd0.offset:gd0.offset + 4]),)))
        out.append(("gd-self", (Put(name, gd0.offset, struct.pack("<I", gd0.offset // 512)),)))
    g0, g1 = by.get("gd_offset.gt0[0]"), by.get("gd_offset.gt0[1]")
    if g0 and g1:
        out.append(("two-grains-one-place", (Put(name, g1.offset, data[g0.offset:g0.offset + 4]),)))
        out.append(("grain-on-gt", (Put(name, g0.offset, struct.pack("<I", g0.offset // 512)),)))
        out.append(("grain-on-header", (Put(name, g0.offset, struct.pack("<I", 0)),
                                        Put(name, g1.offset, struct.pack("<I", 1)))))
    r0 = by.get("rgd_offset[0]")
    if gd0 and r0:
        out.append(("rgd-is-gd", (Put(name, r0.offset, data[gd0.offset:gd0.offset + 4]),)))
    cap = by["hdr.capacity"]
    out += [("huge-capacity", (Put(name, cap.offset, struct.pack("<Q", v)),))
            for v in (1 << 40, 1 << 50, (1 << 63) - 1, (1 << 64) - 1)]
    out.append(("gtes-per-gt-huge", (Put(name, by["hdr.gtes_per_gt"].offset,
                                         struct.pack("<I", 0xFFFFFFFF)),)))
    out.append(("grain-size-huge", (Put(name, by["hdr.grain_size"].offset,
                                        struct.pack("<Q", 1 << 40)),)))
    return out


@dataclass(frozen=True)
class FatGeometry:
    base: int
    bps: int
    spc: int
    fat_offset: int          # bytes, from the file start
    fat_bytes: int
    nfats: int
    fat_type: int
    root_offset: int | None  # fixed root (FAT12/16)
    root_entries: int
    data_offset: int
    root_cluster: int

    def cluster_offset(self, c: int) -> int:
        return self.data_offset + (c - 2) * self.bps * self.spc

    def fat_entry(self, c: int) -> tuple[int, int]:
        if self.fat_type == 12:
            return self.fat_offset + c * 3 // 2, 2
        w = 2 if self.fat_type == 16 else 4
        return self.fat_offset + c * w, w


def fat_geometry(data: bytes, base: int) -> FatGeometry:
    bs = data[base:base + 512]
    bps, spc, reserved, nfats, root_entries, tot16, _m, fat16 = struct.unpack_from("<HBHBHHBH", bs, 11)
    tot32 = _u(bs, 32, 4)
    fat_sectors = fat16 or _u(bs, 36, 4)
    root_cluster = _u(bs, 44, 4) if not fat16 else 0
    fat_offset = base + reserved * bps
    root_off = fat_offset + nfats * fat_sectors * bps
    data_off = root_off + root_entries * 32
    clusters = ((tot16 or tot32) - (data_off - base) // bps) // spc
    ftype = 12 if clusters < 4085 else 16 if clusters < 65525 else 32
    return FatGeometry(base, bps, spc, fat_offset, fat_sectors * bps, nfats, ftype,
                       root_off if fat16 else None, root_entries, data_off, root_cluster)


def _dir_entries(data: bytes, off: int, count: int) -> list[tuple[int, bytes]]:
    out = []
    for i in range(count):
        e = data[off + 32 * i: off + 32 * i + 32]
        if not e or e[0] == 0:
            break
        if e[0] != 0xE5 and e[11] != 0x0F:
            out.append((off + 32 * i, e))
    return out


def fat_fields(name: str, data: bytes, g: FatGeometry
               ) -> tuple[list[Field], list[tuple[str, tuple[Op, ...]]]]:
    """BPB fields, FAT entries, directory entries (root and one level down) and recipes:
    chain loops, cross links, directory loops, huge sizes."""
    b = g.base
    bpb = [(11, 2, "bps"), (13, 1, "spc"), (14, 2, "reserved"), (16, 1, "nfats"),
           (17, 2, "root_entries"), (19, 2, "total16"), (21, 1, "media"), (22, 2, "fat16_size"),
           (28, 4, "hidden"), (32, 4, "total32"), (510, 2, "signature")]
    if g.fat_type == 32:
        bpb += [(36, 4, "fat32_size"), (40, 2, "ext_flags"), (44, 4, "root_cluster"),
                (48, 2, "fsinfo"), (50, 2, "backup_boot")]
    fields = [Field(name, b + o, w, f"bpb.{lbl}") for o, w, lbl in bpb]
    if b:
        fields += [Field(name, 446 + 16 * i + o, w, f"mbr{i}.{lbl}") for i in range(2)
                   for o, w, lbl in ((0, 1, "status"), (4, 1, "type"), (8, 4, "lba"),
                                     (12, 4, "sectors"))]
        fields.append(Field(name, 510, 2, "mbr.signature"))
    root_off = g.root_offset if g.root_offset is not None else g.cluster_offset(g.root_cluster)
    count = g.root_entries or (g.bps * g.spc // 32)
    entries = _dir_entries(data, root_off, count)
    for _off, e in list(entries):
        if e[11] & 0x10 and e[0] != ord("."):
            c = _u(e, 26, 2) | (_u(e, 20, 2) << 16)
            entries += _dir_entries(data, g.cluster_offset(c), g.bps * g.spc // 32)
    recipes: list[tuple[str, tuple[Op, ...]]] = []
    dirs = []
    for off, e in entries:
        tag = e[:11].decode("latin-1").strip()
        fields += [Field(name, off, 1, f"dir.{tag}.name0"), Field(name, off + 11, 1, f"dir.{tag}.attr"),
                   Field(name, off + 20, 2, f"dir.{tag}.cluster_hi"),
                   Field(name, off + 26, 2, f"dir.{tag}.cluster_lo"),
                   Field(name, off + 28, 4, f"dir.{tag}.size")]
        c = _u(e, 26, 2) | (_u(e, 20, 2) << 16)
        if e[11] & 0x10 and e[0] != ord("."):
            dirs.append((off, c, tag))
        if c >= 2:
            fo, w = g.fat_entry(c)
            fields.append(Field(name, fo, w, f"fat[{tag}]"))
            if g.fat_type != 12:
                nfat = [fo + k * g.fat_bytes for k in range(g.nfats)]
                recipes.append((f"loop-self-{tag}", tuple(Put(name, o, _value_bytes(w, c)) for o in nfat)))
                recipes.append((f"chain-to-0-{tag}", tuple(Put(name, o, bytes(w)) for o in nfat)))
                recipes.append((f"chain-past-end-{tag}",
                                tuple(Put(name, o, _value_bytes(w, 0x0FFFFFF0 if w == 4 else 0xFFF0))
                                      for o in nfat)))
        recipes.append((f"size-huge-{tag}", (Put(name, off + 28, b"\xff\xff\xff\xff"),)))
        recipes.append((f"cluster-1-{tag}", (Put(name, off + 26, b"\x01\x00"),)))
    for off, c, tag in dirs:
        # a directory whose entries name itself, and one that points at the root: loops
        sub = [(o, e) for o, e in entries if g.cluster_offset(c) <= o < g.cluster_offset(c) + g.bps * g.spc]
        for o, e in sub:
            if e[11] & 0x10 and e[0] != ord("."):
                recipes.append((f"dir-loop-{tag}", (Put(name, o + 26, _value_bytes(2, c & 0xFFFF)),
                                                    Put(name, o + 20, _value_bytes(2, c >> 16)))))
        recipes.append((f"dir-is-root-{tag}", (Put(name, off + 26, _value_bytes(2, g.root_cluster)),
                                               Put(name, off + 20, b"\0\0"))))
    fields += [Field(name, g.fat_offset + k * 4, 4, f"fat.head{k}") for k in range(4)]
    return fields, recipes


# -- the seeds --------------------------------------------------------------------------------
def _sparse_seed(name: str, folder: Path, main: str, extent: str | None = None) -> Seed:
    s = Seed(name, "vmdk", folder, main).scan()
    ext = extent or main
    s.fields = sparse_fields(folder, ext)
    s.recipes = _sparse_recipes(ext, s.fields, (folder / ext).read_bytes())
    s.tokens = [(ext, t) for t in (b"CID=", b"parentCID=ffffffff", b'createType="', b" SPARSE ",
                                   b"RW ", b"ddb.geometry.cylinders")]
    return s


def _fat_seed(name: str, folder: Path, image: str, fat: int, size: int, partition: bool) -> Seed:
    import fatutil
    folder.mkdir(parents=True)
    path = folder / image
    extra = ("-s", "1") if fat != 32 else ("-s", "1", "-S", "512")
    off = fatutil.mkfs(path, size, fat, partition, extra=extra + ("-n", f"FAT{fat}"))
    files = {"README.TXT": b"plain 8.3 name\r\n", "A Long File Name.txt": b"long\n" * 300,
             "empty.dat": b"", "SUB/inner.bin": bytes(range(256)) * 9,
             "SUB/DEEP/deep.txt": b"deep\n", "SUB/second.txt": b"x" * 1300}
    work = folder.parent / f"{name}-work"
    work.mkdir()
    fatutil.mtools_fill(path, off, files, work)
    shutil.rmtree(work)
    data = path.read_bytes()
    s = Seed(name, "fat", folder, image).scan()
    s.fields, s.recipes = fat_fields(image, data, fat_geometry(data, off))
    return s


def _boot_fields(name: str, raw: bytes, host=lambda v: v) -> tuple[list[Field], list]:
    g = fat_geometry(raw, fwbuilder.PART_OFFSET)
    fields, recipes = fat_fields(name, raw, g)
    ipva = [f for f in fields if f.label == "dir.IPVA    BIN.cluster_lo"]
    if ipva:
        c = _u(raw, ipva[0].offset, 2)
        start = g.cluster_offset(c)
        fw_fields = [(0, 8, "magic"), (8, 2, "header_version"), (10, 2, "header_size"),
                     (12, 4, "build"), (0x40, 8, "image_size"), (0x48, 4, "image_crc"),
                     (0x4C, 2, "section_count"), (0x1FC, 4, "header_crc")]
        fw_fields += [(0x60 + 24 * i + o, w, f"sec{i}.{lbl}") for i in range(4)
                      for o, w, lbl in ((0, 8, "name"), (8, 4, "offset"), (12, 4, "size"),
                                        (16, 4, "crc"))]
        fields += [Field(name, start + o, w, f"fw.{lbl}") for o, w, lbl in fw_fields]
    mapped = []
    for f in fields:
        h = host(f.offset)
        if h is not None:
            mapped.append(Field(f.file, h, f.width, f.label))
    recipes = [(n, tuple(Put(o.file, host(o.offset), o.data) for o in ops
                         if host(o.offset) is not None)) for n, ops in recipes]
    return mapped, [r for r in recipes if r[1]]


def firmware_fields(name: str, base: int = 0) -> list[Field]:
    spec = [(0, 8, "magic"), (8, 2, "header_version"), (10, 2, "header_size"), (12, 4, "build"),
            (0x40, 8, "image_size"), (0x48, 4, "image_crc"), (0x4C, 2, "section_count"),
            (0x4E, 2, "flags"), (0x50, 4, "timestamp"), (0x1FC, 4, "header_crc")]
    spec += [(0x60 + 24 * i + o, w, f"sec{i}.{lbl}") for i in range(5)
             for o, w, lbl in ((0, 8, "name"), (8, 4, "offset"), (12, 4, "size"), (16, 4, "crc"))]
    return [Field(name, base + o, w, f"fw.{lbl}") for o, w, lbl in spec]


def dump_fields(name: str, slots: int, slot_sectors: int) -> list[Field]:
    out = [Field(name, o, w, f"store.{lbl}") for o, w, lbl in
           ((0, 8, "magic"), (8, 2, "version"), (10, 2, "sector"), (12, 4, "slot_sectors"),
            (16, 4, "slot_count"), (20, 4, "next_slot"), (0x1FC, 4, "crc"))]
    for s in range(slots):
        b = slot_offset(s, slot_sectors)
        out += [Field(name, b + o, w, f"rec{s}.{lbl}") for o, w, lbl in
                ((0, 8, "magic"), (8, 4, "sequence"), (12, 4, "build"), (16, 8, "time"),
                 (24, 4, "payload_bytes"), (28, 4, "payload_crc"), (0x1FC, 4, "crc"))]
    return out


VMX_TOKENS = [b'"hd-boot.vmdk"', b'"hd-cf.vmdk"', b'"hd-flash.vmdk"', b'"hd-dump.vmdk"',
              b'memsize = "64"', b'"00:50:56:01:02:03"', b'ide0:0.present', b"= ", b"\r\n",
              b'"static"', b'"UTF-8"', b"uuid.bios", b'"vlance"', b'"disk"']


def build_seeds(folder: Path) -> dict[str, Seed]:
    """Every seed, each in `folder/<name>`. Needs qemu-img, qemu-io, sfdisk, mkfs.fat, mtools."""
    for tool in ("qemu-img", "qemu-io", "sfdisk", "mkfs.fat", "mcopy"):
        need_tool(tool)
    os.environ["MTOOLS_SKIP_CHECK"] = "1"
    seeds: dict[str, Seed] = {}
    W = [vc.Write(0x5A, 0, 65536), vc.Write(0xC3, 40 * MIB + 512, 4096)]

    d = folder / "sparse"
    d.mkdir(parents=True)
    vc.qemu_write(vc.qemu_create(d / "disk.vmdk", 64 * MIB), W)
    seeds["sparse"] = _sparse_seed("sparse", d, "disk.vmdk")

    d = folder / "stream-vmware"
    d.mkdir()
    raw = vc.write_raw(folder / "stream.raw", 8 * MIB, vc.BASE_WRITES)
    vc.write_stream_vmware(raw, d / "disk.vmdk", all_gts=False)
    s = _sparse_seed("stream-vmware", d, "disk.vmdk")
    size = s.files["disk.vmdk"]
    s.fields += sparse_fields(d, "disk.vmdk", base=size - 1024, label="footer.")
    s.fields += [Field("disk.vmdk", 128 * 512, 8, "grain0.lba"),
                 Field("disk.vmdk", 128 * 512 + 8, 4, "grain0.size"),
                 Field("disk.vmdk", size - 512, 12, "eos.marker"),
                 Field("disk.vmdk", size - 1536, 12, "footer.marker")]
    seeds["stream-vmware"] = s

    d = folder / "stream-qemu"
    d.mkdir()
    vc.qemu_write(vc.qemu_create(d / "disk.vmdk", 8 * MIB, "streamOptimized"),
                  [vc.Write(0x5A, 0, 65536), vc.Write(0xC3, MIB, 65536)])
    s = _sparse_seed("stream-qemu", d, "disk.vmdk")
    size = s.files["disk.vmdk"]
    if vc.read_header(d / "disk.vmdk")["gd_offset"] == vc.GD_AT_END:
        s.fields += sparse_fields(d, "disk.vmdk", base=size - 1024, label="footer.")
    seeds["stream-qemu"] = s
    os.unlink(raw)

    d = folder / "flat"
    d.mkdir()
    vc.qemu_write(vc.qemu_create(d / "disk.vmdk", MIB, "monolithicFlat"), [vc.Write(0x77, 4096, 4096)])
    s = Seed("flat", "vmdk", d, "disk.vmdk").scan()
    s.tokens = [("disk.vmdk", t) for t in (b"RW 2048", b"2048", b"FLAT", b'"disk-flat.vmdk"',
                                           b"createType", b"CID=", b"parentCID=ffffffff",
                                           b"version=1", b" 0\n")]
    seeds["flat"] = s

    d = folder / "split"
    d.mkdir()
    vc.qemu_write(vc.qemu_create(d / "disk.vmdk", 16 * MIB, "twoGbMaxExtentSparse"), vc.BASE_WRITES)
    s = _sparse_seed("split", d, "disk.vmdk", "disk-s001.vmdk")
    s.tokens += [("disk.vmdk", t) for t in (b"RW 32768", b"32768", b"SPARSE", b'"disk-s001.vmdk"',
                                            b"createType", b"CID=")]
    seeds["split"] = s

    d = folder / "delta"
    d.mkdir()
    vc.qemu_write(vc.qemu_create(d / "parent.vmdk", 8 * MIB), vc.BASE_WRITES)
    vc.qemu_create(d / "child.vmdk", 8 * MIB, backing=d / "parent.vmdk")
    vc.qemu_write(d / "child.vmdk", [vc.Write(0x99, 4096, 4096)])
    s = _sparse_seed("delta", d, "child.vmdk")
    s.fields += sparse_fields(d, "parent.vmdk", label="parent.")
    pcid = vc._embedded_value(d / "parent.vmdk", b"CID=")
    ccid = vc._embedded_value(d / "child.vmdk", b"CID=")
    s.recipes.append(("chain-loop-A-B-A", (
        Text("parent.vmdk", b"parentCID=ffffffff", b"parentCID=" + ccid),
        Text("parent.vmdk", b'createType="monolithicSparse"',
             b'createType="monolithicSparse"\nparentFileNameHint="child.vmdk"'))))
    s.recipes.append(("chain-self", (Text("child.vmdk", b'parentFileNameHint="parent.vmdk"',
                                          b'parentFileNameHint="child.vmdk"'),
                                     Text("child.vmdk", b"parentCID=" + pcid, b"parentCID=" + ccid))))
    s.tokens += [("child.vmdk", t) for t in (b'"parent.vmdk"', b"parentCID=" + pcid,
                                             b"parentFileNameHint")]
    seeds["delta"] = s

    seeds["fat12"] = _fat_seed("fat12", folder / "fat12", "vol.img", 12, 2 * MIB, False)
    seeds["fat16-mbr"] = _fat_seed("fat16-mbr", folder / "fat16-mbr", "disk.img", 16, 8 * MIB, True)
    seeds["fat16"] = _fat_seed("fat16", folder / "fat16", "vol.img", 16, 4 * MIB, False)
    seeds["fat32-mbr"] = _fat_seed("fat32-mbr", folder / "fat32-mbr", "disk.img", 32, 40 * MIB, True)

    fwbytes = fwbuilder.standard(4).to_bytes()
    d = folder / "firmware"
    d.mkdir()
    (d / "ipva.bin").write_bytes(fwbytes)
    s = Seed("firmware", "firmware", d, "ipva.bin").scan()
    s.fields = firmware_fields("ipva.bin")
    seeds["firmware"] = s

    d = folder / "boot"
    d.mkdir()
    fwbuilder.make_raw_boot(str(d / "boot.img"), fwbytes, size_mib=16)
    s = Seed("boot", "boot", d, "boot.img").scan()
    s.fields, s.recipes = _boot_fields("boot.img", (d / "boot.img").read_bytes())
    seeds["boot"] = s

    d = folder / "boot-vmdk"
    d.mkdir()
    fwbuilder.to_vmdk(str(folder / "boot" / "boot.img"), str(d / "hd-boot.vmdk"))
    raw = (folder / "boot" / "boot.img").read_bytes()
    s = Seed("boot-vmdk", "boot", d, "hd-boot.vmdk").scan()
    fields, recipes = _boot_fields("hd-boot.vmdk", raw,
                                   lambda v: sparse_host_offset(d / "hd-boot.vmdk", v))
    s.fields = fields + sparse_fields(d, "hd-boot.vmdk")
    s.recipes = recipes
    seeds["boot-vmdk"] = s

    d = folder / "dump"
    d.mkdir()
    sb = StoreBuilder(8 * MIB, slot_sectors=256)
    for slot in range(3):
        sb.record(slot, slot + 1, tear_at=300 if slot == 2 else None)
    sb.header().write(d / "dump.img")
    s = Seed("dump", "dump", d, "dump.img").scan()
    s.fields = dump_fields("dump.img", 4, 256)
    seeds["dump"] = s

    d = folder / "flash"
    d.mkdir()
    with open(d / "flash.img", "wb") as f:
        f.truncate(100 * MIB)
        for seg in (0, 1, 37):
            f.seek(seg * 65536)
            f.write(b"<obj id=%d/>\n" % seg * 100)
    seeds["flash"] = Seed("flash", "flash", d, "flash.img").scan()

    from test_vmx import WORKSTATION_VMX
    d = folder / "vmx"
    d.mkdir()
    (d / "ipva.vmx").write_bytes(WORKSTATION_VMX.encode())
    s = Seed("vmx", "vmx", d, "ipva.vmx").scan()
    s.tokens = [("ipva.vmx", t) for t in VMX_TOKENS]
    seeds["vmx"] = s

    from test_bundle_check import build_disks
    d = folder / "bundle"
    disks = build_disks(str(d))
    (d / "ipva.vmx").write_bytes(WORKSTATION_VMX.replace("/iso/tools.iso", "tools.iso").encode())
    s = Seed("bundle", "bundle", d, "ipva.vmx").scan()
    s.tokens = [("ipva.vmx", t) for t in VMX_TOKENS]
    boot_raw = folder / "bundle-boot.raw"
    fwbuilder.to_raw(disks["boot"], str(boot_raw))
    bf, br = _boot_fields("hd-boot.vmdk", boot_raw.read_bytes(),
                          lambda v: sparse_host_offset(d / "hd-boot.vmdk", v))
    os.unlink(boot_raw)
    s.fields = bf + sparse_fields(d, "hd-cf.vmdk") + sparse_fields(d, "hd-dump.vmdk")
    s.recipes = br
    seeds["bundle"] = s
    return seeds


def run_tool(*args: str) -> str:
    return run(*args).stdout
