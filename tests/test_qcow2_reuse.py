"""Free clusters are reused as qemu reuses them: the lowest clusters whose refcount is 0
(inside the file) go first, for data, L2 tables, refcount blocks and the refcount table,
before the file grows. Images with free clusters are made by qemu-io (`discard`), by
`qemu-img check -r all` (leaks freed) and by the independent tests/qcow2builder.py; the
oracle is qemu-img check, qemu-img compare with a raw model, and where qemu makes the same
change, the very host offsets qemu chooses."""
from __future__ import annotations

import json
import random
import shutil
import struct
from pathlib import Path

import pytest
from conftest import need_tool, run, vdisk
from qcow2builder import Qcow2Builder
from test_qcow2_write import oracle_clean, qemu_image, same, to_raw

from vdisk_tool.formats import qcow2 as q
from vdisk_tool.image.edit import edit_image

MiB = 1 << 20


def _img() -> str:
    return need_tool("qemu-img")


def _map(p: Path) -> list[dict]:
    return json.loads(run(_img(), "map", "--output=json", str(p)).stdout)


def _write(p: Path, model: Path, writes: list[tuple[int, bytes]]) -> None:
    with edit_image(str(p)) as disk, open(model, "r+b") as f:
        for off, data in writes:
            disk.write_at(off, data)
            f.seek(off)
            f.write(data)


def _qemu_write(p: Path, writes: list[tuple[int, int, int]]) -> None:
    run(need_tool("qemu-io"), "-f", "qcow2",
        *sum((["-c", f"write -P {pat} {off} {n}"] for off, n, pat in writes), []), str(p))


@pytest.mark.parametrize("opts", ["", "cluster_size=4096", "cluster_size=4096,refcount_bits=1",
                                  "extended_l2=on", "compat=0.10"])
def test_discarded_clusters_are_reused_where_qemu_reuses_them(tmp_path: Path, opts: str) -> None:
    """qemu-io discards 2 MiB; the same writes by qemu-io (on a copy) and by vdisk land in
    the same host clusters, and the file does not grow. (Each write fits the holes: qemu
    takes a write's clusters as one run, vdisk cluster by cluster, so in a hole smaller
    than a write they would differ.)"""
    p = qemu_image(tmp_path, "d.qcow2", opts, writes=("write -P 0x11 0 4M", "discard 1M 2M"))
    qemu_copy = tmp_path / "q.qcow2"
    shutil.copy(p, qemu_copy)
    model = to_raw(p, tmp_path / "model.raw")
    size_before = p.stat().st_size
    writes = [(5 * MiB, 65536, 0x22), (1 * MiB + 65536, 4096, 0x23), (7 * MiB + 512, 512, 0x24)]
    _qemu_write(qemu_copy, writes)
    _write(p, model, [(off, bytes([pat]) * n) for off, n, pat in writes])
    oracle_clean(p)
    same(p, model)
    assert p.stat().st_size == size_before
    # extended L2: vdisk allocates whole clusters, qemu the subclusters written; the host
    # cluster of each write is the same
    for off, _, _ in writes:
        assert _host_of(p, off) // 4096 == _host_of(qemu_copy, off) // 4096, off


def _host_of(p: Path, off: int) -> int:
    """Where qemu-img map says virtual byte `off` is stored."""
    for e in _map(p):
        if e["start"] <= off < e["start"] + e["length"]:
            assert "offset" in e and e["data"], e
            return e["offset"] + off - e["start"]
    raise AssertionError(off)


