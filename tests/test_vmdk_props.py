"""Property tests for the VMDK schemas and validators (specs/vmdk.md).

- SparseExtentHeader: parse/build agree with an independent struct encoding of the
  technote's layout; validate_geometry() accepts exactly what is safe to allocate for and
  raises nothing but VdiskError subclasses for anything else.
- Descriptor: arbitrary bytes give a Descriptor or a FormatError, nothing else; rendering
  keeps every line byte for byte; set() changes only the one line.
- Markers: build/parse agree with the technote's byte layout.

Derandomized with modest example counts so the file runs in a few seconds.
"""
from __future__ import annotations

import struct

import pytest
import vmdkcorpus as vc
from construct import ConstructError
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from vdisk_tool.errors import FormatError, VdiskError
from vdisk_tool.formats import vmdk_descriptor as vd
from vdisk_tool.formats import vmdk_sparse as vs
from vdisk_tool.image.vmdk.sparse import validate_geometry

PROPS = settings(derandomize=True, max_examples=200, deadline=None,
                 suppress_health_check=[HealthCheck.too_slow])
FEW = settings(derandomize=True, max_examples=80, deadline=None,
               suppress_health_check=[HealthCheck.too_slow])

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
u64 = st.integers(0, 0xFFFFFFFFFFFFFFFF)
# numbers a header is likely to hold: small, powers of two, edges
interesting64 = st.one_of(st.integers(0, 4096), st.sampled_from(
    [1 << k for k in range(64)] + [(1 << k) - 1 for k in range(1, 65)]), u64)
interesting32 = st.one_of(st.integers(0, 4096), st.sampled_from(
    [1 << k for k in range(32)] + [(1 << k) - 1 for k in range(1, 33)]), u32)

headers = st.fixed_dictionaries({
    "magic": st.sampled_from([b"KDMV", b"KDMV", b"kdmv", b"COWD", b"\0\0\0\0"]),
    "version": st.one_of(st.integers(0, 4), u32),
    "flags": st.one_of(st.sampled_from([0x3, 0x30001, 0x30003, 0x7, 0x10003, 0x40003]), u32),
    "capacity": interesting64,
    "grain_size": st.one_of(st.sampled_from([0, 1, 7, 8, 96, 128, 0x200000, 0x400000, 1 << 40]),
                            interesting64),
    "descriptor_offset": interesting64,
    "descriptor_size": interesting64,
    "gtes_per_gt": st.one_of(st.sampled_from([0, 3, 128, 512, 4096, 8192, 1 << 20]),
                             interesting32),
    "rgd_offset": interesting64,
    "gd_offset": st.one_of(interesting64, st.just(vs.GD_AT_END)),
    "overhead": interesting64,
    "unclean_shutdown": u8,
    "eol_chars": st.sampled_from([b"\n \r\n", b"\r \r\n", b"\0\0\0\0"]),
    "compress_algorithm": st.one_of(st.sampled_from([0, 1, 2]), u16),
})

ENGINE_NAMES = {  # the engine's snake_case names for the technote's fields
    "magic": "magic_number", "version": "version", "flags": "flags",
    "capacity": "capacity_sectors", "grain_size": "grain_sectors",
    "descriptor_offset": "descriptor_offset_sectors", "descriptor_size": "descriptor_sectors",
    "gtes_per_gt": "gtes_per_gt", "rgd_offset": "rgd_offset_sectors",
    "gd_offset": "gd_offset_sectors", "overhead": "overhead_sectors",
    "unclean_shutdown": "unclean_shutdown", "compress_algorithm": "compress_algorithm",
}


