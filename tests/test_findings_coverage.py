"""One test per Finding code that specs/findings.md listed as untested: each builds its
input with the independent tools (qemu-img/qemu-io, Debian's VMDKstream, mkfs.fat/mtools/
sfdisk, tests/fwbuilder.py, tests/dumpbuilder.py, hand-written vmx text), runs the command
that reports the code and asserts it; fixable codes are repaired and the independent tool
agrees afterwards."""
from __future__ import annotations

import json
import os
import re
import shutil
import struct
from pathlib import Path

import pytest
import vmdkcorpus as vc
from conftest import need_tool, run, vdisk
from crashharness import run_vdisk
from dumpbuilder import SECTOR, StoreBuilder, crc32c, slot_offset, store_header
from fwbuilder import PART_OFFSET, Fat16, FwImage, make_raw_boot, standard
from test_vmx import WORKSTATION_VMX

MiB = 1 << 20


# -- helpers -----------------------------------------------------------------------------------
def _poke(p: Path | str, offset: int, data: bytes) -> None:
    with open(p, "r+b") as f:
        f.seek(offset)
        f.write(data)


def _replace(p: Path, old: bytes, new: bytes) -> None:
    data = p.read_bytes()
    assert data.count(old) == 1, (p, old)
    p.write_bytes(data.replace(old, new))


def _findings(runner, *args: str) -> tuple[int, dict[str, list[dict]]]:
    """Run a reporting command with --json; (exit code, code -> its findings)."""
    res = vdisk(runner, *args, "--json")
    doc = json.loads(res.stdout)
    found: dict[str, list[dict]] = {}
    for f in doc.get("findings", doc.get("issues", [])):
        found.setdefault(f["code"], []).append(f)
    return res.exit_code, found


def _check(runner, p: Path | str) -> tuple[int, dict[str, list[dict]]]:
    return _findings(runner, "check", str(p))


def _sparse(tmp: Path, name: str = "d.vmdk", size: str = "64M",
            writes: tuple[tuple[int, int], ...] = ((0, 0x11), (40 * MiB, 0xAB))) -> Path:
    """A monolithicSparse VMDK from qemu-img with 64 KiB patterns written by qemu-io."""
    p = tmp / name
    run(need_tool("qemu-img"), "create", "-q", "-f", "vmdk", str(p), size)
    if writes:
        cmds = sum((["-c", f"write -P {b} {o} 64k"] for o, b in writes), [])
        run(need_tool("qemu-io"), "-f", "vmdk", *cmds, str(p))
    return p


