"""SIGKILL at >= 20 points of every in-place edit path not covered by test_crash_all.py
(which runs `fs put` on monolithicSparse — new grains — and monolithicFlat): an overwrite
of allocated grains only, a snapshot child whose grain table was never allocated, a split
sparse disk whose edit spans both extent files, and a raw image.

Each killed run's journal is rolled back as the next writer would (crashharness); the
folder must then be byte-identical to the old one, or hold the complete new result judged
by qemu-img check, fsck.fat -n and mtools. The parent of the child must never change.
"""
from __future__ import annotations

import random
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import need_tool, run
from crashharness import crash_test, run_vdisk
from test_crash_all import FILES, MIB, _cat, _fat_disk, _fat_result, _finish, _tree
from test_inplace import _drop_table

from vdisk_tool.image.disk import open_image

POINTS = 22


@pytest.fixture(autouse=True)
def one_page_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every page its own batch (journal, fsync, write): more kill points, and each killed
    run's journal holds several batches."""
    monkeypatch.setenv("VDISK_JOURNAL_BATCH_BYTES", "4096")


def _enough(res) -> None:
    assert res.total_points >= 20, f"only {res.total_points} kill points"
DATA = random.Random(9).randbytes(150_000)


def _fat_raw(raw: Path, mib: int, start_lba: int, files: dict[str, bytes]) -> None:
    """MBR (sfdisk) with one FAT16 partition from `start_lba` (mkfs.fat), filled by mtools."""
    from fatutil import mtools_fill
    with open(raw, "wb") as f:
        f.truncate(mib * MIB)
    run("sfdisk", "-q", str(raw), input=f"start={start_lba}, type=e\n")
    run("mkfs.fat", "-F", "16", "-s", "4", "-n", "INPLACE", "--offset", str(start_lba), str(raw))
    mtools_fill(raw, start_lba * 512, files, raw.parent)


def _put_result(name: str, extra: Callable[[Path], bool] = lambda f: True) -> Callable[[Path], bool]:
    def want(raw: Path, off: int) -> bool:
        return (_cat(raw, off, "/NEW.BIN") == DATA
                and _cat(raw, off, "/FILE.BIN") == FILES["FILE.BIN"])
    judge = _fat_result(name, want)
    return lambda folder: judge(folder) and extra(folder)


def test_overwrite_of_allocated_grains(tmp_path: Path) -> None:
    """`fs mv` rewrites directory entries only: every write lands in allocated grains."""
    sizes: dict[str, int] = {}

    def make(folder: Path) -> None:
        _fat_disk(folder)
        sizes["d.vmdk"] = (folder / "d.vmdk").stat().st_size

    def want(raw: Path, off: int) -> bool:
        names = _tree(raw, off)
        return ("Sub Directory/README.TXT" in names and "README.TXT" not in names
                and _cat(raw, off, "/Sub Directory/README.TXT") == FILES["README.TXT"])

    judge = _fat_result("d.vmdk", want)
    res = crash_test(make, ["fs", "mv", "d.vmdk", "/README.TXT", "/Sub Directory/README.TXT"],
                     lambda f: judge(f) and (f / "d.vmdk").stat().st_size == sizes["d.vmdk"],
                     tmp_path, points=POINTS)
    _enough(res)
    _finish("fs mv (sparse, overwrite in place)", res)


def test_snapshot_child_with_a_never_allocated_grain_table(tmp_path: Path) -> None:
    """The volume lies in the second grain table's range (32-64 MiB), whose directory
    entry in the child is 0: the edit allocates a grain table; the parent stays as it was."""
    qemu_img = need_tool("qemu-img")

    def make(folder: Path) -> None:
        raw = folder.parent / "base.raw"
        if not raw.exists():
            _fat_raw(raw, 64, 36 * 2048, FILES)
        run(qemu_img, "convert", "-q", "-f", "raw", "-O", "vmdk", str(raw), str(folder / "base.vmdk"))
        run(qemu_img, "create", "-q", "-f", "vmdk", "-b", "base.vmdk", "-F", "vmdk",
            str(folder / "d.vmdk"))
        _drop_table(folder / "d.vmdk", 1)
        (folder / "new.bin").write_bytes(DATA)

    def allocated_table(folder: Path) -> bool:
        with open_image(str(folder / "d.vmdk")) as d:
            return d.sparse_extents[0].gd[1] != 0

    res = crash_test(make, ["fs", "put", "d.vmdk", "new.bin", "/NEW.BIN"],
                     _put_result("d.vmdk", allocated_table), tmp_path, points=POINTS)
    _enough(res)
    _finish("fs put (snapshot child, new grain table)", res)