def test_leaks_freed_by_qemu_img_check_are_reused(tmp_path: Path) -> None:
    """A lazy-refcount image killed after writes leaves its refcounts stale; `qemu-img
    check -r all` rebuilds them at the end of the file and frees the old structure
    (clusters 1 and 2); vdisk's next allocations take those first."""
    p = qemu_image(tmp_path, "l.qcow2", "lazy_refcounts=on,cluster_size=4096", writes=())
    res = run(need_tool("qemu-io"), "-f", "qcow2", "-c", "write -P 0x61 0 1M", "-c",
              "discard 256k 512k", "-c", "sigraise 9", str(p), check=False)
    assert res.returncode != 0
    run(_img(), "check", "-q", "-r", "all", str(p), check=False)
    oracle_clean(p)
    model = to_raw(p, tmp_path / "model.raw")
    size_before = p.stat().st_size
    _write(p, model, [(3 * MiB + k * 8192, bytes([0x30 + k]) * 4096) for k in range(16)])
    oracle_clean(p)
    same(p, model)
    # the new L2 table (2..4 MiB) and the first data cluster took the freed clusters 1, 2
    l1_off, _ = _refcount_table(p)
    assert struct.unpack_from(">Q", p.read_bytes(), l1_off + 8)[0] & q.L1E_OFFSET_MASK == 4096
    assert _host_of(p, 3 * MiB) == 8192
    assert p.stat().st_size == size_before + 15 * 4096


def _holed(path: Path, holes: tuple[int, ...], **kw) -> dict:
    """A builder image (512-byte clusters, 16-bit refcounts: one block covers 256 clusters)
    of 240 data clusters, those of virtual clusters `holes` unreferenced with refcount 0."""
    data = {vc: bytes([vc % 250 + 1]) * 512 for vc in range(240)}
    where = Qcow2Builder(size=1 * MiB, cluster_bits=9, data=data, **kw).build(path)
    b = Qcow2Builder(size=1 * MiB, cluster_bits=9, data=data,
                     l2_override={vc: 0 for vc in holes},
                     refcount_delta={where["data"][vc]: -1 for vc in holes}, **kw)
    b.build(path)
    return where


def _refcount_table(p: Path) -> tuple[int, list[int]]:
    """(L1 table offset, refcount table entries) from the header, read as the spec says."""
    raw = p.read_bytes()
    l1_off, rt_off, rt_clusters = struct.unpack_from(">Q", raw, 40)[0], \
        *struct.unpack_from(">QI", raw, 48)
    cs = 1 << struct.unpack_from(">I", raw, 20)[0]
    return l1_off, list(struct.unpack_from(f">{rt_clusters * cs // 8}Q", raw, rt_off))


def test_holes_take_data_and_l2_tables_lowest_first(tmp_path: Path) -> None:
    p = tmp_path / "h.qcow2"
    where = _holed(p, (10, 100, 101))
    oracle_clean(p)
    model = to_raw(p, tmp_path / "model.raw")
    size_before = p.stat().st_size
    # a write past the mapped range needs an L2 table and a data cluster: both holes
    _write(p, model, [(512 * 1024, b"\x7a" * 512), (10 * 512 + 7, b"\x7b" * 100)])
    oracle_clean(p)
    same(p, model)
    assert p.stat().st_size == size_before
    # the L2 table went to the lowest hole, the data after it, vc 10 to the third
    holes = sorted(where["data"][vc] * 512 for vc in (10, 100, 101))
    l1_off, _ = _refcount_table(p)
    l1 = struct.unpack_from(">Q", p.read_bytes(), l1_off + 16 * 8)[0]
    assert l1 & q.L1E_OFFSET_MASK == holes[0]
    offsets = {e["start"]: e.get("offset") for e in _map(p)}
    assert offsets[512 * 1024] == holes[1] and offsets[10 * 512] == holes[2]


def test_a_new_refcount_block_takes_a_hole_as_qemu_places_it(tmp_path: Path, runner) -> None:
    """Growing to 64 MiB moves the L1 table to 32 new clusters at the end, past what the
    one refcount block covers; the new block goes into the lowest hole (counted by the
    first block), exactly where qemu-img resize puts it."""
    p = tmp_path / "h.qcow2"
    _holed(p, (10, 100))
    oracle_clean(p)
    qemu_copy = tmp_path / "q.qcow2"
    shutil.copy(p, qemu_copy)
    run(_img(), "resize", "-q", str(qemu_copy), "64M")
    assert vdisk(runner, "grow", str(p), "--size", "64M").exit_code == 0
    oracle_clean(p)
    same(p, qemu_copy, "qcow2")
    assert _refcount_table(p) == _refcount_table(qemu_copy)
    assert p.stat().st_size == qemu_copy.stat().st_size


