"""Interop: vdisk reads every VMDK subformat byte for byte as qemu-img does.

qemu-img creates each hosted subformat, qemu-io writes patterns at known offsets (aligned,
unaligned, across grain, grain-table and extent boundaries), `qemu-img convert -O raw` gives
the truth, and `open_image()` must read the same bytes. The streamOptimized layouts qemu
does not write (VMware's footer layout, open-vmdk's) come from two independent writers in
tests/vmdkcorpus.py and from Debian's python3-vmdkstream; qemu-img reads them too.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import vmdkcorpus as vc
from conftest import need, need_tool

from vdisk_tool.errors import VdiskError
from vdisk_tool.image.base import iter_chunks
from vdisk_tool.image.disk import open_image

GIB = 1 << 30
MIB = 1 << 20
GRAIN = 64 * 1024
GT_SPAN = 32 * MIB
# A bit over 4 GiB, not a whole number of grains: qemu splits it into 2 GiB + 2 GiB + rest.
SIZE = 4 * GIB + 5 * MIB + 7 * 512

WRITES = [
    vc.Write(0xA1, 0, GRAIN),                        # the first grain, aligned
    vc.Write(0xB2, 3 * GRAIN + 100, 1000),           # unaligned, inside one grain
    vc.Write(0xC3, 5 * GRAIN - 300, 600),            # across a grain boundary
    vc.Write(0xD4, GT_SPAN - 4096, 8192),            # across a grain-table boundary
    vc.Write(0xE5, 2 * GIB - 1000, 3000),            # across the first extent boundary
    vc.Write(0x96, 4 * GIB + 512, 1536),             # inside the third extent
    vc.Write(0xF7, SIZE - 512, 512),                 # the last sector (partial last grain)
]
# streamOptimized in qemu takes whole grains only, each once (the last one may be partial)
LAST_GRAIN = SIZE // GRAIN * GRAIN
STREAM_WRITES = [
    vc.Write(0xA1, 0, GRAIN),
    vc.Write(0xB2, 3 * GRAIN, 2 * GRAIN),
    vc.Write(0xD4, GT_SPAN - GRAIN, 2 * GRAIN),
    vc.Write(0xE5, 2 * GIB - GRAIN, 2 * GRAIN),
    vc.Write(0xF7, LAST_GRAIN, SIZE - LAST_GRAIN),
]
SUBFORMATS = ["monolithicSparse", "monolithicFlat", "twoGbMaxExtentSparse",
              "twoGbMaxExtentFlat", "streamOptimized"]


# -- the comparison --------------------------------------------------------------------------
def raw_is_zero(fd: int, offset: int, length: int) -> bool:
    """True when [offset, offset+length) of a sparse raw file reads as zeros (holes skipped)."""
    pos, end = offset, offset + length
    while pos < end:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError:
            return True
        if start >= end:
            return True
        stop = min(os.lseek(fd, start, os.SEEK_HOLE), end)
        while start < stop:
            n = min(stop - start, 1 << 20)
            if os.pread(fd, n, start).count(0) != n:
                return False
            start += n
        pos = stop
    return True


def assert_reads_like_raw(image: Path, raw: Path) -> int:
    """open_image(image) must hold exactly raw's bytes. Returns the data bytes compared."""
    compared = 0
    with open_image(image) as disk, open(raw, "rb") as fh:
        fd = fh.fileno()
        assert disk.size_bytes == os.fstat(fd).st_size
        zero_start = zero_end = None
        for off, n, data in iter_chunks(disk):
            if data is None:  # coalesce zero runs; check each stretch once
                if zero_end == off:
                    zero_end = off + n
                    continue
                if zero_start is not None:
                    assert raw_is_zero(fd, zero_start, zero_end - zero_start), \
                        f"vdisk reads zeros over [{zero_start}, {zero_end}); the raw holds data"
                zero_start, zero_end = off, off + n
                continue
            assert len(data) == n
            expect = os.pread(fd, n, off)
            if data != expect:
                i = next(k for k in range(n) if data[k] != expect[k])
                pytest.fail(f"{image.name}: first difference at byte {off + i}: vdisk "
                            f"{data[i]:#04x}, qemu {expect[i]:#04x}")
            compared += n
        if zero_start is not None:
            assert raw_is_zero(fd, zero_start, zero_end - zero_start)
    return compared


