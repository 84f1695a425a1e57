"""VHDX both ways with qemu-img as the oracle: every file qemu-img writes (subformat, block
size, log size, block_state_zero) reads byte-identical to `qemu-img convert -O raw`; every
file vdisk writes passes `qemu-img check` and `qemu-img compare`. What qemu-img cannot
write (a log to replay, differencing files, 4096-byte sectors) comes from
tests/vhdxbuilder.py, and is judged against the bytes the builder put in."""
from __future__ import annotations

import struct
import uuid
from pathlib import Path

import pytest
import vhdxbuilder as vb
from conftest import need_tool, run, vdisk

from vdisk_tool.image.disk import open_image
from vdisk_tool.image.edit import edit_image

MIB = vb.MIB
WRITES = ((0, 0x11, "64k"), (MIB - 4096, 0x22, "8k"), (5 * MIB + 512, 0x33, "3M"),
          (19 * MIB, 0x44, "1M"))


def _qemu(tmp: Path, name: str, opts: str, size: str = "20M") -> Path:
    p = tmp / name
    run(need_tool("qemu-img"), "create", "-q", "-f", "vhdx", "-o", opts, str(p), size)
    cmds = sum((["-c", f"write -P {b} {o} {n}"] for o, b, n in WRITES), [])
    run(need_tool("qemu-io"), "-f", "vhdx", *cmds, str(p))
    return p


def _raw(tmp: Path, p: Path) -> bytes:
    out = tmp / (p.name + ".raw")
    run(need_tool("qemu-img"), "convert", "-f", "vhdx", "-O", "raw", str(p), str(out))
    return out.read_bytes()


OPTIONS = ["subformat=dynamic", "subformat=fixed", "subformat=dynamic,block_size=1M",
           "subformat=dynamic,block_size=256M", "subformat=fixed,block_size=2M,log_size=4M",
           "subformat=dynamic,block_state_zero=off", "subformat=fixed,block_state_zero=off",
           "subformat=dynamic,log_size=1M,block_size=32M"]


@pytest.mark.parametrize("opts", OPTIONS)
def test_qemu_written_reads_identical(tmp_path, opts):
    p = _qemu(tmp_path, "q.vhdx", opts)
    want = _raw(tmp_path, p)
    with open_image(p) as d:
        assert d.format == "vhdx" and d.size_bytes == len(want)
        assert d.subformat == ("vhdx-fixed" if "fixed" in opts else "vhdx-dynamic")
        assert d.read_at(0, d.size_bytes) == want
        # runs: every non-zero byte lies in a DATA run
        for r in d.runs():
            if r.kind.value != "data":
                assert want[r.offset:r.end].count(0) == r.length_bytes, r


@pytest.mark.parametrize("opts", ["subformat=dynamic", "subformat=fixed,block_size=1M"])
def test_vdisk_writes_pass_qemu(tmp_path, runner, opts):
    p = _qemu(tmp_path, "q.vhdx", opts)
    ref = tmp_path / "ref.raw"
    ref.write_bytes(_raw(tmp_path, p))
    before = _headers(p)
    edits = ((3 * MIB + 100, b"\x99" * 5000), (17 * MIB - 10, b"\x55" * (2 * MIB)), (0, b"Z"))
    with edit_image(str(p)) as d:
        for off, data in edits:
            d.write_at(off, data)
    with open(ref, "r+b") as f:
        for off, data in edits:
            f.seek(off)
            f.write(data)
    run(need_tool("qemu-img"), "check", "-f", "vhdx", str(p))
    run(need_tool("qemu-img"), "compare", "-f", "vhdx", "-F", "raw", str(p), str(ref))
    # the first write of the session updated both headers: new DataWriteGuid, sequence + 2
    after = _headers(p)
    top = max(seq for seq, _, _ in before)
    assert sorted(seq for seq, _, _ in after) == [top + 1, top + 2]
    assert len({g for _, g, _ in after}) == 1 and after[0][1] != before[0][1]
    assert all(fw != b for (_, _, fw), (_, _, b) in zip(after, before, strict=True))
    res = vdisk(runner, "check", str(p))
    assert res.exit_code == 0, res.output
    # the new blocks lie 1 MiB aligned at the end of the file
    with open_image(p) as d:
        dev = d.extents[0].device
        offs = [vb_off for vb_off in (dev.entry(i) >> 20 << 20 for i in range(dev.layout.bat_count))
                if vb_off]
        assert all(o % MIB == 0 for o in offs) and max(offs) + dev.block_bytes <= p.stat().st_size


