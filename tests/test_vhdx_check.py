"""Every VHDX finding code, each from an input built by tests/vhdxbuilder.py (MS-VHDX, not
vdisk's writer): `vdisk check --json` reports it; fixable ones are repaired and then both
vdisk and qemu-img check the file clean. Hostile inputs are refused by the read commands
with one line and exit 3."""
from __future__ import annotations

import json
import struct
import uuid
from pathlib import Path

import pytest
import vhdxbuilder as vb
from conftest import need_tool, run, vdisk

MIB = vb.MIB
A, B = bytes([0x11]) * MIB, bytes(range(256)) * (MIB // 256)


def _base(**kw) -> vb.Vhdx:
    return vb.Vhdx(size=8 * MIB, blocks={0: (6, A), 3: (6, B)}, **kw)


def _write(tmp: Path, v: vb.Vhdx, name: str = "d.vhdx", **kw) -> Path:
    p = tmp / name
    p.write_bytes(v.build(**kw))
    return p


def _poke(p: Path, offset: int, data: bytes) -> None:
    with open(p, "r+b") as f:
        f.seek(offset)
        f.write(data)


def _headers(p: Path, **kw) -> None:
    """Rewrite both headers (valid CRCs) with the given header() arguments."""
    _poke(p, 64 * 1024, vb.header(1, **kw))
    _poke(p, 128 * 1024, vb.header(2, **kw))


def _regions(p: Path, entries) -> None:
    rt = vb.region_table(entries)
    _poke(p, 192 * 1024, rt)
    _poke(p, 256 * 1024, rt)


def _item(v: vb.Vhdx, n: int) -> int:
    """File offset of metadata item `n` (0 params, 1 size, 2 id, 3 logical, 4 physical, 5 locator)."""
    return v.meta_offset + 64 * 1024 + (0, 8, 16, 32, 36, 40)[n]


def _std_regions(v: vb.Vhdx):
    return [(vb.BAT, v.bat_offset, MIB, 1), (vb.META, v.meta_offset, MIB, 1)]


def _diff(tmp: Path, locator: dict | None = None, blocks=None, bitmaps=None) -> Path:
    parent = vb.Vhdx(size=8 * MIB, blocks={0: (6, A), 1: (6, A), 2: (6, A)})
    (tmp / "parent.vhdx").write_bytes(parent.build())
    guid = "{" + str(uuid.UUID(bytes_le=parent.data_guid)) + "}"
    child = vb.Vhdx(size=8 * MIB, parent=locator if locator is not None else
                    {"parent_linkage": guid, "relative_path": "parent.vhdx"},
                    blocks=blocks or {}, bitmaps=bitmaps or {})
    return _write(tmp, child, "child.vhdx")


def _log(v: vb.Vhdx, entries) -> tuple[bytes, bytes]:
    log_guid = uuid.uuid4().bytes_le
    raw = b"".join(vb.log_entry(seq, tail, log_guid, w, fl, last) for seq, tail, w, fl, last in entries)
    return raw, log_guid


# each case: code -> builds the file in tmp, returns its path
def c_no_valid_header(t):
    p = _write(t, _base())
    _poke(p, 64 * 1024 + 200, b"x")
    _poke(p, 128 * 1024 + 200, b"x")
    return p


def c_header_damaged(t):
    p = _write(t, _base())
    _poke(p, 64 * 1024 + 300, b"junk")
    return p


def c_header_version(t):
    p = _write(t, _base())
    _headers(p, version=2)
    return p


def c_log_misplaced(t):
    p = _write(t, _base())
    _headers(p, log_offset=MIB + 4096)
    return p


def c_log_version(t):
    p = _write(t, _base())
    for slot, at in ((1, 64 * 1024), (2, 128 * 1024)):
        h = vb.header(slot, log_guid=b"\x01" * 16)
        struct.pack_into("<H", h, 64, 1)
        vb.crc_into(h)
        _poke(p, at, h)
    return p


def c_log_past_eof(t):
    p = _write(t, _base())
    _headers(p, log_guid=b"\x01" * 16, log_offset=64 * MIB)
    return p


def c_no_valid_region_table(t):
    p = _write(t, _base())
    _poke(p, 192 * 1024 + 100, b"x")
    _poke(p, 256 * 1024 + 100, b"x")
    return p


def c_region_table_damaged(t):
    p = _write(t, _base())
    _poke(p, 256 * 1024 + 100, b"x")
    return p


def c_region_table_mismatch(t):
    v = _base()
    p = _write(t, v)
    _poke(p, 256 * 1024, vb.region_table(_std_regions(v) + [(str(uuid.uuid4()), 100 * MIB, MIB, 0)]))
    return p


def c_region_unsupported(t):
    v = _base()
    p = _write(t, v)
    _regions(p, _std_regions(v) + [(str(uuid.uuid4()), 20 * MIB, MIB, 1)])
    return p


def c_region_misaligned(t):
    v = _base()
    p = _write(t, v)
    _regions(p, [(vb.BAT, v.bat_offset + 4096, MIB, 1), (vb.META, v.meta_offset, MIB, 1)])
    return p


def c_region_past_eof(t):
    v = _base()
    p = _write(t, v)
    _regions(p, [(vb.BAT, v.bat_offset, MIB, 1), (vb.META, 1024 * MIB, MIB, 1)])
    return p


def c_region_overlap(t):
    v = _base()
    p = _write(t, v)
    _regions(p, [(vb.BAT, v.meta_offset, MIB, 1), (vb.META, v.meta_offset, MIB, 1)])
    return p


def c_region_missing(t):
    v = _base()
    p = _write(t, v)
    _regions(p, [(vb.BAT, v.bat_offset, MIB, 1)])
    return p


def c_metadata_table_bad(t):
    v = _base()
    p = _write(t, v)
    _poke(p, v.meta_offset, b"METADATA")
    return p


def c_metadata_item_bad(t):
    return _write(t, _base(meta_lengths={"size": 2 * MIB}))


def c_metadata_item_short(t):
    return _write(t, _base(meta_lengths={"params": 4}))


def c_metadata_unsupported(t):
    v = _base()
    p = _write(t, v)
    # a sixth entry: an unknown item marked IsRequired
    _poke(p, v.meta_offset + 10, struct.pack("<H", 6))
    _poke(p, v.meta_offset + 32 + 5 * 32, struct.pack("<16sIIII", uuid.uuid4().bytes_le,
                                                       64 * 1024 + 200, 8, 4, 0))
    return p


def c_metadata_missing(t):
    v = _base()
    p = _write(t, v)
    _poke(p, v.meta_offset + 10, struct.pack("<H", 4))   # drops the physical sector size
    return p


def c_block_size_bad(t):
    v = _base()
    p = _write(t, v)
    _poke(p, _item(v, 0), struct.pack("<I", 3 * MIB))
    return p


def c_sector_size_bad(t):
    v = _base()
    p = _write(t, v)
    _poke(p, _item(v, 3), struct.pack("<I", 1024))
    return p


def c_disk_size_bad(t):
    v = _base()
    p = _write(t, v)
    _poke(p, _item(v, 1), struct.pack("<Q", 65 << 40))
    return p


def c_bat_too_small(t):
    v = _base()
    p = _write(t, v)
    _poke(p, _item(v, 1), struct.pack("<Q", 64 << 40))   # 64 TiB: 2^26 entries, 1 MiB of BAT
    return p


def c_locator_unsupported(t):
    p = _diff(t)
    v_off = 2 * MIB + 64 * 1024 + 40      # the child's locator item
    _poke(p, v_off, uuid.uuid4().bytes_le)
    return p


def c_locator_bad(t):
    return _diff(t, locator={"relative_path": "parent.vhdx"})


def c_log_bad(t):
    p = _write(t, _base())
    _headers(p, log_guid=b"\x02" * 16)
    return p


def c_log_truncated(t):
    v = _base()
    raw, lg = _log(v, [(1, 0, [(v.bat_offset, bytes(4096))], 1024 * MIB, 1024 * MIB)])
    return _write(t, v, log=raw, log_guid=lg)


def c_log_pending(t):
    v = _base()
    v.build()
    bat = bytearray(v.build()[v.bat_offset:v.bat_offset + 4096])
    raw, lg = _log(v, [(1, 0, [(v.bat_offset, bytes(bat))], MIB, MIB)])
    return _write(t, v, log=raw, log_guid=lg)


def c_bat_state_invalid(t):
    return _write(t, _base(bat_override={1: 4, 2: 7}))


def c_bat_reserved(t):
    v = _base()
    v.build()
    return _write(t, _base(bat_override={0: (v.payload_offset // MIB) << 20 | 1 << 5 | 6}))


def c_bat_misplaced(t):
    return _write(t, _base(bat_override={1: 6}))


def c_bat_past_eof(t):
    return _write(t, _base(bat_override={1: (1024 << 20) | 6}))


def c_bitmap_missing(t):
    return _diff(t, blocks={1: (7, A)})


def c_block_overlap(t):
    v = _base()
    v.build()
    return _write(t, _base(bat_override={1: (v.payload_offset // MIB) << 20 | 6}))


def c_parent_unusable(t):
    p = _diff(t)
    (t / "parent.vhdx").unlink()
    return p


CASES = [
    ("vhdx.no-valid-header", c_no_valid_header), ("vhdx.header-damaged", c_header_damaged),
    ("vhdx.header-version-unsupported", c_header_version), ("vhdx.log-misplaced", c_log_misplaced),
    ("vhdx.log-version-unsupported", c_log_version), ("vhdx.log-past-eof", c_log_past_eof),
    ("vhdx.no-valid-region-table", c_no_valid_region_table),
    ("vhdx.region-table-damaged", c_region_table_damaged),
    ("vhdx.region-table-mismatch", c_region_table_mismatch),
    ("vhdx.region-unsupported", c_region_unsupported), ("vhdx.region-misaligned", c_region_misaligned),
    ("vhdx.region-past-eof", c_region_past_eof), ("vhdx.region-overlap", c_region_overlap),
    ("vhdx.region-missing", c_region_missing), ("vhdx.metadata-table-bad", c_metadata_table_bad),
    ("vhdx.metadata-item-bad", c_metadata_item_bad), ("vhdx.metadata-item-bad", c_metadata_item_short),
    ("vhdx.metadata-unsupported", c_metadata_unsupported),
    ("vhdx.metadata-missing", c_metadata_missing), ("vhdx.block-size-bad", c_block_size_bad),
    ("vhdx.sector-size-bad", c_sector_size_bad), ("vhdx.disk-size-bad", c_disk_size_bad),
    ("vhdx.bat-too-small", c_bat_too_small), ("vhdx.locator-unsupported", c_locator_unsupported),
    ("vhdx.locator-bad", c_locator_bad), ("vhdx.log-bad", c_log_bad),
    ("vhdx.log-truncated", c_log_truncated), ("vhdx.log-pending", c_log_pending),
    ("vhdx.bat-state-invalid", c_bat_state_invalid), ("vhdx.bat-reserved-bits", c_bat_reserved),
    ("vhdx.bat-misplaced", c_bat_misplaced), ("vhdx.bat-past-eof", c_bat_past_eof),
    ("vhdx.bitmap-missing", c_bitmap_missing), ("vhdx.block-overlap", c_block_overlap),
    ("vhdx.parent-unusable", c_parent_unusable),
]
FIXABLE = {"vhdx.header-damaged", "vhdx.region-table-damaged", "vhdx.log-pending"}
# what open_image refuses outright (the rest open, and fail only where the bad part is read)
REFUSED_ON_OPEN = {"vhdx.no-valid-header", "vhdx.header-version-unsupported", "vhdx.log-misplaced",
                   "vhdx.log-version-unsupported", "vhdx.log-past-eof", "vhdx.no-valid-region-table",
                   "vhdx.region-unsupported", "vhdx.region-misaligned", "vhdx.region-past-eof",
                   "vhdx.region-overlap", "vhdx.region-missing", "vhdx.metadata-table-bad",
                   "vhdx.metadata-item-bad", "vhdx.metadata-unsupported", "vhdx.metadata-missing",
                   "vhdx.block-size-bad", "vhdx.sector-size-bad", "vhdx.disk-size-bad",
                   "vhdx.bat-too-small", "vhdx.locator-unsupported", "vhdx.locator-bad",
                   "vhdx.log-bad", "vhdx.log-truncated", "vhdx.parent-unusable"}


def _check(runner, p: Path) -> tuple[int, dict]:
    res = vdisk(runner, "check", str(p), "--json")
    assert res.exit_code in (0, 1), res.output
    found: dict = {}
    for f in json.loads(res.stdout)["findings"]:
        found.setdefault(f["code"], []).append(f)
    return res.exit_code, found


@pytest.mark.parametrize("code,make", CASES, ids=[f"{c}-{m.__name__}" for c, m in CASES])
def test_finding(tmp_path, runner, code, make):
    p = make(tmp_path)
    before = p.read_bytes()
    rc, found = _check(runner, p)
    assert rc == 1 and code in found, found
    assert p.read_bytes() == before            # check never writes
    assert found[code][0]["fixable"] == (code in FIXABLE)
    res = vdisk(runner, "info", str(p))
    if code in REFUSED_ON_OPEN:
        assert res.exit_code == 3, res.output
        lines = res.stderr.strip().splitlines()
        assert lines[0].startswith("vdisk: error:") and "Traceback" not in res.output, res.output
    if code in FIXABLE:
        res = vdisk(runner, "check", "--repair", str(p))
        assert res.exit_code == 0, res.output
        rc, found = _check(runner, p)
        assert rc == 0, found
        run(need_tool("qemu-img"), "check", "-f", "vhdx", str(p))


@pytest.mark.parametrize("code,make", [c for c in CASES if c[0] in (
    "vhdx.bat-past-eof", "vhdx.bat-misplaced", "vhdx.bat-state-invalid", "vhdx.bitmap-missing")])
def test_bad_blocks_refused_when_read(tmp_path, runner, code, make):
    p = make(tmp_path)
    res = vdisk(runner, "convert", str(p), str(tmp_path / "out.raw"))
    assert res.exit_code == 3, res.output
    assert len(res.stderr.strip().splitlines()) <= 2 and "Traceback" not in res.output
    assert not (tmp_path / "out.raw").exists()


def test_log_that_does_not_verify_is_refused(tmp_path, runner):
    v = _base()
    v.build()
    raw, lg = _log(v, [(1, 0, [(v.bat_offset, bytes(4096))], MIB, MIB)])
    bad = bytearray(raw)
    bad[4096 + 100] ^= 1                       # the data sector: its CRC no longer matches
    p = _write(tmp_path, v, log=bytes(bad), log_guid=lg)
    before = p.read_bytes()
    for cmd in (["info"], ["map"], ["fs", "ls"]):
        res = vdisk(runner, *cmd, str(p))
        assert res.exit_code == 3 and "holds no valid entry sequence" in res.stderr, res.output
    assert p.read_bytes() == before


def test_huge_but_valid_disk_is_read_in_bounded_memory(tmp_path, runner):
    """64 TiB in blocks of 256 MiB: 262144 payload entries, read in pages, never whole."""
    v = vb.Vhdx(size=64 << 40, block=256 * MIB, blocks={5: (6, A)})
    p = _write(tmp_path, v)
    res = vdisk(runner, "info", "--json", str(p))
    assert res.exit_code == 0 and json.loads(res.stdout)["virtual_size_bytes"] == 64 << 40
    rc, found = _check(runner, p)
    assert rc == 0, found