SPLIT_DESCRIPTOR = """# Disk DescriptorFile
version=1
CID=1badc0de
parentCID=ffffffff
createType="twoGbMaxExtentSparse"

# Extent description
RW 16384 SPARSE "d-s001.vmdk"
RW 16384 SPARSE "d-s002.vmdk"

# The Disk Data Base
#DDB

ddb.virtualHWVersion = "4"
ddb.adapterType = "ide"
"""


def test_split_sparse_across_two_extent_files(tmp_path: Path) -> None:
    """Two 8 MiB sparse extents (qemu-img) under one split descriptor; a 6 MiB file fills
    the volume's first extent, so the new file's clusters land in the second extent and
    its FAT entries and directory entry in the first."""
    qemu_img = need_tool("qemu-img")

    def make(folder: Path) -> None:
        raw = folder.parent / "split.raw"
        if not raw.exists():
            _fat_raw(raw, 16, 2048, dict(FILES, **{"FILL.BIN": b"\x77" * (7 * MIB)}))
        for n in (1, 2):
            run(qemu_img, "create", "-q", "-f", "vmdk", str(folder / f"d-s00{n}.vmdk"), "8M")
        (folder / "d.vmdk").write_text(SPLIT_DESCRIPTOR)
        run(qemu_img, "convert", "-q", "-n", "--target-is-zero", "-f", "raw", "-O", "vmdk",
            str(raw), str(folder / "d.vmdk"))
        (folder / "new.bin").write_bytes(DATA)
        sizes.update({p.name: p.stat().st_size for p in folder.glob("d-s00*.vmdk")})

    sizes: dict[str, int] = {}

    def both_grew(folder: Path) -> bool:
        return all((folder / n).stat().st_size >= s for n, s in sizes.items()) and \
            (folder / "d-s002.vmdk").stat().st_size > sizes["d-s002.vmdk"]

    res = crash_test(make, ["fs", "put", "d.vmdk", "new.bin", "/NEW.BIN"],
                     _put_result("d.vmdk", both_grew), tmp_path, points=POINTS)
    _enough(res)
    _finish("fs put (twoGbMaxExtentSparse, two extent files)", res)


def test_raw_image(tmp_path: Path) -> None:
    def make(folder: Path) -> None:
        raw = folder.parent / "plain.raw"
        if not raw.exists():
            _fat_raw(raw, 16, 2048, FILES)
        shutil.copy(raw, folder / "d.img")
        (folder / "new.bin").write_bytes(DATA)

    res = crash_test(make, ["fs", "put", "d.img", "new.bin", "/NEW.BIN"],
                     _put_result("d.img"), tmp_path, points=POINTS)
    _enough(res)
    _finish("fs put (raw)", res)


# -- VHDX: new blocks and BAT entries, a differencing child's sector bitmaps, a moved BAT -----
def _vhdx_fat(folder: Path, name: str = "d.vhdx", mib: int = 16) -> None:
    """MBR + FAT16 (sfdisk, mkfs.fat, mtools) converted by qemu-img to a dynamic VHDX of
    1 MiB blocks."""
    raw = folder.parent / f"vhdx-{mib}.raw"
    if not raw.exists():
        # a file of zeros first: the new file's clusters land in blocks never allocated
        _fat_raw(raw, mib, 2048, dict(FILES, **{"ZEROS.BIN": bytes(3 * MIB)}))
    run(need_tool("qemu-img"), "convert", "-q", "-f", "raw", "-O", "vhdx", "-o",
        "subformat=dynamic,block_size=1M", str(raw), str(folder / name))


def test_vhdx_new_blocks(tmp_path: Path) -> None:
    """`fs put` on a dynamic VHDX: payload blocks allocated at the end, BAT entries set, both
    headers updated on the first write; qemu-img check judges every result."""
    def make(folder: Path) -> None:
        _vhdx_fat(folder)
        (folder / "new.bin").write_bytes(DATA)

    def stored(folder: Path) -> int:
        with open_image(str(folder / "d.vhdx")) as d:
            return sum(r.length_bytes for r in d.runs() if r.kind.value == "data")

    before: dict[str, int] = {}

    def grew(folder: Path) -> bool:
        before.setdefault("n", stored(tmp_path / "template"))
        return stored(folder) > before["n"]

    res = crash_test(make, ["fs", "put", "d.vhdx", "new.bin", "/NEW.BIN"],
                     _put_result("d.vhdx", grew), tmp_path, points=POINTS)
    _enough(res)
    _finish("fs put (vhdx, new blocks)", res)


