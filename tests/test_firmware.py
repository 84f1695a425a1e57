"""ipva.bin: schema known values, the verifier against every §3 failure, packing.

Images come from tests/fwbuilder.py (struct + crcmod, written from the spec), so the
verifier is held against an independent reading of the format.
"""
from __future__ import annotations

import io
import json
import struct
import zlib

import pytest
from conftest import vdisk
from fwbuilder import FwImage, crc32, standard
from hypothesis import given, settings
from hypothesis import strategies as st

from vdisk_tool.errors import FormatError, RefusedError, Severity
from vdisk_tool.formats import ipva_firmware as fw
from vdisk_tool.ipva.firmware import (
    CHUNK_BYTES,
    FileObjectSource,
    SectionInput,
    Status,
    build_firmware,
    check_firmware,
    write_firmware,
)


class BytesSource:
    """An in-memory ByteSource that records every read."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.size_bytes = len(data)
        self.reads: list[tuple[int, int]] = []

    def read_at(self, offset: int, length: int) -> bytes:
        assert offset >= 0 and offset + length <= self.size_bytes
        self.reads.append((offset, length))
        return self.data[offset:offset + length]


def verify(data: bytes):
    return check_firmware(BytesSource(data), "ipva.bin")


def codes(rep) -> list[str]:
    return [f.code for f in rep.findings]


def errors(rep) -> list[str]:
    return [f.code for f in rep.findings if f.severity == Severity.ERROR]


# -- schema -------------------------------------------------------------------------------

def test_build_header_known_offsets():
    secs = [fw.SectionSpec("LOADER", 512, 100, 0x11223344), fw.SectionSpec("PBX", 1024, 7, 5)]
    raw = fw.build_header(build=90468, version="9.00 hotfix4", image_bytes=1031,
                          image_crc32=0xDEADBEEF, sections=secs, timestamp=1_700_000_000)
    assert len(raw) == 512
    assert raw[0:8] == b"IPVA-FW\x00"
    assert struct.unpack_from("<HHI", raw, 8) == (1, 512, 90468)
    assert raw[0x10:0x30] == b"9.00 hotfix4" + bytes(20)
    assert raw[0x30:0x40] == b"IPVA" + bytes(12)
    assert struct.unpack_from("<QIHHI", raw, 0x40) == (1031, 0xDEADBEEF, 2, 0, 1_700_000_000)
    assert raw[0x54:0x60] == bytes(12)
    assert struct.unpack_from("<8sIIII", raw, 0x60) == (b"LOADER\0\0", 512, 100, 0x11223344, 0)
    assert struct.unpack_from("<8sIIII", raw, 0x78) == (b"PBX\0\0\0\0\0", 1024, 7, 5, 0)
    assert raw[0x90:0x1FC] == bytes(0x1FC - 0x90)
    assert struct.unpack_from("<I", raw, 0x1FC)[0] == crc32(raw[:0x1FC])


def test_parse_independent_image():
    img = standard()
    data = img.to_bytes()
    h = fw.parse_header(data)
    assert h.magic == fw.MAGIC and h.build == 90468 and h.section_count == 4
    assert fw.decode_text(h.version) == "9.00 hotfix4"
    assert h.image_bytes == len(data)
    assert h.image_crc32 == crc32(data[512:])
    assert [(e.offset, e.size_bytes, e.crc32) for e in h.sections[:4]] == img.layout
    assert fw.decode_text(h.sections[1].name) == "KERNEL"
    assert fw.header_crc(data) == h.header_crc32 == crc32(data[:0x1FC])


def test_parse_short_header_is_a_format_error():
    with pytest.raises(FormatError):
        fw.parse_header(b"IPVA-FW\0" + bytes(100))


def test_text_fields():
    assert fw.decode_text(b"PBX\0\0\0\0\0") == "PBX"
    assert fw.decode_text(b"PB\0X\0\0\0\0") is None        # bytes after the padding
    assert fw.decode_text(b"\xff\0\0\0\0\0\0\0") is None
    with pytest.raises(FormatError):
        fw.encode_text("TOOLONGNAME", 8, "section name")
    with pytest.raises(FormatError):
        fw.encode_text("caf\u00e9", 8, "section name")


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=300), st.binary(max_size=300))
def test_crc32_combine_matches_crcmod(a: bytes, b: bytes):
    assert fw.crc32_combine(crc32(a), crc32(b), len(b)) == crc32(a + b)


def test_crc32_combine_long_lengths():
    a, b = b"x" * 1000, bytes(3 << 20)
    assert fw.crc32_combine(zlib.crc32(a), zlib.crc32(b), len(b)) == crc32(a + b)


# -- the verifier -----------------------------------------------------------------------

def test_healthy_image():
    img = standard()
    data = img.to_bytes()
    rep = verify(data)
    assert rep.ok and rep.findings == ()
    assert [s.name for s in rep.sections] == ["LOADER", "KERNEL", "PBX", "WEBUI"]
    for s, (off, ln, c) in zip(rep.sections, img.layout, strict=False):
        assert (s.offset, s.size_bytes, s.expected_crc32, s.found_crc32) == (off, ln, c, c)
        assert s.found_crc32 == crc32(data[off:off + ln])
    assert rep.found_image_crc32 == crc32(data[512:])
    assert [s.key for s in rep.steps] == ["header", "header-crc", "size", "section-table",
                                          "section:LOADER", "section:KERNEL", "section:PBX",
                                          "section:WEBUI", "image-crc"]
    assert all(s.status == Status.OK for s in rep.steps)
    assert rep.header.build == 90468 and rep.header.timestamp == 1_700_000_000


def test_reads_each_byte_once_in_bounded_chunks():
    img = FwImage([("LOADER", b"\1" * (CHUNK_BYTES + 5)), ("PBX", b"\2" * (2 * CHUNK_BYTES))],
                  gap=100)
    src = BytesSource(img.to_bytes())
    assert check_firmware(src).ok
    assert max(n for _, n in src.reads) <= CHUNK_BYTES
    assert sum(n for _, n in src.reads) == src.size_bytes


def test_file_object_source():
    data = standard().to_bytes()
    assert check_firmware(FileObjectSource(io.BytesIO(data))).ok


def test_bad_magic_stops_everything():
    rep = verify(FwImage(standard().sections, magic=b"IPVA-FX\0").to_bytes())
    assert codes(rep) == ["fw.magic"] and rep.header is None and rep.sections == ()
    assert not rep.ok


def test_random_bytes_are_not_firmware():
    rep = verify(bytes(range(256)) * 8)
    assert codes(rep) == ["fw.magic"]


def test_header_version():
    rep = verify(FwImage(standard().sections, header_version=2).to_bytes())
    assert codes(rep) == ["fw.header-version"]


def test_header_crc_makes_later_items_unsure():
    img = standard()
    data = bytearray(img.to_bytes())
    data[0x40:0x48] = struct.pack("<Q", len(data) + 4096)   # image_size changed, CRC not
    rep = verify(bytes(data))
    assert codes(rep)[:2] == ["fw.header-crc", "fw.truncated"]
    size_step = next(s for s in rep.steps if s.key == "size")
    assert size_step.status == Status.FAILED and not size_step.sure
    assert "header CRC" in rep.findings[1].message


def test_header_crc_alone():
    rep = verify(FwImage(standard().sections, header_crc=0x12345678).to_bytes())
    assert errors(rep) == ["fw.header-crc"]
    assert [s.status for s in rep.sections] == [Status.OK] * 4


def test_shorter_than_header():
    rep = verify(standard().to_bytes()[:300])
    assert codes(rep) == ["fw.truncated"]


@pytest.mark.parametrize("cut", [1, 700, 4000])
def test_truncated(cut: int):
    img = standard()
    data = img.to_bytes()
    rep = verify(data[:-cut])
    assert errors(rep) == ["fw.truncated"]
    assert rep.found_image_crc32 is None
    for s in rep.sections:   # sections wholly present are still checked, the rest skipped
        whole = s.offset + s.size_bytes <= len(data) - cut
        assert s.status == (Status.OK if whole else Status.SKIPPED)


def test_trailing_data():
    data = standard().to_bytes() + b"garbage"
    rep = verify(data)
    assert errors(rep) == ["fw.trailing-data"]
    assert rep.findings[0].offset == len(data) - 7
    assert rep.found_image_crc32 == crc32(data[512:-7])  # the image itself still checks


def test_image_crc_padding_damage():
    img = standard()
    data = bytearray(img.to_bytes())
    data[img.layout[2][0] - 1] ^= 0xFF  # a gap byte: covered by the image CRC only
    rep = verify(bytes(data))
    assert errors(rep) == ["fw.image-crc"]
    assert all(s.status == Status.OK for s in rep.sections)


@pytest.mark.parametrize("index", range(4))
def test_each_section_crc(index: int):
    img = standard()
    data = bytearray(img.to_bytes())
    off, ln, _ = img.layout[index]
    data[off + ln // 2] ^= 0x01
    rep = verify(bytes(data))
    assert errors(rep) == ["fw.section-crc", "fw.image-crc"]
    name = ["LOADER", "KERNEL", "PBX", "WEBUI"][index]
    assert name in rep.findings[0].message
    bad = [s for s in rep.sections if s.status == Status.FAILED]
    assert [s.name for s in bad] == [name]
    assert bad[0].found_crc32 == crc32(bytes(data[off:off + ln]))


def _entries(img: FwImage) -> list[tuple[str, int, int, int]]:
    img.body()
    return [(n, o, ln, c) for (n, _), (o, ln, c) in zip(img.sections, img.layout, strict=False)]


@pytest.mark.parametrize("change", ["in-header", "past-end", "huge"])
def test_section_range(change: str):
    img = standard()
    ent = _entries(img)
    n, _o, _ln, c = ent[1]
    if change == "in-header":
        ent[0] = (ent[0][0], 100, ent[0][2], ent[0][3])
    elif change == "past-end":
        ent[3] = (ent[3][0], ent[3][1], ent[3][2] + 1, ent[3][3])
    else:
        ent[1] = (n, 0xFFFFFF00, 0xFFFFFFFF, c)
    img.entries = ent
    rep = verify(img.to_bytes())
    assert "fw.section-range" in errors(rep)
    assert "fw.image-crc" not in errors(rep)


@pytest.mark.parametrize("count", [0, 17])
def test_section_count(count: int):
    img = standard()
    img.section_count = count
    rep = verify(img.to_bytes())
    assert "fw.section-range" in errors(rep)


def test_section_overlap_and_order():
    img = standard()
    ent = _entries(img)
    n, o, ln, c = ent[2]
    ent[2] = (n, o - 20, ln, c)          # reaches back into KERNEL
    img.entries = ent
    rep = verify(img.to_bytes())
    assert "fw.section-overlap" in errors(rep)
    assert "overlaps" in next(f for f in rep.findings if f.code == "fw.section-overlap").message

    img = standard()
    ent = _entries(img)
    ent[1], ent[2] = ent[2], ent[1]
    img.entries = ent
    rep = verify(img.to_bytes())
    assert next(f for f in rep.findings if f.code == "fw.section-overlap").message.count("before")
    assert "fw.section-crc" not in errors(rep)   # the CRCs still match their own bytes


def test_nonzero_reserved_is_a_warning():
    img = standard()
    data = bytearray(img.to_bytes())
    data[0x1E0] = 1
    data[0x1FC:0x200] = struct.pack("<I", crc32(bytes(data[:0x1FC])))
    rep = verify(bytes(data))
    assert codes(rep) == ["fw.header-field"] and rep.ok


def test_product_must_be_ipva():
    rep = verify(FwImage(standard().sections, product="IPVX").to_bytes())
    assert codes(rep) == ["fw.header-field"]


# -- packing --------------------------------------------------------------------------------

def _independent_check(data: bytes) -> list[tuple[str, int, int]]:
    """Parse and check an image with struct + crcmod only."""
    assert data[:8] == b"IPVA-FW\0"
    assert struct.unpack_from("<I", data, 0x1FC)[0] == crc32(data[:0x1FC])
    size, icrc, count = struct.unpack_from("<QIH", data, 0x40)
    assert size == len(data) and icrc == crc32(data[512:])
    out = []
    for i in range(count):
        name, off, ln, c, flags = struct.unpack_from("<8sIIII", data, 0x60 + 24 * i)
        assert crc32(data[off:off + ln]) == c and flags == 0
        out.append((name.rstrip(b"\0").decode(), off, ln))
    return out


def test_build_firmware_is_valid_for_an_independent_reader():
    data = build_firmware([("LOADER", b"a" * 1000), ("PBX", b"b" * 10)], build=7,
                          version="1.0", timestamp=5)
    assert _independent_check(data) == [("LOADER", 512, 1000), ("PBX", 1536, 10)]
    assert verify(data).ok


def test_write_firmware_streams_section_files(tmp_path):
    a = tmp_path / "a"
    a.write_bytes(bytes(range(256)) * 4100)
    b = tmp_path / "b"
    b.write_bytes(b"")
    out = io.BytesIO()
    write_firmware(out, [SectionInput("KERNEL", str(a)), SectionInput("EMPTY", str(b))],
                   build=1, version="x", timestamp=0, align_bytes=4096)
    data = out.getvalue()
    assert _independent_check(data) == [("KERNEL", 4096, 1049600), ("EMPTY", 1056768, 0)]


@pytest.mark.parametrize("sections", [[], [("A", b"")] * 2, [(f"S{i}", b"") for i in range(17)],
                                      [("NINECHARS", b"")]])
def test_pack_refuses_bad_tables(sections):
    with pytest.raises((RefusedError, FormatError)):
        build_firmware(sections, build=1, version="x", timestamp=0)


# -- CLI ------------------------------------------------------------------------------------


def test_cli_verify_healthy(runner, tmp_path):
    p = tmp_path / "ipva.bin"
    p.write_bytes(standard().to_bytes())
    r = vdisk(runner, "verify", str(p))
    assert r.exit_code == 0
    assert r.stdout.count("\n") == 1 and "OK" in r.stdout and "90468" in r.stdout
    r = vdisk(runner, "verify", str(p), "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["ok"] is True


def test_cli_verify_damaged(runner, tmp_path):
    img = standard()
    data = bytearray(img.to_bytes())
    data[img.layout[1][0]] ^= 0x40
    p = tmp_path / "ipva.bin"
    p.write_bytes(bytes(data))
    r = vdisk(runner, "verify", str(p))
    assert r.exit_code == 1
    lines = r.stdout.splitlines()
    assert lines[0] == "checksum wrong! Loading failed for image=IPVA    BIN"
    assert any("section KERNEL" in ln and "failed" in ln for ln in lines)
    assert any(ln.startswith("error: fw.section-crc") for ln in lines)
    assert any(ln.startswith("error: fw.image-crc") for ln in lines)
    doc = json.loads(vdisk(runner, "verify", str(p), "--json").stdout)
    assert [f["code"] for f in doc["findings"]] == ["fw.section-crc", "fw.image-crc"]
    assert doc["firmware"]["sections"][1]["found_crc32"] == crc32(
        bytes(data[img.layout[1][0]:img.layout[1][0] + img.layout[1][1]]))


def test_cli_info(runner, tmp_path):
    p = tmp_path / "x.bin"
    p.write_bytes(standard().to_bytes() + b"!")
    r = vdisk(runner, "firmware", "info", str(p))
    assert r.exit_code == 1
    assert "build: 90468" in r.stdout and "WEBUI" in r.stdout and "fw.trailing-data" in r.stdout
    doc = json.loads(vdisk(runner, "firmware", "info", str(p), "--json").stdout)
    assert doc["header"]["version"] == "9.00 hotfix4" and doc["ok"] is False


def test_cli_pack(runner, tmp_path):
    (tmp_path / "ld").write_bytes(b"L" * 5000)
    (tmp_path / "pbx").write_bytes(b"P" * 3)
    out = tmp_path / "ipva.bin"
    args = ["firmware", "pack", "--build", "90468", "--version", "9.00 hotfix4",
            "--section", f"LOADER={tmp_path / 'ld'}", "--section", f"PBX={tmp_path / 'pbx'}",
            "-o", str(out), "--timestamp", "1700000000"]
    r = vdisk(runner, *args)
    assert r.exit_code == 0, r.output
    assert _independent_check(out.read_bytes()) == [("LOADER", 512, 5000), ("PBX", 5632, 3)]
    assert vdisk(runner, "verify", str(out)).exit_code == 0
    r = vdisk(runner, *args)
    assert r.exit_code == 3 and "exists" in r.stderr
    r = vdisk(runner, "firmware", "pack", "--build", "1", "--version", "x", "--section",
              "NOEQUALS", "-o", str(tmp_path / "y.bin"))
    assert r.exit_code == 3 and "NAME=FILE" in r.stderr


def test_cli_verify_missing_file(runner, tmp_path):
    r = vdisk(runner, "verify", str(tmp_path / "nope.bin"))
    assert r.exit_code == 3 and r.stderr.count("\n") == 1