# -- SparseExtentHeader -----------------------------------------------------------------------
def test_header_known_values():
    """qemu's layout for 1 GiB (vmdk-facts §3 worked example), packed independently."""
    raw = vc.pack_header(magic=b"KDMV", version=1, flags=3, capacity=2097152, grain_size=128,
                         descriptor_offset=1, descriptor_size=20, gtes_per_gt=512, rgd_offset=21,
                         gd_offset=150, overhead=384, unclean_shutdown=0, eol_chars=b"\n \r\n",
                         compress_algorithm=0)
    h = vs.parse_header(raw)
    assert (h.magic_number, h.version, h.flags) == (b"KDMV", 1, 3)
    assert (h.capacity_sectors, h.grain_sectors, h.gtes_per_gt) == (2097152, 128, 512)
    assert (h.descriptor_offset_sectors, h.descriptor_sectors) == (1, 20)
    assert (h.rgd_offset_sectors, h.gd_offset_sectors, h.overhead_sectors) == (21, 150, 384)
    assert (h.single_end_line_char, h.non_end_line_char, h.double_end_line_char1,
            h.double_end_line_char2) == (b"\n", b" ", b"\r", b"\n")
    geo = validate_geometry(h, "x.vmdk", 384 * 512)
    assert geo.gd_entries == 32 and geo.grain_bytes == 65536
    assert geo.rgd_offset_sectors == 21 and not geo.compressed


@PROPS
@given(headers)
def test_header_parse_matches_struct_layout(f):
    raw = vc.pack_header(**f)
    h = vs.parse_header(raw)
    for ours, theirs in ENGINE_NAMES.items():
        assert h[theirs] == f[ours], ours
    eol = (h.single_end_line_char + h.non_end_line_char + h.double_end_line_char1
           + h.double_end_line_char2)
    assert eol == f["eol_chars"]
    assert vs.build_header(h) == raw


@PROPS
@given(st.binary(min_size=512, max_size=512))
def test_header_bytes_round_trip(raw):
    assert vs.build_header(vs.parse_header(raw)) == raw


@PROPS
@given(st.binary(min_size=512, max_size=512))
def test_header_struct_reads_as_the_construct_schema(raw):
    """parse_header's struct layout (which spares start-up loading construct) reads every
    field as vmdk_sparse.SparseExtentHeader does, name by name and value by value."""
    theirs = vs.SparseExtentHeader.parse(raw)
    ours = vs.parse_header(raw)
    assert list(ours) == [k for k in theirs if not k.startswith("_")]
    assert all(ours[k] == theirs[k] for k in ours)
    assert vs.HEADER_STRUCT.size == vs.SparseExtentHeader.sizeof() == 512


@PROPS
@given(headers, st.one_of(st.integers(0, 1 << 24), interesting64))
@example({"magic": b"KDMV", "version": 1, "flags": 3, "capacity": 1 << 63, "grain_size": 128,
          "descriptor_offset": 1, "descriptor_size": 20, "gtes_per_gt": 512, "rgd_offset": 21,
          "gd_offset": 150, "overhead": 384, "unclean_shutdown": 0, "eol_chars": b"\n \r\n",
          "compress_algorithm": 0}, 1 << 20)