def _headers(p: Path) -> list[tuple[int, bytes, bytes]]:
    """(SequenceNumber, DataWriteGuid, FileWriteGuid) of both headers, each CRC-checked."""
    data = p.read_bytes()
    out = []
    for at in (64 * 1024, 128 * 1024):
        h = bytearray(data[at:at + 4096])
        crc = h[4:8]
        vb.crc_into(h)
        assert h[4:8] == crc and h[:4] == b"head"
        out.append((struct.unpack_from("<Q", h, 8)[0], bytes(h[32:48]), bytes(h[16:32])))
    return out


def test_grow_moves_the_bat_when_it_must(tmp_path, runner):
    """qemu-img cannot resize VHDX: vdisk grows it in place; past 128 GiB of 1 MiB blocks
    the BAT needs more than its 1 MiB region and moves to the end of the file."""
    p = _qemu(tmp_path, "g.vhdx", "subformat=dynamic,block_size=1M")
    ref = tmp_path / "ref.raw"
    ref.write_bytes(_raw(tmp_path, p))
    for size in ("64M", "200G"):
        assert vdisk(runner, "grow", str(p), "--size", size).exit_code == 0
        run(need_tool("qemu-img"), "check", "-f", "vhdx", str(p))
        run(need_tool("qemu-img"), "compare", "-f", "vhdx", "-F", "raw", str(p), str(ref))
    run(need_tool("qemu-io"), "-f", "vhdx", "-c", "write -P 0x5a 150G 1M", str(p))
    run(need_tool("qemu-img"), "check", "-f", "vhdx", str(p))
    with open_image(p) as d:
        assert d.size_bytes == 200 << 30 and d.read_at(150 << 30, MIB) == b"\x5a" * MIB
        assert d.extents[0].device.layout.bat_bytes == 2 * MIB
    assert vdisk(runner, "check", str(p)).exit_code == 0


@pytest.mark.parametrize("args", [[], ["-o", "subformat=fixed,block_size=1M"],
                                  ["-O", "vhdx", "-o", "block_size=32M"]])
def test_convert_to_vhdx_passes_qemu(tmp_path, runner, args):
    src = Path(__file__).resolve().parent.parent / "sample_images" / "ipva" / "hd-cf.vmdk"
    out = tmp_path / "cf.vhdx"
    res = vdisk(runner, "convert", str(src), str(out), *args)
    assert res.exit_code == 0, res.output
    run(need_tool("qemu-img"), "check", "-f", "vhdx", str(out))
    run(need_tool("qemu-img"), "compare", "-F", "vhdx", str(src), str(out))
    back = tmp_path / "back.vmdk"
    assert vdisk(runner, "convert", str(out), str(back)).exit_code == 0
    run(need_tool("qemu-img"), "compare", str(src), str(back))
    assert vdisk(runner, "convert", str(out), str(tmp_path / "back.raw")).exit_code == 0
    run(need_tool("qemu-img"), "compare", "-F", "raw", str(src), str(tmp_path / "back.raw"))


def test_create_passes_qemu(tmp_path, runner):
    for name, args in (("d.vhdx", []), ("f.vhdx", ["-o", "subformat=fixed,block_size=4M"])):
        p = tmp_path / name
        assert vdisk(runner, "create", str(p), "--size", "30M", *args).exit_code == 0
        info = run(need_tool("qemu-img"), "info", "--output=json", str(p)).stdout
        assert '"format": "vhdx"' in info and '"virtual-size": 31457280' in info
        run(need_tool("qemu-img"), "check", str(p))
    assert "cluster-size\": 4194304" in run("qemu-img", "info", "--output=json",
                                            str(tmp_path / "f.vhdx")).stdout