def _dirs(p: Path) -> tuple[list[int], list[int]]:
    """The grain directory and its redundant copy, read with struct from the header."""
    data = p.read_bytes()
    capacity, grain = struct.unpack_from("<QQ", data, 0x0C)
    gtes = struct.unpack_from("<I", data, 0x2C)[0]
    rgd, gd = struct.unpack_from("<QQ", data, 0x30)
    n = -(-capacity // (grain * gtes))
    return ([struct.unpack_from("<I", data, gd * 512 + 4 * i)[0] for i in range(n)],
            [struct.unpack_from("<I", data, rgd * 512 + 4 * i)[0] for i in range(n)])


def _flat(tmp: Path, name: str = "f.vmdk", size: str = "1M") -> Path:
    p = tmp / name
    run(need_tool("qemu-img"), "create", "-q", "-f", "vmdk", "-o", "subformat=monolithicFlat",
        str(p), size)
    return p


# -- vmdk: descriptor ---------------------------------------------------------------------------
@pytest.mark.parametrize("code,old,new", [
    ("vmdk.descriptor-adapter", b'ddb.adapterType = "ide"', b'ddb.adapterType = "scsi"'),
    ("vmdk.descriptor-cid", b"\nCID=", b"\nCID=zz"),
    ("vmdk.descriptor-createtype", b'createType="monolithicFlat"\n', b""),
    ("vmdk.descriptor-createtype", b'createType="monolithicFlat"', b'createType="vmfsBogus"'),
    ("vmdk.descriptor-header", b"# Disk DescriptorFile\n", b"Disk DescriptorFile\n"),
    ("vmdk.descriptor-header", b"# Disk DescriptorFile\n", b"# Disk DescriptorFle\n"),
    ("vmdk.ddb-value", b'ddb.geometry.heads = "16"', b"ddb.geometry.heads = 16"),
    ("vmdk.ddb-value", b'ddb.virtualHWVersion = "4"', b'ddb.virtualHWVersion = "four"'),
    ("vmdk.ddb-value", b'ddb.adapterType = "ide"', b'ddb.adapterType = "ide"\n'
                                                   b'ddb.logicalSectorSize = "1024"'),
])
def test_descriptor_findings(tmp_path, runner, code, old, new):
    p = _flat(tmp_path)
    assert _check(runner, p) == (0, {})
    _replace(p, old, new)
    rc, found = _check(runner, p)
    assert rc == 1 and set(found) == {code}, found
    assert found[code][0]["severity"] == "warning"


def test_descriptor_extent_size(tmp_path, runner):
    p = _sparse(tmp_path, size="1M", writes=())
    _replace(p, b"RW 2048 SPARSE", b"RW 2000 SPARSE")   # embedded descriptor, same length
    rc, found = _check(runner, p)
    assert rc == 1 and "vmdk.descriptor-extent-size" in found
    assert "2000" in found["vmdk.descriptor-extent-size"][0]["message"]


# -- vmdk: sparse header and tables ----------------------------------------------------------------
@pytest.mark.parametrize("grain", [4, 256])
def test_grain_size_unusual(tmp_path, runner, grain):
    p = _sparse(tmp_path, writes=())
    _poke(p, 0x14, struct.pack("<Q", grain))
    rc, found = _check(runner, p)
    assert rc == 1 and "vmdk.grain-size-unusual" in found
    assert found["vmdk.grain-size-unusual"][0]["offset"] == 0x14


def test_gtes_per_gt(tmp_path, runner):
    p = _sparse(tmp_path, writes=())
    _poke(p, 0x2C, struct.pack("<I", 256))
    rc, found = _check(runner, p)
    assert rc == 1 and set(found) == {"vmdk.gtes-per-gt"}, found


def test_truncated(tmp_path, runner):
    p = _sparse(tmp_path)
    os.truncate(p, 60 * 512)   # qemu's metadata ends at sector 128
    rc, found = _check(runner, p)
    assert rc == 1 and "vmdk.truncated" in found
    assert "30720 bytes" in found["vmdk.truncated"][0]["message"]


def test_gd_rgd_mismatch(tmp_path, runner):
    """Directory entry 1 zeroed while its redundant copy names a table, and the table at the
    regular place no longer equals the copy: not a repairable directory entry."""
    p = _sparse(tmp_path)
    gd, rgd = _dirs(p)
    gd_sector = struct.unpack_from("<Q", p.read_bytes(), 0x38)[0]
    _poke(p, gd_sector * 512 + 4, struct.pack("<I", 0))
    _poke(p, gd[1] * 512, struct.pack("<I", 77777))
    rc, found = _check(runner, p)
    assert rc == 1 and "vmdk.gd-rgd-mismatch" in found, found
    assert f"copy is {rgd[1]}" in found["vmdk.gd-rgd-mismatch"][0]["message"]


def test_zero_grain_without_flag(tmp_path, runner):
    p = _sparse(tmp_path)
    gd, rgd = _dirs(p)
    for table in (gd[1], rgd[1]):        # grain 514 (32 MiB + 128 KiB): GTE 1 in both copies
        _poke(p, table * 512 + 2 * 4, struct.pack("<I", 1))
    rc, found = _check(runner, p)
    assert rc == 1 and set(found) == {"vmdk.zero-grain-without-flag"}, found
    assert "grain 514" in found["vmdk.zero-grain-without-flag"][0]["message"]
    assert run(need_tool("qemu-img"), "check", str(p), check=False).returncode == 0


def _beyond_capacity(tmp_path: Path, index: int) -> Path:
    """A 1 MiB disk (16 grains) with one more grain appended and GTE `index` pointing at it."""
    p = _sparse(tmp_path, size="1M", writes=())
    gd, rgd = _dirs(p)
    end = p.stat().st_size // 512
    with open(p, "ab") as f:
        f.write(b"\x55" * 65536)
    for table in (gd[0], rgd[0]):
        _poke(p, table * 512 + index * 4, struct.pack("<I", end))
    return p


def test_gte_beyond_capacity(tmp_path, runner):
    p = _beyond_capacity(tmp_path, 16)
    _, found = _check(runner, p)
    assert "vmdk.gte-beyond-capacity" in found
    assert "grain 16" in found["vmdk.gte-beyond-capacity"][0]["message"]


def test_gte_beyond_capacity_not_first(tmp_path, runner):
    p = _beyond_capacity(tmp_path, 20)
    _, found = _check(runner, p)
    assert "vmdk.gte-beyond-capacity" in found


def test_rgd_unreadable(tmp_path, runner):
    p = _sparse(tmp_path, size="1M", writes=())
    _poke(p, 0x30, struct.pack("<Q", p.stat().st_size // 512))   # the sector after the file
    res = vdisk(runner, "check", "--json", str(p))
    assert res.exit_code == 1
    assert "vmdk.rgd-unreadable" in {f["code"] for f in json.loads(res.stdout)["findings"]}


# -- vmdk: streamOptimized ------------------------------------------------------------------------
def _qemu_stream(tmp: Path) -> Path:
    src = _sparse(tmp, "src.vmdk")
    p = tmp / "st.vmdk"
    run(need_tool("qemu-img"), "convert", "-O", "vmdk", "-o", "subformat=streamOptimized",
        str(src), str(p))
    return p


def _markers(p: Path) -> list[tuple[int, int, int]]:
    """(sector, numSectors, type) of each metadata marker after the 128-sector header area."""
    data = p.read_bytes()
    overhead = struct.unpack_from("<Q", data, 0x40)[0]
    pos, out = overhead * 512, []
    while pos + 512 <= len(data):
        val, size, mtype = struct.unpack_from("<QII", data, pos)
        if size:
            pos += -(-(12 + size) // 512) * 512
            continue
        out.append((pos // 512, val, mtype))
        if mtype == 0 and not data[pos:].strip(b"\0"):
            break
        pos += 512 * (1 + (val if mtype in (1, 2, 3) else 0))
    return out


def _vmware_stream(tmp: Path) -> Path:
    """VMware's stream layout (v3, GD_AT_END, GT/GD/footer markers, EOS) from VMDKstream."""
    if not vc.vmdkstream_available():
        need_tool("python3-vmdkstream")
    raw = tmp / "src.raw"
    run(need_tool("qemu-img"), "convert", "-O", "raw", str(_sparse(tmp, "src.vmdk")), str(raw))
    p = tmp / "vs.vmdk"
    run("/usr/bin/python3", "-c", "import sys, VMDKstream; VMDKstream.convert_to_stream("
        "sys.argv[1], sys.argv[2])", str(raw), str(p))
    return p


def test_stream_no_eos(tmp_path, runner):
    p = _qemu_stream(tmp_path)
    assert _check(runner, p) == (0, {})
    last_grain = max(s for s, _, t in _markers(p) if t == 0) - 1   # before qemu's zero padding
    os.truncate(p, (last_grain + 1) * 512)   # the stream ends after its last grain
    rc, found = _check(runner, p)
    assert rc == 1 and set(found) == {"vmdk.stream-no-eos"}, found


def test_stream_version(tmp_path, runner):
    p = _qemu_stream(tmp_path)
    _poke(p, 4, struct.pack("<I", 1))
    rc, found = _check(runner, p)
    assert rc == 1 and set(found) == {"vmdk.stream-version"}, found


def test_stream_marker_unknown_type_and_padding(tmp_path, runner):
    p = _vmware_stream(tmp_path)
    assert _check(runner, p) == (0, {})
    gt_marker = next(s for s, _, t in _markers(p) if t == 1)
    bad = tmp_path / "pad.vmdk"
    shutil.copy(p, bad)
    _poke(bad, gt_marker * 512 + 100, b"\x01")
    rc, found = _check(runner, bad)
    assert rc == 1 and set(found) == {"vmdk.stream-marker"}
    assert found["vmdk.stream-marker"][0]["severity"] == "warning"
    _poke(p, gt_marker * 512 + 12, struct.pack("<I", 7))
    rc, found = _check(runner, p)
    assert rc == 1 and "vmdk.stream-marker" in found
    assert found["vmdk.stream-marker"][0]["severity"] == "error"
    assert "type 7" in found["vmdk.stream-marker"][0]["message"]


def test_stream_footer(tmp_path, runner):
    """The GD marker's numSectors enlarged so that the walk steps over the footer marker."""
    p = _vmware_stream(tmp_path)
    marks = _markers(p)
    gd_marker = next(s for s, _, t in marks if t == 2)
    footer_marker = next(s for s, _, t in marks if t == 3)
    _poke(p, gd_marker * 512, struct.pack("<Q", footer_marker - gd_marker + 1))
    rc, found = _check(runner, p)
    assert rc == 1 and set(found) == {"vmdk.stream-footer"}, found


# -- vmdk: snapshot chain -------------------------------------------------------------------------
def _child(tmp: Path, base_size: str = "1M", child_size: str | None = None) -> Path:
    qemu_img = need_tool("qemu-img")
    run(qemu_img, "create", "-q", "-f", "vmdk", str(tmp / "base.vmdk"), base_size)
    child = tmp / "child.vmdk"
    run(qemu_img, "create", "-q", "-f", "vmdk", "-b", "base.vmdk", "-F", "vmdk", str(child),
        *([child_size] if child_size else []))
    return child


def _replace_keeping_size(p: Path, old: bytes, new: bytes) -> None:
    """Replace inside an embedded descriptor: a longer text takes its extra bytes from the
    zero padding that follows the descriptor, so nothing after it moves."""
    data = p.read_bytes()
    assert data.count(old) == 1, (p, old)
    i = data.index(old)
    grow = len(new) - len(old)
    out = data[:i] + new + data[i + len(old):]
    if grow > 0:
        pad = out.index(b"\0" * grow, i + len(new))
        out = out[:pad] + out[pad + grow:]
    assert len(out) == len(data) or grow < 0
    p.write_bytes(out)


def _parent_cid_line(p: Path) -> bytes:
    """The parentCID line without its newline (qemu writes the CID in as few hex digits
    as it takes: 7 in one case of 16)."""
    m = re.search(rb"parentCID=[0-9a-fA-F]+", p.read_bytes())
    assert m is not None
    return m.group(0)


def test_parent_hint_orphan(tmp_path, runner):
    child = _child(tmp_path)
    assert _check(runner, child) == (0, {})
    _replace_keeping_size(child, _parent_cid_line(child), b"parentCID=ffffffff")
    rc, found = _check(runner, child)
    assert rc == 1 and set(found) == {"vmdk.parent-hint-orphan"}, found


def test_parent_missing_hint_and_file(tmp_path, runner):
    child = _child(tmp_path)
    gone = tmp_path / "gone.vmdk"
    shutil.copy(child, gone)
    _replace(child, b"parentFileNameHint", b"#arentFileNameHint")
    rc, found = _check(runner, child)
    assert rc == 1 and set(found) == {"vmdk.parent-missing"}, found
    os.unlink(tmp_path / "base.vmdk")
    rc, found = _check(runner, gone)
    assert rc == 1 and set(found) == {"vmdk.parent-missing"}, found
    assert "base.vmdk" in found["vmdk.parent-missing"][0]["message"]


@pytest.mark.parametrize("base,child", [("1M", "2M"), ("2M", "1M")])
def test_parent_size(tmp_path, runner, base, child):
    c = _child(tmp_path, base, child)
    rc, found = _check(runner, c)
    assert rc == 1 and set(found) == {"vmdk.parent-size"}, found


def test_parent_unreadable(tmp_path, runner):
    child = _child(tmp_path)
    (tmp_path / "base.vmdk").write_bytes(b"KDMV" + b"\xff" * 508)
    rc, found = _check(runner, child)
    assert rc == 1 and set(found) == {"vmdk.parent-unreadable"}, found


# -- vmdk: leftovers of interrupted runs ------------------------------------------------------------
def test_leftover_temp(tmp_path, runner):
    p = _sparse(tmp_path, size="1M", writes=())
    (tmp_path / ".d.vmdk.vdisk-tmp-4000000").write_bytes(b"half a copy")
    (tmp_path / ".other.vmdk.vdisk-tmp-4000000").write_bytes(b"not ours")
    rc, found = _check(runner, p)
    assert rc == 1 and set(found) == {"vmdk.leftover-temp"}, found
    assert len(found["vmdk.leftover-temp"]) == 1


def _crash_until(args: list[str], cwd: Path, journal: Path, env: dict[str, str]) -> None:
    """Kill `vdisk args` at its 1st, 2nd, ... file-system mutation until it leaves a complete
    (non-empty) `journal`."""
    pristine = {p.name: p.read_bytes() for p in cwd.iterdir() if p.is_file()}
    for k in range(1, 60):
        r = run_vdisk(args, cwd, dict(env, VDISK_CRASH_AT=str(k)))
        assert r.returncode < 0, f"finished before leaving a journal: {r.stderr}"
        if journal.exists() and journal.stat().st_size:
            return
        for p in cwd.iterdir():
            if p.name not in pristine:
                p.unlink()
        for name, data in pristine.items():
            (cwd / name).write_bytes(data)
    raise AssertionError("no kill point left a journal")


def test_interrupted_grow(tmp_path, runner):
    qemu_img = need_tool("qemu-img")
    work = tmp_path / "w"
    work.mkdir()
    p = _flat(work, "g.vmdk")
    run(need_tool("qemu-io"), "-f", "vmdk", "-c", "write -P 0x3c 0 64k", str(p))
    ref = tmp_path / "ref.raw"
    run(qemu_img, "convert", "-O", "raw", str(p), str(ref))
    _crash_until(["grow", "g.vmdk", "--size", "2M"], work, work / ".g.vmdk.vdisk-journal", {})
    rc, found = _check(runner, p)
    assert rc == 1 and "vmdk.interrupted-grow" in found, found
    assert found["vmdk.interrupted-grow"][0]["fixable"]
    assert vdisk(runner, "check", "--repair", str(p)).exit_code == 0
    assert _check(runner, p) == (0, {})
    assert not (work / ".g.vmdk.vdisk-journal").exists()
    info = json.loads(run(qemu_img, "info", "--output=json", str(p)).stdout)
    assert info["virtual-size"] == MiB
    assert run(qemu_img, "compare", "-f", "vmdk", "-F", "raw", str(p), str(ref),
               check=False).returncode == 0


def test_interrupted_grow_with_torn_journal(tmp_path, runner):
    p = _flat(tmp_path, "g.vmdk")
    (tmp_path / ".g.vmdk.vdisk-journal").write_bytes(b"")   # killed before its first write
    rc, found = _check(runner, p)
    assert rc == 1 and "vmdk.interrupted-grow" in found
    assert vdisk(runner, "check", "--repair", str(p)).exit_code == 0
    assert _check(runner, p) == (0, {})


def test_interrupted_edit(tmp_path, runner):
    qemu_img = need_tool("qemu-img")
    need_tool("mkfs.fat")
    work = tmp_path / "w"
    work.mkdir()
    raw = tmp_path / "v.raw"
    with open(raw, "wb") as f:
        f.truncate(8 * MiB)
    run("mkfs.fat", "-F", "16", "-s", "1", "-n", "EDITVOL", str(raw))
    p = work / "e.vmdk"
    run(qemu_img, "convert", "-O", "vmdk", "-o", "subformat=monolithicFlat", str(raw), str(p))
    (work / "big.bin").write_bytes(os.urandom(MiB))
    _crash_until(["fs", "put", "e.vmdk", "big.bin", "/BIG.BIN"], work,
                 work / ".e.vmdk.vdisk-journal-edit", {})
    rc, found = _check(runner, p)
    assert rc == 1 and "vmdk.pending-journal" in found, found
    assert found["vmdk.pending-journal"][0]["fixable"]
    assert vdisk(runner, "check", "--repair", str(p)).exit_code == 0
    assert _check(runner, p) == (0, {})
    assert run(qemu_img, "compare", "-f", "vmdk", "-F", "raw", str(p), str(raw),
               check=False).returncode == 0
    assert run("fsck.fat", "-n", str(work / "e-flat.vmdk"), check=False).returncode == 0


# -- dump store -----------------------------------------------------------------------------------
def _raw_header(version: int = 1, header_size: int = 512, reserved: bytes = b"",
                slot_sectors: int = 2048, slot_count: int = 7, next_slot: int = 0) -> bytes:
    body = b"IPVADUMP" + struct.pack("<HHIII", version, header_size, slot_sectors, slot_count,
                                     next_slot) + reserved
    body = body.ljust(0x1FC, b"\0")
    return body + struct.pack("<I", crc32c(body))


def _store(tmp: Path, header: bytes | None, seqs: tuple[int, ...] = (1, 2, 3)) -> str:
    b = StoreBuilder(8 * MiB)
    for slot, seq in enumerate(seqs):
        b.record(slot, seq)
    if header is not None:
        b.raw(0, header)
    return b.write(tmp / "hd-dump.img")


def _dump(runner, disk: str) -> tuple[int, dict[str, list[dict]]]:
    return _findings(runner, "dump", "list", disk)


def _init_repairs(runner, disk: str) -> None:
    """`vdisk dump init` rewrites the header; the builder's own header is what it must be."""
    assert vdisk(runner, "dump", "init", disk, "--yes").exit_code == 0
    assert Path(disk).read_bytes()[:512] == store_header(2048, 7, 0)
    assert _dump(runner, disk) == (0, {})


@pytest.mark.parametrize("code,header", [
    ("dump.header-next-slot", _raw_header(next_slot=7)),
    ("dump.header-version", _raw_header(version=2)),
    ("dump.header-version", _raw_header(header_size=256)),
])
def test_dump_header_errors_scan_the_slots(tmp_path, runner, code, header):
    disk = _store(tmp_path, header)
    rc, found = _dump(runner, disk)
    assert rc == 1 and code in found and found[code][0]["fixable"], found
    assert "dump.slots-scanned" in found       # the header is not trusted: records by scan
    assert "3 record(s)" in found["dump.slots-scanned"][0]["message"]
    _init_repairs(runner, disk)


def test_dump_header_reserved(tmp_path, runner):
    disk = _store(tmp_path, _raw_header(next_slot=3, reserved=b"\x01"))
    rc, found = _dump(runner, disk)
    assert rc == 1 and set(found) == {"dump.header-reserved"}, found
    assert found["dump.header-reserved"][0]["fixable"]
    _init_repairs(runner, disk)


def test_dump_next_slot_mismatch(tmp_path, runner):
    disk = _store(tmp_path, store_header(2048, 7, 5))   # newest (seq 3) is in slot 2
    rc, found = _dump(runner, disk)
    assert rc == 0 and set(found) == {"dump.next-slot-mismatch"}, found
    assert found["dump.next-slot-mismatch"][0]["fixable"]
    _init_repairs(runner, disk)


def test_dump_sequence_duplicate(tmp_path, runner):
    disk = _store(tmp_path, store_header(2048, 7, 3), seqs=(1, 2, 2))
    rc, found = _dump(runner, disk)
    assert rc == 1 and "dump.sequence-duplicate" in found, found
    assert "sequence 2 appears in 2" in found["dump.sequence-duplicate"][0]["message"]


def test_dump_slot_unrecognised(tmp_path, runner):
    b = StoreBuilder(8 * MiB)
    b.record(0, 1)
    b.raw(slot_offset(3, 2048), b"not a record header".ljust(SECTOR, b"\xee"))
    disk = b.header().write(tmp_path / "hd-dump.img")
    rc, found = _dump(runner, disk)
    assert rc == 0 and set(found) == {"dump.slot-unrecognised"}, found
    assert "slot 3" in found["dump.slot-unrecognised"][0]["message"]


# -- flash ----------------------------------------------------------------------------------------
def test_flash_too_small(tmp_path, runner):
    p = tmp_path / "hd-flash.vmdk"
    run(need_tool("qemu-img"), "create", "-q", "-f", "vmdk", str(p), "32M")
    rc, found = _findings(runner, "flash", "info", str(p))
    assert rc == 1 and set(found) == {"flash.too-small"}, found


def test_flash_data_beyond_region(tmp_path, runner):
    p = tmp_path / "hd-flash.vmdk"
    run(need_tool("qemu-img"), "create", "-q", "-f", "vmdk", str(p), "100M")
    run(need_tool("qemu-io"), "-f", "vmdk", "-c", "write -P 0x5a 70M 64k", str(p))
    rc, found = _findings(runner, "flash", "info", str(p))
    assert rc == 0 and set(found) == {"flash.data-beyond-region"}, found
    assert found["flash.data-beyond-region"][0]["message"].startswith("65536 bytes")


# -- firmware and boot ----------------------------------------------------------------------------
def test_fw_image_size(tmp_path, runner):
    p = tmp_path / "ipva.bin"
    p.write_bytes(FwImage(standard().sections, image_size=100).to_bytes())
    rc, found = _findings(runner, "verify", str(p))
    assert rc == 1 and "fw.image-size" in found, found
    assert "100" in found["fw.image-size"][0]["message"]


def test_boot_chain_long_is_restored(tmp_path, runner):
    fw = standard(20).to_bytes()
    fw_file = tmp_path / "ipva.bin"
    fw_file.write_bytes(fw)
    disk = make_raw_boot(str(tmp_path / "boot.img"), fw)
    Fat16(disk).set_size(len(fw) - 3 * 2048)    # the chain keeps 3 clusters more
    rc, found = _findings(runner, "verify", disk)
    assert rc == 1 and "boot.chain-long" in found, found
    assert found["boot.chain-long"][0]["severity"] == "warning"
    r = vdisk(runner, "boot", "restore", disk, "--firmware", str(fw_file), "--yes")
    assert r.exit_code == 0, r.output
    assert _findings(runner, "verify", disk) == (0, {})
    out = tmp_path / "back.bin"
    run("mcopy", "-n", "-i", f"{disk}@@{PART_OFFSET}", "::IPVA.BIN", str(out))
    assert out.read_bytes() == fw
    part = tmp_path / "part.img"
    with open(disk, "rb") as f, open(part, "wb") as g:
        f.seek(PART_OFFSET)
        shutil.copyfileobj(f, g)
    assert run("fsck.fat", "-n", str(part), check=False).returncode == 0


# -- bundle and vmx -------------------------------------------------------------------------------
def _bundle(tmp: Path, vmx: str) -> Path:
    folder = tmp / "ipva"
    folder.mkdir()
    (folder / "ipva.vmx").write_bytes(vmx.encode())
    return folder


def test_bundle_disk_unreadable(tmp_path, runner):
    b = _bundle(tmp_path, WORKSTATION_VMX)
    (b / "hd-cf.vmdk").write_bytes(b"KDMV" + b"\xff" * 508)
    rc, found = _findings(runner, "bundle", "check", str(b))
    assert rc == 1 and "bundle.disk-unreadable" in found, found
    assert found["bundle.disk-unreadable"][0]["path"].endswith("hd-cf.vmdk")


def test_bundle_leftover_temp(tmp_path, runner):
    b = _bundle(tmp_path, WORKSTATION_VMX)
    (b / ".hd-boot.vmdk.vdisk-tmp-4000000").write_bytes(b"x")
    rc, found = _findings(runner, "bundle", "check", str(b))
    assert rc == 1 and "bundle.leftover-temp" in found, found


def test_vmx_duplicate_key(tmp_path, runner):
    b = _bundle(tmp_path, WORKSTATION_VMX + 'numvcpus = "1"\r\nnumvcpus = "1"\r\n')
    rc, found = _findings(runner, "bundle", "check", str(b))
    assert rc == 1 and "vmx.duplicate-key" in found, found
    assert "numvcpus" in found["vmx.duplicate-key"][0]["message"]


def test_vmx_memsize_missing(tmp_path, runner):
    vmx = WORKSTATION_VMX.replace('memsize = "64"\r\n', "")
    assert vmx != WORKSTATION_VMX
    rc, found = _findings(runner, "bundle", "check", str(_bundle(tmp_path, vmx)))
    assert rc == 1 and "vmx.memsize-missing" in found, found
    assert "vmx.memsize-low" not in found