@pytest.mark.parametrize("maker", ["builder", "vdisk create"])
def test_vhdx_differencing_child(tmp_path: Path, maker: str) -> None:
    """A differencing child over a qemu-img VHDX parent, made by tests/vhdxbuilder.py or by
    `vdisk create -o backing_file=`: the edit makes blocks partially present and allocates
    a sector bitmap; the parent never changes. qemu-img does not read differencing VHDX:
    vdisk's raw copy is judged by fsck.fat and mtools instead."""
    import struct
    import uuid

    import vhdxbuilder as vb

    def make(folder: Path) -> None:
        _vhdx_fat(folder, "base.vhdx")
        if maker == "vdisk create":
            made = run_vdisk(["create", "d.vhdx", "-O", "vhdx", "-o", "backing_file=base.vhdx"],
                             folder, {})
            assert made.returncode == 0, made.stderr
        else:
            head = (folder / "base.vhdx").read_bytes()[64 * 1024:192 * 1024]
            h1, h2 = head[:4096], head[64 * 1024:64 * 1024 + 4096]
            cur = max((h1, h2), key=lambda h: struct.unpack_from("<Q", h, 8)[0])
            guid = "{" + str(uuid.UUID(bytes_le=cur[32:48])) + "}"
            child = vb.Vhdx(size=16 * MIB, parent={"parent_linkage": guid,
                                                   "relative_path": "base.vhdx"})
            (folder / "d.vhdx").write_bytes(child.build())
        (folder / "new.bin").write_bytes(DATA)

    def via_vdisk(folder: Path) -> bool:
        from test_crash_all import _fat_clean, _part_offset
        out = folder.parent / f"{folder.name}-child.raw"
        out.unlink(missing_ok=True)
        if run_vdisk(["convert", "d.vhdx", str(out)], folder, {}).returncode:
            return False
        try:
            off = _part_offset(out)
            return (_fat_clean(out, off) and _cat(out, off, "/NEW.BIN") == DATA
                    and _cat(out, off, "/FILE.BIN") == FILES["FILE.BIN"]
                    and run_vdisk(["check", "d.vhdx"], folder, {}).returncode == 0)
        finally:
            out.unlink()

    base_bytes: dict[str, bytes] = {}
    res = crash_test(make, ["fs", "put", "d.vhdx", "new.bin", "/NEW.BIN"], via_vdisk, tmp_path,
                     points=POINTS)
    for folder in tmp_path.glob("kill*"):
        base_bytes.setdefault("b", (tmp_path / "template" / "base.vhdx").read_bytes())
        assert (folder / "base.vhdx").read_bytes() == base_bytes["b"], folder
    _enough(res)
    _finish(f"fs put (vhdx differencing child, {maker})", res)


def test_vhdx_grow_that_moves_the_bat(tmp_path: Path) -> None:
    """200 GiB in 1 MiB blocks needs 1.6 MiB of BAT: grow writes a new BAT at the end of the
    file and points both region tables at it."""
    ref = tmp_path / "ref.raw"

    def make(folder: Path) -> None:
        _vhdx_fat(folder)
        if not ref.exists():
            run("qemu-img", "convert", "-q", "-O", "raw", str(folder / "d.vhdx"), str(ref))

    def grown(folder: Path) -> bool:
        img = folder / "d.vhdx"
        if run("qemu-img", "check", "-f", "vhdx", str(img), check=False).returncode:
            return False
        info = run("qemu-img", "info", "--output=json", str(img)).stdout
        return '"virtual-size": 214748364800' in info and run(
            "qemu-img", "compare", "-f", "vhdx", "-F", "raw", str(img), str(ref),
            check=False).returncode == 0

    res = crash_test(make, ["grow", "d.vhdx", "--size", "200G"], grown, tmp_path, points=POINTS)
    _enough(res)
    _finish("grow (vhdx, BAT moved)", res)


def test_qcow2_new_clusters(tmp_path: Path) -> None:
    """`fs put` on a qcow2 (qemu-img): new data clusters, L2 tables and refcount entries,
    all through the undo journal; with lazy refcounts the dirty bit too. After a kill the
    rollback leaves the old file, byte for byte, or the new one clean for qemu-img check."""
    qemu_img = need_tool("qemu-img")
    opts = "cluster_size=4096,lazy_refcounts=on"

    def make(folder: Path) -> None:
        _fat_disk(folder, "v.vmdk")
        run(qemu_img, "convert", "-q", "-O", "qcow2", "-o", opts, str(folder / "v.vmdk"),
            str(folder / "d.qcow2"))
        (folder / "v.vmdk").unlink()
        (folder / "new.bin").write_bytes(DATA)

    res = crash_test(make, ["fs", "put", "d.qcow2", "new.bin", "/NEW.BIN"],
                     _put_result("d.qcow2"), tmp_path, points=POINTS)
    _enough(res)
    _finish(f"fs put (qcow2 {opts})", res)