def test_4096_byte_sectors(tmp_path):
    v = vb.Vhdx(size=40 * MIB, block=MIB, sector=4096, blocks={0: (6, vb.MIB * b"\x01"),
                                                               33: (6, b"\x02" * MIB)})
    p = tmp_path / "4k.vhdx"
    p.write_bytes(v.build())
    with open_image(p) as d:
        assert d.read_at(0, MIB) == b"\x01" * MIB
        assert d.read_at(33 * MIB, MIB) == b"\x02" * MIB
        assert d.read_at(MIB, 32 * MIB) == bytes(32 * MIB)


# -- the log ----------------------------------------------------------------------------------
def _logged(tmp: Path) -> tuple[Path, bytes]:
    """A file whose BAT update and a zeroing sit in its log, with an older sequence that
    must not be replayed; returns (path, the disk content the replay must give)."""
    a, b = b"\x11" * MIB, b"\x22" * MIB
    v = vb.Vhdx(size=8 * MIB, blocks={0: (6, a), 2: (6, b)})
    v.build()
    v.bat_override = {2: 0}                     # block 2's data is written, its BAT entry not
    base = v.build()
    page = bytearray(base[v.bat_offset:v.bat_offset + 4096])
    b2 = v.payload_offset + MIB
    struct.pack_into("<Q", page, 16, (b2 // MIB) << 20 | 6)
    lg = uuid.uuid4().bytes_le
    e1 = vb.log_entry(5, 0, lg, [(v.bat_offset, bytes(page))], len(base), len(base) + MIB)
    e2 = vb.log_entry(6, 0, lg, [(v.payload_offset + 8192, 4096)], len(base), len(base) + MIB)
    stale = vb.log_entry(3, len(e1) + len(e2), lg, [(v.payload_offset, b"\x99" * 4096)],
                         len(base), len(base))
    p = tmp / "log.vhdx"
    p.write_bytes(v.build(log=e1 + e2 + stale, log_guid=lg))
    want = bytearray(a + bytes(MIB) + b + bytes(5 * MIB))
    want[8192:12288] = bytes(4096)
    return p, bytes(want)


def test_log_replayed_in_memory_when_read_only(tmp_path, runner):
    p, want = _logged(tmp_path)
    before = p.read_bytes()
    with open_image(p) as d:
        assert d.read_at(0, d.size_bytes) == want
        assert any("not yet applied" in w for w in d.warnings)
    assert p.read_bytes() == before
    res = vdisk(runner, "compare", str(p), str(_plain(tmp_path, want)))
    assert res.exit_code == 0, res.output


def _plain(tmp: Path, data: bytes) -> Path:
    r = tmp / "want.raw"
    r.write_bytes(data)
    return r


def test_log_replayed_into_the_file_when_writable(tmp_path, runner):
    p, want = _logged(tmp_path)
    res = vdisk(runner, "check", "--repair", str(p))
    assert res.exit_code == 0, res.output
    data = p.read_bytes()
    assert all(data[64 * 1024 + 48:64 * 1024 + 64] == bytes(16) for _ in (0,))   # LogGuid cleared
    assert data[128 * 1024 + 48:128 * 1024 + 64] == bytes(16)
    run(need_tool("qemu-img"), "check", "-f", "vhdx", str(p))
    run(need_tool("qemu-img"), "compare", "-f", "vhdx", "-F", "raw", str(p), str(_plain(tmp_path, want)))


# -- differencing -------------------------------------------------------------------------------
def _chain(tmp: Path, locator: dict | None = None, name: str = "parent.vhdx") -> tuple[Path, bytes]:
    pa, pb = b"\x11" * MIB, b"\x22" * MIB
    parent = vb.Vhdx(size=6 * MIB, blocks={0: (6, pa), 1: (6, pb), 2: (6, pa)})
    (tmp / name).write_bytes(parent.build())
    guid = "{" + str(uuid.UUID(bytes_le=parent.data_guid)) + "}"
    bits = bytearray(MIB)
    # block 1 (bits 2048..4095): sectors 0-7 and 100 present in the child
    for s in list(range(8)) + [100]:
        bit = 2048 + s
        bits[bit // 8] |= 1 << (bit % 8)
    child = vb.Vhdx(size=6 * MIB, parent=locator or {"parent_linkage": guid,
                                                     "relative_path": name},
                    blocks={0: (6, b"\x33" * MIB), 1: (7, b"\x44" * MIB), 3: (2, None)},
                    bitmaps={0: bytes(bits)})
    p = tmp / "child.vhdx"
    p.write_bytes(child.build())
    want = bytearray(b"\x33" * MIB + pb + pa + bytes(3 * MIB))
    for s in list(range(8)) + [100]:
        want[MIB + s * 512:MIB + s * 512 + 512] = b"\x44" * 512
    return p, bytes(want)


def test_differencing_reads_child_bitmap_and_parent(tmp_path, runner):
    p, want = _chain(tmp_path)
    with open_image(p) as d:
        assert d.subformat == "vhdx-differencing" and d.parent is not None
        assert d.read_at(0, d.size_bytes) == want
        kinds = {r.kind.value for r in d.runs()}
        assert {"data", "parent"} <= kinds
    assert vdisk(runner, "compare", str(p), str(_plain(tmp_path, want))).exit_code == 0
    assert vdisk(runner, "check", str(p)).exit_code == 0


def test_differencing_writes_set_bitmap_bits(tmp_path):
    p, want = _chain(tmp_path)
    want = bytearray(want)
    edits = ((2 * MIB + 1000, b"\x77" * 3000), (4 * MIB, b"\x66" * 512), (MIB + 50 * 512, b"\x55" * 512))
    with edit_image(str(p)) as d:
        for off, data in edits:
            d.write_at(off, data)
            want[off:off + len(data)] = data
    with open_image(p) as d:
        assert d.read_at(0, d.size_bytes) == bytes(want)
    parent_before = (tmp_path / "parent.vhdx").read_bytes()
    assert (tmp_path / "parent.vhdx").read_bytes() == parent_before


@pytest.mark.parametrize("locator,message", [
    ({"parent_linkage": "{00000000-0000-0000-0000-000000000001}", "relative_path": "parent.vhdx"},
     "not the disk this differencing file was made from"),
    ({"parent_linkage": "{00000000-0000-0000-0000-000000000001}",
      "relative_path": "..\\elsewhere\\parent.vhdx"}, "outside the image's folder"),
    ({"parent_linkage": "{00000000-0000-0000-0000-000000000001}",
      "absolute_win32_path": "\\\\?\\C:\\vms\\parent.vhdx"}, "outside the image's folder"),
    ({"parent_linkage": "{00000000-0000-0000-0000-000000000001}",
      "relative_path": "child.vhdx"}, "loops back to itself"),
])
def test_parent_locator_is_held_to_path_safety(tmp_path, runner, locator, message):
    p, _ = _chain(tmp_path, locator=locator)
    res = vdisk(runner, "info", str(p))
    assert res.exit_code == 3 and message in res.stderr, res.output
    assert "Traceback" not in res.output


def test_vhdx_to_vhdx_keeps_subformat_and_block_size(tmp_path, runner):
    import json
    p = _qemu(tmp_path, "f.vhdx", "subformat=fixed,block_size=2M")
    out = tmp_path / "copy.vhdx"
    assert vdisk(runner, "convert", str(p), str(out)).exit_code == 0
    d = json.loads(vdisk(runner, "info", "--json", str(out)).stdout)
    assert d["subformat"] == "vhdx-fixed" and d["block_bytes"] == 2 * MIB
    run(need_tool("qemu-img"), "check", str(out))
    run(need_tool("qemu-img"), "compare", str(p), str(out))