def test_the_refcount_table_grows_in_an_image_with_holes(tmp_path: Path) -> None:
    """64-bit refcounts in 512-byte clusters: a block covers 64 clusters, the one-cluster
    table 64 blocks (2 MiB of file). With a hole of 4 clusters, writing all 2 MiB of the
    image fills the hole first, then needs so many refcount blocks that the table moves
    to 2 clusters."""
    p = tmp_path / "t.qcow2"
    data = {vc: bytes([vc % 250 + 1]) * 512 for vc in range(56)}
    where = Qcow2Builder(size=2 * MiB, cluster_bits=9, refcount_order=6, data=data).build(p)
    holes = (20, 21, 22, 23)
    Qcow2Builder(size=2 * MiB, cluster_bits=9, refcount_order=6, data=data,
                 l2_override={vc: 0 for vc in holes},
                 refcount_delta={where["data"][vc]: -1 for vc in holes}).build(p)
    oracle_clean(p)
    model = to_raw(p, tmp_path / "model.raw")
    # a 2 MiB write: some 4100 new clusters, past the 64 * 64 clusters the table reaches
    rnd = random.Random(3)
    _write(p, model, [(0, rnd.randbytes(2 * MiB))])
    oracle_clean(p)
    same(p, model)
    _, table = _refcount_table(p)
    raw = p.read_bytes()
    assert struct.unpack_from(">I", raw, 56)[0] == 2
    assert len([e for e in table if e]) > 64
    for vc in holes:                              # the holes hold the first new data
        assert _host_of(p, vc * 512) == where["data"][vc] * 512


def test_find_zero_entry_of_every_width() -> None:
    rnd = random.Random(1)
    for order in range(7):
        for _ in range(50):
            blk = bytearray(64)
            n = len(blk) * 8 >> order
            for i in range(n):
                if rnd.random() < 0.9:
                    q.refcount_set(blk, i, order, 1)
            start = rnd.randrange(n)
            want = next((i for i in range(start, n) if q.refcount_get(blk, i, order) == 0), None)
            assert q.refcount_find_zero(blk, start, order) == want
    blk = bytearray(8)
    blk[1] = 1                  # 16-bit entry 0 is 0x0001; a zero pair straddles 1..2
    blk[3] = 2
    assert q.refcount_find_zero(blk, 0, 4) == 2


def test_a_cluster_in_use_with_refcount_0_is_never_handed_out(tmp_path: Path) -> None:
    """qemu-io discards leave free clusters; then the refcount of a cluster in use (the
    lowest data cluster) is set to 0 by hand. A write must not take that cluster: with
    refcounts that miss a reference, new clusters go to the end of the file, and every
    byte that was there reads back unchanged."""
    qemu_io = need_tool("qemu-io")
    img = tmp_path / "c.qcow2"
    run(_img(), "create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", str(img), "8M")
    run(qemu_io, "-f", "qcow2", "-c", "write -P 0x61 0 64k", "-c", "write -P 0x62 1M 64k",
        "-c", "discard 1M 64k", str(img))
    data = bytearray(img.read_bytes())
    cs = 4096
    first = min(e["offset"] for e in _map(img) if e.get("data") and "offset" in e)
    reft = struct.unpack_from(">Q", data, 48)[0]                 # refcount_table_offset
    block = struct.unpack_from(">Q", data, reft)[0] & q.REFT_OFFSET_MASK
    struct.pack_into(">H", data, block + 2 * (first // cs), 0)   # 16-bit refcounts
    img.write_bytes(bytes(data))
    model = tmp_path / "model.raw"
    run(_img(), "convert", "-O", "raw", str(img), str(model))
    size = img.stat().st_size
    _write(img, model, [(4 << 20, b"\x63" * 8192)])
    assert img.stat().st_size > size                               # appended, not reused
    same(img, model)
    assert to_raw(img, tmp_path / "after.raw").read_bytes()[:65536] == b"\x61" * 65536
