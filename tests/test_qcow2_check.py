"""`vdisk check` of qcow2 images against `qemu-img check`: every finding code of
specs/qcow2.md is caused (by qemu-io killed mid-write, by bytes poked into qemu-img's
images, or by tests/qcow2builder.py) and asserted; every fixable one is repaired by
`vdisk check --repair`, after which qemu-img check is clean and the content unchanged."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from conftest import need_tool, run, vdisk
from qcow2builder import COPIED, Qcow2Builder

MiB = 1 << 20


def _img() -> str:
    return need_tool("qemu-img")


def _qemu(tmp: Path, name: str = "d.qcow2", opts: str = "", writes=("write -P 0x11 0 64k",
                                                                    "write -P 0x22 1M 64k")) -> Path:
    p = tmp / name
    run(_img(), "create", "-q", "-f", "qcow2", *(["-o", opts] if opts else []), str(p), "8M")
    if writes:
        run(need_tool("qemu-io"), "-f", "qcow2", *sum((["-c", w] for w in writes), []), str(p))
    return p


def _codes(runner, p: Path) -> tuple[int, dict[str, dict]]:
    res = vdisk(runner, "check", str(p), "--json")
    doc = json.loads(res.stdout)
    return res.exit_code, {f["code"]: f for f in doc["findings"]}


def _header(p: Path) -> dict:
    raw = p.read_bytes()[:72]
    f = struct.unpack(">4sIQIIQIIQQIIQ", raw)
    return {"cluster_bits": f[4], "l1_offset": f[8], "reftable": f[9]}


def _l2_offset(p: Path) -> int:
    h = _header(p)
    with open(p, "rb") as f:
        f.seek(h["l1_offset"])
        return struct.unpack(">Q", f.read(8))[0] & 0x00FFFFFFFFFFFE00


def _poke(p: Path, off: int, data: bytes) -> None:
    with open(p, "r+b") as f:
        f.seek(off)
        f.write(data)


def _repaired(runner, p: Path, reference: Path) -> None:
    res = vdisk(runner, "check", "--repair", str(p))   # conftest runs qemu-img check after it
    assert res.exit_code == 0, res.output
    assert _codes(runner, p) == (0, {})
    assert run(_img(), "compare", str(p), str(reference), check=False).returncode == 0


def test_clean_images_are_clean(tmp_path: Path, runner) -> None:
    for opts in ("compat=0.10", "refcount_bits=2,cluster_size=512", "extended_l2=on",
                 "preallocation=full"):
        p = _qemu(tmp_path, f"c{len(opts)}.qcow2", opts)
        run(_img(), "snapshot", "-c", "s1", str(p))
        run(need_tool("qemu-io"), "-f", "qcow2", "-c", "write -P 0x33 1M 4k", str(p))
        assert _codes(runner, p) == (0, {}), opts


def test_dirty_after_a_kill(tmp_path: Path, runner) -> None:
    p = _qemu(tmp_path, opts="lazy_refcounts=on", writes=())
    run(need_tool("qemu-io"), "-f", "qcow2", "-c", "write -P 0x5 0 2M", "-c", "sigraise 9", str(p),
        check=False)
    assert run(_img(), "check", str(p), check=False).returncode == 2   # corruptions
    code, found = _codes(runner, p)
    assert code == 1 and found["qcow2.dirty"]["fixable"] and "qcow2.refcount-error" in found
    ref = tmp_path / "ref.raw"
    run(_img(), "convert", "-O", "raw", str(p), str(ref))
    _repaired(runner, p, ref)
    assert not json.loads(run(_img(), "info", "--output=json", str(p)).stdout)["dirty-flag"]


def test_refcount_leak_and_error(tmp_path: Path, runner) -> None:
    for delta, code, qemu_rc in ((+1, "qcow2.refcount-leak", 2), (-1, "qcow2.refcount-error", 2)):
        b = Qcow2Builder(data={0: b"\x41" * 65536, 3: b"\x42" * 512})
        where = b.build(tmp_path / "probe.qcow2")
        b.refcount_delta = {where["data"][0]: delta}
        p = tmp_path / f"{code}.qcow2"
        b.build(p)
        # qemu also judges the COPIED flag against the damaged refcount: 2 either way
        assert run(_img(), "check", str(p), check=False).returncode == qemu_rc
        rc, found = _codes(runner, p)
        assert rc == 1 and found[code]["fixable"], found
        good = tmp_path / "good.qcow2"
        Qcow2Builder(data=b.data).build(good)
        _repaired(runner, p, good)


def test_copied_flag(tmp_path: Path, runner) -> None:
    p = _qemu(tmp_path)
    ref = tmp_path / "ref.raw"
    run(_img(), "convert", "-O", "raw", str(p), str(ref))
    l2 = _l2_offset(p)
    with open(p, "rb") as f:
        f.seek(l2)
        entry = struct.unpack(">Q", f.read(8))[0]
    _poke(p, l2, struct.pack(">Q", entry & ~COPIED))
    assert run(_img(), "check", str(p), check=False).returncode == 2
    rc, found = _codes(runner, p)
    assert rc == 1 and found["qcow2.copied-flag"]["fixable"]
    _repaired(runner, p, ref)


def test_corrupt_bit(tmp_path: Path, runner) -> None:
    p = _qemu(tmp_path)
    ref = tmp_path / "ref.raw"
    run(_img(), "convert", "-O", "raw", str(p), str(ref))
    _poke(p, 72, struct.pack(">Q", 2))
    rc, found = _codes(runner, p)
    assert rc == 1 and found["qcow2.corrupt"]["fixable"]
    before = p.read_bytes()
    (tmp_path / "x.txt").write_text("x")
    res = vdisk(runner, "grow", str(p), "--size", "16M")
    assert res.exit_code == 3 and "corrupt" in res.stderr, res.output
    assert p.read_bytes() == before
    _repaired(runner, p, ref)


def test_refcount_overflow(tmp_path: Path, runner) -> None:
    """1-bit refcounts and two L2 entries naming the same data cluster."""
    b = Qcow2Builder(refcount_order=0, data={0: b"\x61" * 65536})
    where = b.build(tmp_path / "probe.qcow2")
    b.l2_override = {1: (where["data"][0] << 16) | COPIED}
    p = tmp_path / "o.qcow2"
    b.build(p)
    rc, found = _codes(runner, p)
    assert rc == 1 and not found["qcow2.refcount-overflow"]["fixable"]
    res = vdisk(runner, "check", "--repair", str(p))
    assert res.exit_code == 1 and "nothing can be repaired" in res.stdout


@pytest.mark.parametrize("case,code", [
    ("l2-past-eof", "qcow2.past-eof"), ("data-past-eof", "qcow2.past-eof"),
    ("data-misaligned", "qcow2.misaligned"), ("data-on-reftable", "qcow2.metadata-overlap"),
    ("data-on-l1", "qcow2.metadata-overlap"), ("both-alloc-and-zero", "qcow2.subcluster-bitmap"),
    ("alloc-without-offset", "qcow2.subcluster-bitmap")])
def test_unfixable_damage(tmp_path: Path, runner, case: str, code: str) -> None:
    cs = 1 << 16
    ext = case in ("both-alloc-and-zero", "alloc-without-offset")
    b = Qcow2Builder(size=(1 << 30) if case == "l2-past-eof" else 8 * MiB,
                     data={0: b"\x71" * 65536}, extended_l2=ext)
    if case == "data-past-eof":
        b.l2_override = {2: (100 * cs) | COPIED}
    elif case == "data-misaligned":
        b.l2_override = {2: (5 * cs + 512) | COPIED}
    elif case == "data-on-reftable":
        b.l2_override = {2: cs | COPIED}            # cluster 1: the refcount table
    elif case == "data-on-l1":
        b.l2_override = {2: 3 * cs | COPIED}        # cluster 3: the L1 table
    elif case == "both-alloc-and-zero":
        b.bitmap_override = {0: 0x00000001_00000001}
    elif case == "alloc-without-offset":
        b.l2_override, b.bitmap_override = {2: 0}, {2: 0x3}
    p = tmp_path / f"{case}.qcow2"
    where = b.build(p)
    if case == "l2-past-eof":
        _poke(p, where["l1"] * cs + 8, struct.pack(">Q", (500 * cs) | COPIED))
    assert run(_img(), "check", str(p), check=False).returncode != 0 or ext
    rc, found = _codes(runner, p)
    assert rc == 1 and code in found and not found[code]["fixable"], found
    res = vdisk(runner, "check", "--repair", str(p))
    assert res.exit_code == 1


def test_backing_findings(tmp_path: Path, runner) -> None:
    (tmp_path / "sub").mkdir()
    Qcow2Builder(backing="gone.qcow2").build(tmp_path / "missing.qcow2")
    Qcow2Builder().build(tmp_path / "base.qcow2")
    Qcow2Builder(backing="../base.qcow2").build(tmp_path / "sub" / "outside.qcow2")
    (tmp_path / "bad.qcow2").write_bytes(b"QFI\xfb" + bytes(100))
    Qcow2Builder(backing="bad.qcow2").build(tmp_path / "unreadable.qcow2")
    for name, code in (("missing.qcow2", "qcow2.backing-missing"),
                       ("sub/outside.qcow2", "qcow2.backing-outside"),
                       ("unreadable.qcow2", "qcow2.backing-unreadable")):
        rc, found = _codes(runner, tmp_path / name)
        assert rc == 1 and code in found, (name, found)