def test_validate_geometry_bounds_everything(f, file_bytes):
    """Either a VdiskError, or numbers that are safe to allocate and read for."""
    h = vs.parse_header(vc.pack_header(**f))
    try:
        geo = validate_geometry(h, "x.vmdk", file_bytes)
    except VdiskError:
        return
    g = geo.grain_sectors
    assert 1 <= g <= vs.MAX_GRAIN_SECTORS and g & (g - 1) == 0
    assert f["version"] in (1, 2, 3)
    assert f["flags"] & 0xFFFF0000 & ~(vs.FLAG_COMPRESSED | vs.FLAG_MARKERS) == 0
    assert f["compress_algorithm"] in (0, 1)
    assert 1 <= geo.gtes_per_gt <= 4096
    assert geo.gd_entries <= vs.MAX_GD_ENTRIES
    assert geo.gd_entries * geo.gt_coverage_sectors >= geo.capacity_sectors
    gd_sectors = -(-geo.gd_entries * 4 // 512)
    if geo.gd_entries:
        assert geo.gd_offset_sectors >= 1
        assert (geo.gd_offset_sectors + gd_sectors) * 512 <= file_bytes
        # the redundant directory may lie outside the file (the primary serves reads);
        # it is bounded when read: see test_rgd_outside_the_file_is_bounded_when_read
    # memory for the directory is bounded by the file, not by the header
    assert geo.gd_bytes <= max(file_bytes, 0) or geo.gd_entries == 0


@FEW
@given(st.integers(1, 1 << 32), st.sampled_from([8, 16, 64, 128]))
def test_validate_accepts_qemu_layouts(capacity_sectors, grain):
    """Every layout qemu would create (any capacity below 2 TiB) passes."""
    gt_count = -(-capacity_sectors // (512 * grain))
    gd_sectors = -(-gt_count * 4 // 512)
    gd_offset = 21 + gd_sectors + 4 * gt_count
    overhead = -(-(gd_offset + gd_sectors + 4 * gt_count) // 128) * 128
    h = vs.parse_header(vc.pack_header(
        magic=b"KDMV", version=1, flags=3, capacity=capacity_sectors, grain_size=grain,
        descriptor_offset=1, descriptor_size=20, gtes_per_gt=512, rgd_offset=21,
        gd_offset=gd_offset, overhead=overhead, unclean_shutdown=0, eol_chars=b"\n \r\n",
        compress_algorithm=0))
    geo = validate_geometry(h, "x.vmdk", overhead * 512)
    assert geo.gd_entries == gt_count
    assert geo.rgd_offset_sectors == 21


@pytest.mark.parametrize("field, value", [
    ("version", 0), ("version", 4), ("grain_size", 0), ("grain_size", 7), ("grain_size", 96),
    ("grain_size", 1 << 40), ("gtes_per_gt", 0), ("gtes_per_gt", 3), ("gtes_per_gt", 1 << 20),
    ("capacity", 1 << 63), ("gd_offset", 1 << 40),
    ("flags", 0x40003), ("compress_algorithm", 5),
])
def test_validate_rejects(field, value):
    f = {"magic": b"KDMV", "version": 1, "flags": 3, "capacity": 16384, "grain_size": 128,
         "descriptor_offset": 1, "descriptor_size": 20, "gtes_per_gt": 512, "rgd_offset": 21,
         "gd_offset": 26, "overhead": 128, "unclean_shutdown": 0, "eol_chars": b"\n \r\n",
         "compress_algorithm": 0}
    validate_geometry(vs.parse_header(vc.pack_header(**f)), "x.vmdk", 128 * 512)
    f[field] = value
    with pytest.raises(FormatError) as exc:
        validate_geometry(vs.parse_header(vc.pack_header(**f)), "x.vmdk", 128 * 512)
    assert "x.vmdk" in str(exc.value)


# -- markers --------------------------------------------------------------------------------------
@PROPS
@given(st.sampled_from([0, 1, 2, 3, 4]), u64)
def test_metadata_marker_layout(kind, num_sectors):
    raw = vs.build_metadata_marker(kind, num_sectors)
    assert raw == struct.pack("<QII", num_sectors, 0, kind) + bytes(496)
    m = vs.MetadataMarker.parse(raw)
    assert (m.num_sectors, m.marker_type) == (num_sectors, kind)


@PROPS
@given(u64, st.binary(min_size=1, max_size=300))
def test_grain_marker_layout(lba, blob):
    raw = struct.pack("<QI", lba, len(blob)) + blob
    m = vs.GrainMarker.parse(raw)
    assert (m.lba, m.compressed_bytes, m.data) == (lba, len(blob), blob)
    assert vs.GrainMarker.build(m) == raw


def test_metadata_marker_rejects_grain_marker():
    """size != 0 means a grain marker, not a metadata marker."""
    with pytest.raises(ConstructError):
        vs.MetadataMarker.parse(struct.pack("<QII", 1, 77, 1) + bytes(496))


# -- descriptor -----------------------------------------------------------------------------------
QEMU_DESCRIPTOR = (
    "# Disk DescriptorFile\nversion=1\nCID=a1b2c3d4\nparentCID=ffffffff\n"
    'createType="twoGbMaxExtentSparse"\n\n# Extent description\n'
    'RW 4194304 SPARSE "disk-s001.vmdk"\nRW 1236992 SPARSE "disk-s002.vmdk"\n\n'
    "# The Disk Data Base\n#DDB\n\n"
    'ddb.virtualHWVersion = "4"\nddb.geometry.cylinders = "9549"\nddb.geometry.heads = "16"\n'
    'ddb.geometry.sectors = "63"\nddb.adapterType = "ide"\nddb.toolsVersion = "2147483647"\n')


def test_descriptor_known_values():
    d = vd.parse_descriptor(QEMU_DESCRIPTOR.encode())
    assert d.cid == 0xA1B2C3D4 and d.parent_cid == 0xFFFFFFFF
    assert d.create_type == "twoGbMaxExtentSparse"
    assert [(e.access, e.sectors, e.extent_type, e.filename) for e in d.extents] == [
        ("RW", 4194304, "SPARSE", "disk-s001.vmdk"), ("RW", 1236992, "SPARSE", "disk-s002.vmdk")]
    assert d.capacity_sectors == 4194304 + 1236992
    assert d.get("ddb.adapterType") == "ide"
    assert d.to_bytes() == QEMU_DESCRIPTOR.encode()


@PROPS
@given(st.binary(max_size=3000))
@example(b"version=1\n\rRW 1 FLAT\n")
@example(b"version=1\nRW 99999999999999999999999 FLAT \"x\" 0\n")
@example(b"\xff\xfe" * 100)
@example(b"version=1\nCID=zz\nparentCID=-1\n")
def test_descriptor_arbitrary_bytes(data):
    try:
        d = vd.parse_descriptor(data)
    except FormatError:
        return
    d.cid, d.parent_cid, d.create_type, d.capacity_sectors  # noqa: B018 - must not raise
    d.render()


@PROPS
@given(st.lists(st.sampled_from(
    [b"version=1", b"CID=", b"RW ", b"RDONLY 5 ", b"SPARSE ", b'"', b"\n", b"\r\n", b"\r", b"=",
     b"#", b" ", b"\t", b"\0", b"ddb.x", b"99999999999999999999", b"\xc3\xa9", b"\xe9", b"ZERO"]),
    max_size=60))
def test_descriptor_token_soup(parts):
    """Near-miss descriptors made of real tokens: still only FormatError."""
    try:
        vd.parse_descriptor(b"".join(parts))
    except FormatError:
        pass


# Lines of a descriptor that parses: comments, blanks, key=value, extent lines.
_safe_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E,
                                   blacklist_characters='"'), max_size=30)
_key = st.from_regex(r"[A-Za-z][A-Za-z0-9_.]{0,15}", fullmatch=True).filter(
    lambda k: k.split(".")[0] not in ("RW", "RDONLY", "NOACCESS"))
_line = st.one_of(
    st.builds(lambda t: "#" + t, _safe_text),
    st.sampled_from(["", "  ", "\t"]),
    st.builds(lambda k, sp, v: f"{k}{sp}={sp}{v}", _key, st.sampled_from(["", " ", "  "]),
              st.one_of(st.builds(lambda t: f'"{t}"', _safe_text),
                        st.from_regex(r"[0-9a-f]{1,8}", fullmatch=True))),
    st.builds(lambda a, n, t, name: f'{a} {n} {t} "{name}"' + (" 0" if t == "FLAT" else ""),
              st.sampled_from(["RW", "RDONLY", "NOACCESS"]), st.integers(0, 1 << 40),
              st.sampled_from(["FLAT", "SPARSE", "VMFS"]),
              st.from_regex(r"[a-z0-9-]{1,12}\.vmdk", fullmatch=True)),
)


@st.composite
def descriptor_texts(draw):
    lines = ["# Disk DescriptorFile", "version=1"] + draw(st.lists(_line, max_size=25))
    nl = draw(st.sampled_from(["\n", "\r\n"]))
    return lines, nl


@PROPS
@given(descriptor_texts())
def test_descriptor_render_is_byte_exact(drawn):
    lines, nl = drawn
    raw = (nl.join(lines) + nl).encode()
    d = vd.parse_descriptor(raw)
    assert d.to_bytes() == raw
    assert len(d.extents) == sum(1 for ln in lines if ln.split(" ")[0] in vd.ACCESS_MODES)


@PROPS
@given(descriptor_texts(), st.data())
def test_descriptor_set_changes_one_line(drawn, data):
    lines, nl = drawn
    d = vd.parse_descriptor((nl.join(lines) + nl).encode())
    key = data.draw(st.sampled_from(sorted(d.keys)))
    before = list(d.lines)
    value = data.draw(st.from_regex(r"[A-Za-z0-9 ._-]{0,20}", fullmatch=True))
    d.set(key, value)
    changed = [i for i, (a, b) in enumerate(zip(before, d.lines, strict=False)) if a != b]
    assert len(d.lines) == len(before)
    assert changed == [] or changed == [d.keys[key]]
    assert d.get(key) == value.strip() or d.get(key) == value
    reparsed = vd.parse_descriptor(d.to_bytes())
    assert reparsed.get(key) == d.get(key)
    assert [e.filename for e in reparsed.extents] == [e.filename for e in d.extents]


def test_descriptor_latin1_bytes_survive():
    raw = ('# Disk DescriptorFile\nversion=1\nencoding="windows-1252"\nCID=fffffffe\n'
           'parentCID=ffffffff\ncreateType="monolithicSparse"\n'
           'ddb.comment = "caf\xe9"\n').encode("latin-1")
    d = vd.parse_descriptor(raw)
    assert d.to_bytes() == raw


def _is_subsequence(small: list[str], big: list[str]) -> bool:
    it = iter(big)
    return all(any(x == y for y in it) for x in small)


@PROPS
@given(descriptor_texts(), st.sampled_from(["parentFileNameHint", "isNativeSnapshot",
                                            "ddb.uuid", "ddb.longContentID"]),
       st.from_regex(r"[A-Za-z0-9 ._-]{0,20}", fullmatch=True))
def test_descriptor_set_new_key_keeps_every_line(drawn, key, value):
    """Adding a key inserts one line; every other line stays, in order; extents unchanged."""
    lines, nl = drawn
    d = vd.parse_descriptor((nl.join(lines) + nl).encode())
    if key.lower() in d.keys:
        return
    before = list(d.lines)
    extents = [(e.access, e.sectors, e.extent_type, e.filename) for e in d.extents]
    d.set(key, value)
    assert len(d.lines) == len(before) + 1
    assert _is_subsequence(before, d.lines)
    again = vd.parse_descriptor(d.to_bytes())
    assert again.get(key) == value.strip() or again.get(key) == value
    assert [(e.access, e.sectors, e.extent_type, e.filename) for e in again.extents] == extents
    if not key.startswith("ddb."):  # header keys go before the extent lines
        first_extent = min((e.line_index for e in again.extents), default=len(again.lines))
        assert again.keys[key.lower()] < first_extent


@PROPS
@given(descriptor_texts(), st.lists(st.tuples(st.integers(1, 1 << 33),
                                              st.from_regex(r"[a-z]{1,8}-s[0-9]{3}\.vmdk",
                                                            fullmatch=True)),
                                    min_size=1, max_size=5))
def test_descriptor_replace_extents_keeps_other_lines(drawn, new):
    lines, nl = drawn
    d = vd.parse_descriptor((nl.join(lines) + nl).encode())
    others = [ln for i, ln in enumerate(d.lines) if i not in {e.line_index for e in d.extents}]
    d.replace_extents([vd.ExtentLine("RW", n, "SPARSE", name, None, 0) for n, name in new])
    again = vd.parse_descriptor(d.to_bytes())
    assert [(e.sectors, e.filename) for e in again.extents] == new
    kept = [ln for i, ln in enumerate(again.lines)
            if i not in {e.line_index for e in again.extents}]
    assert kept == others
    assert again.capacity_sectors == sum(n for n, _ in new)


ESXI_DESCRIPTOR = (
    "# Disk DescriptorFile\nversion=1\nencoding=\"UTF-8\"\nCID=fffffffe\nparentCID=ffffffff\n"
    "isNativeSnapshot=\"no\"\ncreateType=\"vmfs\"\n\n# Extent description\n"
    "RW 83886080 VMFS \"Win2k12-01-flat.vmdk\"\n\n# The Disk Data Base\n#DDB\n\n"
    "ddb.adapterType = \"lsilogic\"\nddb.geometry.cylinders = \"5221\"\n"
    "ddb.geometry.heads = \"255\"\nddb.geometry.sectors = \"63\"\nddb.thinProvisioned = \"1\"\n"
    "ddb.uuid = \"60 00 C2 9a 6e 4c 1b 2a-8e 4e 1c 43 5a 0d 7b 3f\"\n"
    "ddb.virtualHWVersion = \"10\"\n")


def test_esxi_descriptor_known_values():
    d = vd.parse_descriptor(ESXI_DESCRIPTOR.encode())
    assert d.create_type == "vmfs" and d.cid == 0xFFFFFFFE
    (e,) = d.extents
    assert (e.access, e.sectors, e.extent_type, e.filename, e.offset_sectors) == (
        "RW", 83886080, "VMFS", "Win2k12-01-flat.vmdk", None)
    assert d.get("ddb.uuid") == "60 00 C2 9a 6e 4c 1b 2a-8e 4e 1c 43 5a 0d 7b 3f"
    assert d.get("DDB.ADAPTERTYPE") == "lsilogic"  # keys compare case-insensitively
    assert vd.scsi_geometry(83886080) == (5221, 255, 63)
    assert d.to_bytes() == ESXI_DESCRIPTOR.encode()


@pytest.mark.parametrize("capacity, chs", [
    (10485760, (10402, 16, 63)),     # the technote's example
    (14336000, (14222, 16, 63)),
    (18432000, (16383, 16, 63)),     # capped
])
def test_ide_geometry_known_values(capacity, chs):
    assert vd.ide_geometry(capacity) == chs


def test_rgd_outside_the_file_is_bounded_when_read(tmp_path):
    """An rgdOffset past the end opens (the primary directory serves); reading the redundant
    directory raises instead of allocating or reading past the file."""
    from vdisk_tool.errors import VdiskError
    from vdisk_tool.image.vmdk.sparse import SparseExtent
    f = {"magic": b"KDMV", "version": 1, "flags": 3, "capacity": 16384, "grain_size": 128,
         "descriptor_offset": 1, "descriptor_size": 20, "gtes_per_gt": 512, "rgd_offset": 1 << 40,
         "gd_offset": 26, "overhead": 128, "unclean_shutdown": 0, "eol_chars": b"\n \r\n",
         "compress_algorithm": 0}
    p = tmp_path / "x.vmdk"
    p.write_bytes(vc.pack_header(**f).ljust(128 * 512, b"\0"))
    ext = SparseExtent(str(p))
    try:
        assert ext.read_at(0, 512) == bytes(512)
        with pytest.raises(VdiskError):
            ext.read_rgd()
    finally:
        ext.close()