def expect_written(compared: int, writes: list[vc.Write]) -> None:
    """The data runs cover at least the bytes written (nothing was read as a hole)."""
    assert compared >= sum(w.length for w in writes)


# -- fixtures: one image per subformat, built once ---------------------------------------------
@pytest.fixture(scope="module")
def tools():
    need_tool("qemu-img")
    need_tool("qemu-io")


@pytest.fixture(scope="module")
def made(tools, tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """subformat -> (image, qemu's raw conversion of it)."""
    out = {}
    for sub in SUBFORMATS:
        d = tmp_path_factory.mktemp(sub)
        img = vc.qemu_create(d / "disk.vmdk", SIZE, sub)
        vc.qemu_write(img, STREAM_WRITES if sub == "streamOptimized" else WRITES)
        out[sub] = (img, vc.qemu_to_raw(img, d / "disk.raw"))
    return out


@pytest.mark.parametrize("sub", SUBFORMATS)
def test_subformat_reads_like_qemu(made, sub):
    image, raw = made[sub]
    compared = assert_reads_like_raw(image, raw)
    expect_written(compared, STREAM_WRITES if sub == "streamOptimized" else WRITES)
    with open_image(image) as disk:
        assert disk.subformat == sub
        if sub.startswith("twoGb"):
            assert len(disk.extents) == 3
            assert [e.size_bytes for e in disk.extents] == [2 * GIB, 2 * GIB, SIZE - 4 * GIB]


@pytest.mark.parametrize("sub", SUBFORMATS)
def test_pointwise_reads(made, sub):
    """read_at at odd offsets and lengths (not just chunk walks) matches the raw."""
    image, raw = made[sub]
    writes = STREAM_WRITES if sub == "streamOptimized" else WRITES
    with open_image(image) as disk, open(raw, "rb") as fh:
        for w in writes:
            for off, n in ((w.offset, w.length), (max(0, w.offset - 777), w.length + 1554),
                           (w.offset + w.length // 2, 1)):
                n = min(n, disk.size_bytes - off)
                assert disk.read_at(off, n) == os.pread(fh.fileno(), n, off), (sub, off, n)


@pytest.mark.parametrize("sub", SUBFORMATS)
def test_access_past_the_end_is_refused(made, sub):
    """The last byte reads; a byte past it, or a read that starts inside and runs out, is
    refused with a VdiskError, whatever the backend (no short read, no zeros made up)."""
    image, raw = made[sub]
    with open_image(image) as disk, open(raw, "rb") as fh:
        end = disk.size_bytes
        assert disk.read_at(end - 1, 1) == os.pread(fh.fileno(), 1, end - 1)
        for off, n in ((end, 1), (end - 1, 2), (end - 512, 4096), (end + 4096, 1), (-1, 1)):
            with pytest.raises(VdiskError):
                disk.read_at(off, n)


def test_write_past_the_end_is_refused_and_changes_nothing(tools, tmp_path):
    img = vc.qemu_create(tmp_path / "d.vmdk", 3 * MIB)
    before = img.read_bytes()
    with open_image(img, writable=True) as disk:
        for off, n in ((3 * MIB, 1), (3 * MIB - 100, 200), (3 * MIB - 512, 4096)):
            with pytest.raises(VdiskError):
                disk.write_at(off, b"\x77" * n)
        disk.flush()
    assert img.read_bytes() == before


@pytest.mark.parametrize("sub", SUBFORMATS)
def test_vmdkinfo_reads_qemu_images(made, sub):
    """libvmdk (an independent reader) accepts what qemu wrote: the corpus is sane."""
    need_tool("vmdkinfo")
    image, _ = made[sub]
    res = subprocess.run(["vmdkinfo", str(image)], capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr
    assert f"({SIZE} bytes)" in res.stdout


def test_adapter_lsilogic(tools, tmp_path):
    img = vc.qemu_create(tmp_path / "scsi.vmdk", 64 * MIB, adapter="lsilogic")
    writes = [vc.Write(0x3C, 5 * MIB + 3, 70000)]
    vc.qemu_write(img, writes)
    raw = vc.qemu_to_raw(img, tmp_path / "scsi.raw")
    expect_written(assert_reads_like_raw(img, raw), writes)
    with open_image(img) as disk:
        assert disk.descriptor.get("ddb.adapterType") == "lsilogic"
        assert disk.descriptor.get("ddb.geometry.heads") == "255"


def test_snapshot_child_reads_through_parent(tools, tmp_path):
    """A child made with `qemu-img create -b parent.vmdk -F vmdk`: its own grains where written
    (partial grains copied up from the parent), the parent everywhere else."""
    parent = vc.qemu_create(tmp_path / "parent.vmdk", 96 * MIB)
    pw = [vc.Write(0x11, 0, 3 * GRAIN), vc.Write(0x22, GT_SPAN + 12345, 50000),
          vc.Write(0x33, 90 * MIB, GRAIN)]
    vc.qemu_write(parent, pw)
    parent_raw = vc.qemu_to_raw(parent, tmp_path / "parent.raw")
    child = vc.qemu_create(tmp_path / "child.vmdk", 96 * MIB, backing=parent)
    cw = [vc.Write(0x44, GRAIN + 1000, 100), vc.Write(0x55, 60 * MIB, 4096),
          vc.Write(0x66, 90 * MIB + GRAIN - 512, 1024)]
    vc.qemu_write(child, cw)
    child_raw = vc.qemu_to_raw(child, tmp_path / "child.raw")
    assert_reads_like_raw(child, child_raw)
    assert_reads_like_raw(parent, parent_raw)  # writing the child left the parent alone
    with open_image(child) as disk:
        assert disk.parent is not None
        assert os.path.samefile(disk.parent.path, parent)
        assert disk.descriptor.parent_cid == disk.parent.descriptor.cid
        # bytes only the parent holds come through the child
        assert disk.read_at(90 * MIB, 16) == b"\x33" * 16
        assert disk.read_at(GRAIN + 1000, 100) == b"\x44" * 100


def test_zeroed_grains_hide_the_parent(tools, tmp_path):
    """zeroed_grain=on (header v2, flag 0x4): `write -z` over whole grains stores GTE 1,
    which reads as zeros even where the parent holds data; partial zero writes copy up."""
    parent = vc.qemu_create(tmp_path / "p.vmdk", 8 * MIB)
    vc.qemu_write(parent, [vc.Write(0x11, 0, MIB)])
    child = tmp_path / "c.vmdk"
    vc.tool("qemu-img", "create", "-q", "-f", "vmdk", "-o", "zeroed_grain=on", "-b", "p.vmdk",
            "-F", "vmdk", child, str(8 * MIB))
    vc.tool("qemu-io", "-f", "vmdk", "-c", f"write -q -z 0 {2 * GRAIN}",
            "-c", f"write -q -z {3 * GRAIN + 100} 5000", child)
    assert vc.read_header(child)["version"] == 2
    assert vc.read_u32(child, vc.gte_offset(child, 0)) == 1
    raw = vc.qemu_to_raw(child, tmp_path / "c.raw")
    assert_reads_like_raw(child, raw)
    with open_image(child) as disk:
        assert disk.read_at(0, 2 * GRAIN) == bytes(2 * GRAIN)
        assert disk.read_at(2 * GRAIN, 16) == b"\x11" * 16
        kinds = {r.kind.value for r in disk.runs() if r.offset < 2 * GRAIN}
        assert kinds == {"zero"}


def test_vmfs_descriptor_with_crlf(tools, tmp_path):
    """An ESXi-style descriptor (createType vmfs, a VMFS line without offset), saved with
    CRLF line ends as a Windows copy leaves it: qemu and vdisk read the same bytes."""
    img = vc.qemu_create(tmp_path / "esx.vmdk", 3 * MIB, "monolithicFlat", adapter="lsilogic")
    vc.qemu_write(img, [vc.Write(0x42, 1000, 5000)])
    text = img.read_text()
    text = text.replace('createType="monolithicFlat"', 'createType="vmfs"')
    text = text.replace(' FLAT "esx-flat.vmdk" 0', ' VMFS "esx-flat.vmdk"')
    img.write_bytes(text.replace("\n", "\r\n").encode())
    raw = vc.qemu_to_raw(img, tmp_path / "esx.raw")
    assert_reads_like_raw(img, raw)
    with open_image(img) as disk:
        assert disk.subformat == "vmfs"
        assert disk.extents[0].kind == "VMFS"
        # qemu pads the descriptor file with NULs; the text before them survives as is
        assert disk.descriptor.to_bytes() == img.read_bytes().split(b"\0", 1)[0]


def test_three_link_chain_over_split_parent(tools, tmp_path):
    """base (twoGbMaxExtentSparse, in a subfolder) <- c1 <- c2 (larger than its parent):
    reads cross the parent's extent boundary and read zeros past the parent's end."""
    (tmp_path / "base").mkdir()
    base = vc.qemu_create(tmp_path / "base" / "p.vmdk", 2100 * MIB, "twoGbMaxExtentSparse")
    vc.qemu_write(base, [vc.Write(0x12, 0, 4096), vc.Write(0x11, 2 * GIB - 648, 2000)])
    c1 = tmp_path / "c1.vmdk"
    vc.tool("qemu-img", "create", "-q", "-f", "vmdk", "-b", "base/p.vmdk", "-F", "vmdk", c1,
            str(2100 * MIB))
    vc.qemu_write(c1, [vc.Write(0x21, 2 * GIB - 48, 100)])
    c2 = vc.qemu_create(tmp_path / "c2.vmdk", 3000 * MIB, backing=c1)
    vc.qemu_write(c2, [vc.Write(0x31, 2 * GIB - 548, 100), vc.Write(0x32, 2500 * MIB, 4096)])
    raw = vc.qemu_to_raw(c2, tmp_path / "c2.raw")
    # point reads at every write, its neighbourhood and the boundaries (a full walk of a
    # 3000 MiB child is test_child_walk_reads_only_stored_data's business)
    probes = [(0, 8192), (2 * GIB - 4096, 8192), (2 * GIB - 548, 100), (2100 * MIB - 4096, 8192),
              (2500 * MIB - 100, 4296), (3000 * MIB - 512, 512)]
    with open_image(c2) as disk, open(raw, "rb") as fh:
        assert disk.size_bytes == 3000 * MIB
        for off, n in probes:
            assert disk.read_at(off, n) == os.pread(fh.fileno(), n, off), off
        assert [Path(link.path).name for link in disk.chain()] == ["c2.vmdk", "c1.vmdk", "p.vmdk"]
        assert disk.read_at(2100 * MIB, 4096) == bytes(4096)


def test_child_walk_reads_only_stored_data(tools, tmp_path):
    """Walking a child must cost what the chain stores, not its virtual size (qemu-img
    compare/convert take 0.1 s on a 2 GiB child holding a few grains)."""
    parent = vc.qemu_create(tmp_path / "p.vmdk", 2 * GIB)
    vc.qemu_write(parent, [vc.Write(0x12, 0, GRAIN)])
    child = vc.qemu_create(tmp_path / "c.vmdk", 2 * GIB, backing=parent)
    vc.qemu_write(child, [vc.Write(0x34, GIB, GRAIN)])
    with open_image(child) as disk:
        walked = 0
        for _off, n, data in iter_chunks(disk):
            if data is not None:
                walked += n
                assert walked <= 64 * MIB, "walked far more than the chain stores"


def test_descriptor_with_bom_is_not_a_raw_disk(tools, tmp_path):
    """Editing a descriptor in Notepad prepends EF BB BF. vdisk may read it as the VMDK it is
    or refuse it with an error, but must not present 300 bytes of text as the disk."""
    img = vc.qemu_create(tmp_path / "bom.vmdk", 4 * MIB, "monolithicFlat")
    img.write_bytes(b"\xef\xbb\xbf" + img.read_bytes().split(b"\0", 1)[0])
    try:
        with open_image(img) as disk:
            assert disk.format == "vmdk"
            assert disk.size_bytes == 4 * MIB
    except VdiskError:
        pass


# -- streamOptimized layouts qemu does not write -------------------------------------------------
STREAM_SRC = [vc.Write(0x5A, 0, GRAIN), vc.Write(0x6B, 7 * GRAIN + 5, 3000),
              vc.Write(0x7C, GT_SPAN - 100, 200), vc.Write(0x8D, 40 * MIB - 7, 7)]


@pytest.fixture(scope="module")
def stream_src(tools, tmp_path_factory) -> Path:
    return vc.write_raw(tmp_path_factory.mktemp("src") / "src.raw", 40 * MIB, STREAM_SRC)


@pytest.mark.parametrize("writer", ["vmware", "vmware-all-gts", "ovmdk"])
def test_independent_stream_layouts(stream_src, tmp_path, writer):
    out = tmp_path / "stream.vmdk"
    if writer == "ovmdk":
        vc.write_stream_ovmdk(stream_src, out)
    else:
        vc.write_stream_vmware(stream_src, out, all_gts=writer.endswith("all-gts"))
    # the writer is right: qemu reads it as the source ...
    res = subprocess.run(["qemu-img", "compare", "-f", "vmdk", "-F", "raw", str(out),
                          str(stream_src)], capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    # ... and so must vdisk
    expect_written(assert_reads_like_raw(out, stream_src), STREAM_SRC)
    with open_image(out) as disk:
        assert disk.subformat == "streamOptimized"
    need_tool("vmdkinfo")
    assert subprocess.run(["vmdkinfo", str(out)], capture_output=True, check=False).returncode == 0


def test_vmdkstream_layout(stream_src, tmp_path):
    """Debian's python3-vmdkstream writes VMware's layout (v3, GD_AT_END, footer, EOS)."""
    need(vc.vmdkstream_available(), "python3-vmdkstream (for /usr/bin/python3)")
    out = vc.write_stream_vmdkstream(stream_src, tmp_path / "vs.vmdk")
    assert vc.read_header(out)["gd_offset"] == vc.GD_AT_END
    expect_written(assert_reads_like_raw(out, stream_src), STREAM_SRC)


def test_raw_file_reads_as_itself(stream_src):
    assert_reads_like_raw(stream_src, stream_src)


# -- the write path, judged by qemu ---------------------------------------------------------------
@pytest.mark.parametrize("sub", ["monolithicSparse", "twoGbMaxExtentSparse", "monolithicFlat",
                                 "twoGbMaxExtentFlat", "child"])
def test_writes_through_open_image_read_back_in_qemu(tools, tmp_path, sub):
    """Seeded random writes (unaligned, across grains, tables and extents, over data and holes)
    through open_image(writable=True); the same writes on qemu's raw copy; qemu-img compare
    and qemu-img check must agree."""
    import random

    size = 2 * GIB + 3 * MIB
    first = [vc.Write(0x11, 0, 3 * GRAIN), vc.Write(0x22, 2 * GIB - GRAIN, 2 * GRAIN)]
    if sub == "child":
        parent = vc.qemu_create(tmp_path / "p.vmdk", size)
        vc.qemu_write(parent, first)
        img = vc.qemu_create(tmp_path / "c.vmdk", size, backing=parent)
    else:
        img = vc.qemu_create(tmp_path / "d.vmdk", size, sub)
        vc.qemu_write(img, first)
    raw = vc.qemu_to_raw(img, tmp_path / "model.raw")
    rng = random.Random(sub)
    spots = [0, 100, GRAIN - 7, 2 * GRAIN + 1, GT_SPAN - 300, 2 * GIB - 5000, 2 * GIB - 10,
             size - 700]
    with open_image(img, writable=True) as disk, open(raw, "r+b") as model:
        for start in spots + [rng.randrange(0, size - 70000) for _ in range(6)]:
            n = min(rng.choice([1, 511, 4096, GRAIN + 3, 70000]), size - start)
            data = bytes(rng.randrange(256) for _ in range(min(n, 64))) * (n // 64 + 1)
            disk.write_at(start, data[:n])
            os.pwrite(model.fileno(), data[:n], start)
        disk.flush()
    q = subprocess.run(["qemu-img", "compare", "-f", "vmdk", "-F", "raw", str(img), str(raw)],
                       capture_output=True, text=True, check=False)
    assert q.returncode == 0, q.stdout + q.stderr
    if "Flat" not in sub:
        q = subprocess.run(["qemu-img", "check", str(img)], capture_output=True, text=True,
                           check=False)
        assert q.returncode == 0, q.stdout + q.stderr
    if sub != "child":  # a full walk of a child is slow (test_child_walk_reads_only_stored_data)
        assert_reads_like_raw(img, raw)