def test_qcow2_overlay_copies_from_its_backing_file(tmp_path: Path) -> None:
    """An overlay (qemu-img create -b): every write copies its cluster from the backing
    file first; the backing file never changes."""
    qemu_img = need_tool("qemu-img")

    def make(folder: Path) -> None:
        _fat_disk(folder, "v.vmdk")
        run(qemu_img, "convert", "-q", "-O", "qcow2", str(folder / "v.vmdk"),
            str(folder / "base.qcow2"))
        (folder / "v.vmdk").unlink()
        run(qemu_img, "create", "-q", "-f", "qcow2", "-o", "cluster_size=16384", "-b",
            "base.qcow2", "-F", "qcow2", str(folder / "d.qcow2"))
        (folder / "new.bin").write_bytes(DATA)

    base: dict[str, bytes] = {}

    def complete(folder: Path) -> bool:
        data = (folder / "base.qcow2").read_bytes()
        base.setdefault("bytes", data)
        return data == base["bytes"] and _put_result("d.qcow2")(folder)

    res = crash_test(make, ["fs", "put", "d.qcow2", "new.bin", "/NEW.BIN"], complete,
                     tmp_path, points=POINTS)
    _enough(res)
    _finish("fs put (qcow2 overlay, copy from the backing file)", res)


def test_qcow2_grow_over_a_larger_backing_file(tmp_path: Path) -> None:
    """`grow` of a 2 MiB overlay (512-byte clusters) over an 8 MiB base: the L1 table
    moves, the head of the new area is copied and zeroed, new L2 tables of zero entries
    are written. After a kill: the old file, or the grown one reading the overlay's old
    content and then zeros; the base never changes."""
    qemu_img = need_tool("qemu-img")
    ref = tmp_path / "ref.raw"

    def make(folder: Path) -> None:
        _fat_disk(folder, "v.vmdk")
        run(qemu_img, "convert", "-q", "-O", "qcow2", str(folder / "v.vmdk"),
            str(folder / "base.qcow2"))
        (folder / "v.vmdk").unlink()
        run(qemu_img, "create", "-q", "-f", "qcow2", "-o", "cluster_size=512", "-b",
            "base.qcow2", "-F", "qcow2", str(folder / "d.qcow2"), "2095616")
        if not ref.exists():
            run(qemu_img, "convert", "-q", "-O", "raw", str(folder / "d.qcow2"), str(ref))
            with open(ref, "r+b") as f:
                f.truncate(12 * MIB)

    base: dict[str, bytes] = {}

    def grown(folder: Path) -> bool:
        data = (folder / "base.qcow2").read_bytes()
        base.setdefault("bytes", data)
        img = folder / "d.qcow2"
        return data == base["bytes"] and run(qemu_img, "check", str(img), check=False
                                             ).returncode == 0 and run(
            qemu_img, "compare", "-F", "raw", str(img), str(ref), check=False).returncode == 0

    res = crash_test(make, ["grow", "d.qcow2", "--size", "12M"], grown, tmp_path, points=POINTS)
    _enough(res)
    _finish("grow (qcow2 overlay over a larger backing file)", res)


def test_qcow2_reuses_free_clusters(tmp_path: Path) -> None:
    """`fs put` on a qcow2 whose clusters at 6 MiB were written and discarded by qemu-io
    (free clusters inside the file): the new data, L2 entries and refcounts go into them,
    the file does not grow. After a kill: the old file byte for byte, or the new one."""
    qemu_img, qemu_io = need_tool("qemu-img"), need_tool("qemu-io")
    size: dict[str, int] = {}

    def make(folder: Path) -> None:
        _fat_disk(folder, "v.vmdk")
        img = folder / "d.qcow2"
        run(qemu_img, "convert", "-q", "-O", "qcow2", "-o", "cluster_size=4096",
            str(folder / "v.vmdk"), str(img))
        (folder / "v.vmdk").unlink()
        run(qemu_io, "-f", "qcow2", "-c", "write -P 0x5a 6M 512k", "-c", "discard 6M 512k",
            str(img))
        size.setdefault("d", img.stat().st_size)
        (folder / "new.bin").write_bytes(DATA)

    res = crash_test(make, ["fs", "put", "d.qcow2", "new.bin", "/NEW.BIN"],
                     _put_result("d.qcow2", lambda f: (f / "d.qcow2").stat().st_size
                                 == size["d"]), tmp_path, points=POINTS)
    _enough(res)
    _finish("fs put (qcow2, free clusters reused)", res)
