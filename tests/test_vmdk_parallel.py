"""The parallel stream engine and zero-copy copies: the same bytes whatever the number of
threads, zlib levels honoured, bounded memory (checked structurally), copy_range's kernel
and fallback paths, and every new path's output judged by qemu-img check/compare."""
from __future__ import annotations

import dataclasses
import errno
import os
import random
import struct
import zlib
from pathlib import Path

import pytest
from conftest import need, need_tool, run, vdisk

from vdisk_tool.formats import vmdk_descriptor as vd
from vdisk_tool.formats import vmdk_sparse as vs
from vdisk_tool.image import hostio, parallel, platform, zcodec
from vdisk_tool.image.base import FileDevice
from vdisk_tool.image.disk import open_image
from vdisk_tool.image.journal import UndoJournal
from vdisk_tool.image.vmdk import create, sparse

GRAIN = 64 << 10
MiB = 1 << 20
# RFC 1950: bits 6-7 of the second header byte (FLEVEL) say how hard the compressor worked
FLEVEL = {1: 0, 6: 2, 9: 3}


def _library(name: str):
    """The deflate library itself (not vdisk's wrapper), to judge what vdisk wrote."""
    if name == "zlib":
        return zlib
    try:
        from zlib_ng import zlib_ng
    except ImportError:
        need(False, "zlib-ng (pip install zlib-ng)")
    return zlib_ng


@pytest.fixture(params=["zlib", "zlib-ng"])
def codec(request):
    """Each test once with Python's zlib and once with zlib-ng (skipped where absent)."""
    lib = _library(request.param)
    before = zcodec.name()
    assert zcodec.use(request.param) == request.param
    yield lib
    zcodec.use(before)


def _text(rng: random.Random, n: int) -> bytes:
    words = [bytes(rng.choice(b"abcdefghij klmnop") for _ in range(rng.randint(2, 9)))
             for _ in range(300)]
    out = bytearray()
    while len(out) < n:
        out += rng.choice(words) + b" "
    return bytes(out[:n])


def _raw(path: Path, seed: int = 7) -> Path:
    """A raw source made without vdisk: text, random, zero and hole stretches, and a
    capacity that ends inside a grain (3 MiB + 5 sectors)."""
    rng = random.Random(seed)
    with open(path, "wb") as f:
        f.truncate(3 * MiB + 5 * 512)
        f.write(_text(rng, MiB))                       # text
        f.write(rng.randbytes(MiB // 2))               # random
        f.write(bytes(GRAIN * 2))                      # zeros in allocated data
        f.seek(2 * MiB + GRAIN)                        # a hole, then data
        f.write(rng.randbytes(3 * GRAIN) + _text(rng, 100_000))
        f.seek(3 * MiB)
        f.write(b"tail" * 640)                         # the partial last grain
    return path


def _stream(raw: Path, out: Path, workers: int, level: int = 6) -> bytes:
    out.write_bytes(b"")
    with FileDevice(raw) as src:
        sectors = -(-src.size_bytes // 512)
        line = vd.ExtentLine("RW", sectors, "SPARSE", out.name, None, 0)
        desc = vd.build_descriptor(cid=0x1234abcd, create_type="streamOptimized",
                                   extents=[line], adapter="ide", hw_version="4",
                                   parent_cid=vd.NO_PARENT_CID, parent_hint=None, extra_ddb={})
        create.write_stream(str(out), sectors, desc.to_bytes(), src, None, level=level,
                            workers=workers)
    return out.read_bytes()


def test_stream_is_the_same_file_for_1_and_n_workers(tmp_path: Path, codec) -> None:
    qemu_img = need_tool("qemu-img")
    raw = _raw(tmp_path / "src.raw")
    (tmp_path / "1").mkdir()
    (tmp_path / "4").mkdir()
    one = _stream(raw, tmp_path / "1" / "s.vmdk", 1)
    four = _stream(raw, tmp_path / "4" / "s.vmdk", 4)
    assert one == four
    assert run(qemu_img, "check", str(tmp_path / "4" / "s.vmdk"), check=False).returncode == 0
    assert run(qemu_img, "compare", "-f", "raw", "-F", "vmdk", str(raw),
               str(tmp_path / "4" / "s.vmdk"), check=False).returncode == 0


def _first_grain(image: bytes) -> tuple[int, bytes]:
    hdr = vs.parse_header(image[:512])
    off = hdr.overhead_sectors * 512
    lba, size = struct.unpack_from("<QI", image, off)
    return lba, image[off + 12:off + 12 + size]


@pytest.mark.parametrize("level", [1, 9])
def test_compression_level_is_honoured(tmp_path: Path, runner, codec, level: int) -> None:
    qemu_img = need_tool("qemu-img")
    raw = _raw(tmp_path / "src.raw")
    out = tmp_path / f"l{level}.vmdk"
    res = vdisk(runner, "convert", str(raw), str(out), "-F", "streamOptimized",
                "--compression-level", str(level))
    assert res.exit_code == 0, res.output
    assert run(qemu_img, "check", str(out), check=False).returncode == 0
    assert run(qemu_img, "compare", "-f", "raw", "-F", "vmdk", str(raw), str(out),
               check=False).returncode == 0
    lba, blob = _first_grain(out.read_bytes())
    first = raw.read_bytes()[:GRAIN]
    assert lba == 0 and blob == codec.compress(first, level)
    assert blob[1] >> 6 == FLEVEL[level]


def test_the_default_codec_is_zlib_ng_where_it_is_installed() -> None:
    try:
        import zlib_ng  # noqa: F401
    except ImportError:
        assert zcodec.name() == "zlib"
    else:
        assert zcodec.name() == ("zlib" if os.environ.get("VDISK_ZLIB") == "stdlib" else "zlib-ng")


def test_levels_give_sensible_sizes(tmp_path: Path) -> None:
    raw = _raw(tmp_path / "src.raw")
    sizes = {lv: len(_stream(raw, tmp_path / f"s{lv}.vmdk", 2, lv)) for lv in (1, 6, 9)}
    assert sizes[1] > sizes[6] >= sizes[9]


def test_convert_refuses_a_level_outside_1_to_9(tmp_path: Path, runner) -> None:
    raw = _raw(tmp_path / "src.raw")
    for bad in ("0", "10"):
        res = vdisk(runner, "convert", str(raw), str(tmp_path / "x.vmdk"), "-F",
                    "streamOptimized", "--compression-level", bad)
        assert res.exit_code == 2
    assert not (tmp_path / "x.vmdk").exists()


def test_ordered_map_keeps_order_and_its_in_flight_limit() -> None:
    taken = [0]
    ahead: list[int] = []

    def items():
        for i in range(200):
            taken[0] += 1
            yield i

    got = []
    for r in parallel.ordered_map(lambda i: i * i, items(), workers=3, limit=5):
        ahead.append(taken[0] - len(got))
        got.append(r)
    assert got == [i * i for i in range(200)]
    assert max(ahead) <= 5 + 1


def test_stream_writer_holds_a_bounded_number_of_grains(tmp_path: Path, monkeypatch) -> None:
    """Grains read from the source but not yet written never exceed the in-flight limit
    (plus the one read chunk of data_pieces), however large the source."""
    raw = tmp_path / "big.raw"
    raw.write_bytes(random.Random(3).randbytes(12 * MiB))
    read = [0]
    written = [0]
    worst = [0]

    class Counting(FileDevice):
        def read_at(self, offset: int, length: int) -> bytes:
            read[0] += -(-length // GRAIN)
            return super().read_at(offset, length)

    real_add = create._Batch.add

    def add(self, block: bytes) -> None:
        written[0] += 1
        worst[0] = max(worst[0], read[0] - written[0])
        real_add(self, block)

    monkeypatch.setattr(create._Batch, "add", add)
    out = tmp_path / "o.vmdk"
    out.write_bytes(b"")
    with Counting(raw) as src:
        create.write_stream(str(out), src.size_bytes // 512, b"#\n", src, None, workers=2)
    assert written[0] == 12 * MiB // GRAIN
    assert worst[0] <= parallel.in_flight_limit(2) + MiB // GRAIN


def test_read_ahead_reads_the_same_and_stays_in_its_window(tmp_path: Path, monkeypatch) -> None:
    raw = _raw(tmp_path / "src.raw")
    img = tmp_path / "s.vmdk"
    _stream(raw, img, 2)
    monkeypatch.setattr(sparse, "READ_AHEAD_GRAINS", 4)
    monkeypatch.setattr(sparse, "READ_AHEAD_WORKERS", 2)
    ext = sparse.SparseExtent(str(img))
    try:
        pieces, worst = [], 0
        for off in range(0, ext.size_bytes, 4096 * 3):
            n = min(4096 * 3, ext.size_bytes - off)
            pieces.append(ext.read_at(off, n))
            if ext._ahead is not None:
                worst = max(worst, ext._ahead.in_flight)
        assert ext._ahead is not None and worst <= 4
    finally:
        ext.close()
    expected = raw.read_bytes()
    assert b"".join(pieces) == expected + bytes(ext.size_bytes - len(expected))


def test_read_ahead_reports_a_broken_grain_as_that_grain(tmp_path: Path, monkeypatch) -> None:
    raw = _raw(tmp_path / "src.raw")
    img = tmp_path / "s.vmdk"
    data = bytearray(_stream(raw, img, 1))
    monkeypatch.setattr(sparse, "READ_AHEAD_WORKERS", 2)
    ext = sparse.SparseExtent(str(img))
    entry = ext.gte(3)
    ext.close()
    data[entry * 512 + 12 + 20:entry * 512 + 12 + 40] = bytes(20)   # grain 3's deflate data
    img.write_bytes(bytes(data))
    ext = sparse.SparseExtent(str(img))
    try:
        for g in range(3):
            ext.read_at(g * GRAIN, GRAIN)
        with pytest.raises(Exception, match="grain 3"):
            ext.read_at(3 * GRAIN, GRAIN)
    finally:
        ext.close()


# -- copy_range ------------------------------------------------------------------------------

def _pair(tmp_path: Path, n: int = 3 * MiB + 123) -> tuple[bytes, int, int]:
    data = random.Random(5).randbytes(n)
    (tmp_path / "a").write_bytes(data)
    (tmp_path / "b").write_bytes(b"")
    return data, os.open(tmp_path / "a", os.O_RDONLY), os.open(tmp_path / "b", os.O_RDWR)


def _fake_kernel_copy(monkeypatch, fn) -> None:
    """os.copy_file_range replaced by `fn`, and the host taken to have it (also on the
    platform fallback path, where vdisk does not use it)."""
    monkeypatch.setattr(os, "copy_file_range", fn, raising=False)
    monkeypatch.setattr(platform, "FEATURES",
                        dataclasses.replace(platform.FEATURES, copy_file_range=True))


@pytest.mark.parametrize("kernel", [True, False])
def test_copy_range_copies_and_stops_at_the_source_end(tmp_path: Path, monkeypatch,
                                                      kernel: bool) -> None:
    monkeypatch.setattr(hostio, "USE_COPY_FILE_RANGE", kernel)
    calls = []
    real = getattr(os, "copy_file_range", None)
    if real is not None:
        monkeypatch.setattr(os, "copy_file_range", lambda *a: calls.append(a) or real(*a))
    data, a, b = _pair(tmp_path)
    try:
        assert hostio.copy_range(a, 100, b, 4096, 2 * MiB) == 2 * MiB
        assert hostio.copy_range(a, len(data) - 10, b, 0, 50) == 10
    finally:
        os.close(a)
        os.close(b)
    got = (tmp_path / "b").read_bytes()
    assert got[4096:4096 + 2 * MiB] == data[100:100 + 2 * MiB]
    assert got[:10] == data[-10:]
    assert bool(calls) == (kernel and real is not None and platform.FEATURES.copy_file_range)


@pytest.mark.parametrize("code", [errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL])
def test_copy_range_falls_back_where_the_kernel_cannot(tmp_path: Path, monkeypatch,
                                                      code: int) -> None:
    def refuse(*a):
        raise OSError(code, os.strerror(code))

    _fake_kernel_copy(monkeypatch, refuse)
    data, a, b = _pair(tmp_path)
    try:
        assert hostio.copy_range(a, 0, b, 0, len(data)) == len(data)
    finally:
        os.close(a)
        os.close(b)
    assert (tmp_path / "b").read_bytes() == data


def test_copy_range_passes_other_errors_on(tmp_path: Path, monkeypatch) -> None:
    def broken(*a):
        raise OSError(errno.EIO, "I/O error")

    _fake_kernel_copy(monkeypatch, broken)
    _, a, b = _pair(tmp_path)
    try:
        with pytest.raises(OSError, match="I/O error"):
            hostio.copy_range(a, 0, b, 0, 4096)
    finally:
        os.close(a)
        os.close(b)


def test_copy_range_into_a_journalled_file_goes_through_the_journal(tmp_path: Path,
                                                                    monkeypatch) -> None:
    """Never around the undo journal: the copy is buffered there and an abort undoes it."""
    def forbidden(*a):
        raise AssertionError("copy_file_range bypassed the journal")

    _fake_kernel_copy(monkeypatch, forbidden)
    data, a, b = _pair(tmp_path)
    os.close(b)
    target = tmp_path / "b"
    target.write_bytes(b"\x55" * MiB)
    journal = UndoJournal(str(target), [str(target)])
    hostio.bind(journal)
    try:
        fd = hostio.fd_for(str(target))
        assert fd is not None
        assert hostio.copy_range(a, 0, fd, 512, 8192) == 8192
        assert hostio.pread(fd, 8192, 512) == data[:8192]
        journal.abort()
    finally:
        hostio.unbind(journal)
        journal.close()
        os.close(a)
    assert target.read_bytes() == b"\x55" * MiB


# -- the copies of convert, judged by qemu-img --------------------------------------------------

def _qemu_sparse(tmp_path: Path, subformat: str = "monolithicSparse") -> Path:
    qemu_img, qemu_io = need_tool("qemu-img"), need_tool("qemu-io")
    src = tmp_path / f"q-{subformat}.vmdk"
    run(qemu_img, "create", "-q", "-f", "vmdk", "-o", f"subformat={subformat}", str(src), "40M")
    run(qemu_io, "-f", "vmdk", "-c", "write -P 0x3c 0 192k", "-c", "write -P 0xe1 9M 1M",
        "-c", "write -P 0x77 39M 640k", str(src))
    return src


def _data_bytes(path: Path) -> int:
    total, fd = 0, os.open(path, os.O_RDONLY)
    try:
        pos, end = 0, os.fstat(fd).st_size
        while pos < end:
            try:
                d = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:
                break
            h = os.lseek(fd, d, os.SEEK_HOLE)
            total += h - d
            pos = h
    finally:
        os.close(fd)
    return total


@pytest.mark.parametrize("kernel", [True, False])
@pytest.mark.parametrize("subformat", ["monolithicSparse", "monolithicFlat"])
def test_convert_to_raw_copies_what_is_stored(tmp_path: Path, runner, monkeypatch,
                                              kernel: bool, subformat: str) -> None:
    qemu_img = need_tool("qemu-img")
    monkeypatch.setattr(hostio, "USE_COPY_FILE_RANGE", kernel)
    copied = []
    real = hostio.copy_range
    monkeypatch.setattr(hostio, "copy_range", lambda *a: copied.append(a[4]) or real(*a))
    src = _qemu_sparse(tmp_path, subformat)
    out = tmp_path / "out.raw"
    assert vdisk(runner, "convert", str(src), str(out)).exit_code == 0
    assert run(qemu_img, "compare", "-F", "raw", str(src), str(out), check=False).returncode == 0
    assert sum(copied) >= (192 + 1024 + 640) << 10
    if subformat == "monolithicSparse":   # holes stay holes
        assert _data_bytes(out) <= 4 * MiB


def test_convert_stream_to_raw_and_back_and_check_compare(tmp_path: Path, runner,
                                                          monkeypatch) -> None:
    """A qemu-made stream read with read-ahead on two threads: convert, compare, check."""
    qemu_img = need_tool("qemu-img")
    monkeypatch.setattr(sparse, "READ_AHEAD_WORKERS", 2)
    raw = _raw(tmp_path / "src.raw")
    # qemu pads a raw source of a partial sector; keep whole sectors
    padded = tmp_path / "src512.raw"
    padded.write_bytes(raw.read_bytes())
    stream = tmp_path / "q.vmdk"
    run(qemu_img, "convert", "-q", "-f", "raw", "-O", "vmdk", "-o", "subformat=streamOptimized",
        str(padded), str(stream))
    out = tmp_path / "out.raw"
    assert vdisk(runner, "convert", str(stream), str(out)).exit_code == 0
    assert run(qemu_img, "compare", "-f", "vmdk", "-F", "raw", str(stream), str(out),
               check=False).returncode == 0
    assert vdisk(runner, "compare", str(stream), str(padded)).exit_code == 0
    res = vdisk(runner, "check", str(stream))
    assert res.exit_code == 0, res.output


def _qemu_stream(tmp_path: Path) -> tuple[Path, bytes]:
    """A stream written by qemu-img from _raw's source (whole sectors, as qemu pads)."""
    qemu_img = need_tool("qemu-img")
    padded = tmp_path / "src512.raw"
    padded.write_bytes(_raw(tmp_path / "src.raw").read_bytes())
    stream = tmp_path / "q.vmdk"
    run(qemu_img, "convert", "-q", "-f", "raw", "-O", "vmdk", "-o", "subformat=streamOptimized",
        str(padded), str(stream))
    return stream, padded.read_bytes()


@pytest.mark.parametrize("workers", [1, 2, 4])
def test_stream_to_raw_decodes_on_workers_to_the_same_bytes(tmp_path: Path, runner, codec,
                                                             monkeypatch, workers: int) -> None:
    qemu_img = need_tool("qemu-img")
    stream, expected = _qemu_stream(tmp_path)
    monkeypatch.setattr(parallel, "default_workers", lambda: workers)
    used = []
    real = parallel.write_decoded
    monkeypatch.setattr(parallel, "write_decoded",
                        lambda jobs, put, w, *a: used.append(w) or real(jobs, put, w, *a))
    out = tmp_path / "out.raw"
    assert vdisk(runner, "convert", str(stream), str(out)).exit_code == 0
    assert used and set(used) == {workers}
    assert out.read_bytes() == expected
    assert run(qemu_img, "compare", "-f", "vmdk", "-F", "raw", str(stream), str(out),
               check=False).returncode == 0
    assert _data_bytes(out) < len(expected)   # the hole and the zero grains stay holes


def test_decode_jobs_cut_grains_at_the_edges_of_a_window(tmp_path: Path) -> None:
    stream, expected = _qemu_stream(tmp_path)
    lo, n = GRAIN + 777, 5 * GRAIN + 1000
    out = bytearray(n)

    def put(off: int, data: bytes) -> None:
        out[off:off + len(data)] = data

    with open_image(str(stream)) as d:
        jobs = d.decode_jobs(lo, n)
        assert jobs is not None
        for _ in parallel.write_decoded(jobs, put, 2, batch=2):
            pass
    assert bytes(out) == expected[lo:lo + n]


def test_decode_jobs_are_only_offered_by_streams(tmp_path: Path) -> None:
    src = _qemu_sparse(tmp_path)
    with open_image(str(src)) as d:
        assert d.decode_jobs(0, d.size_bytes) is None


def test_write_decoded_keeps_the_in_flight_bound_and_raises_the_first_error() -> None:
    started, written = [0], {}

    def job(i: int):
        def decode() -> bytes:
            if i == 37:
                raise ValueError("grain 37 is broken")
            return bytes([i % 255 + 1]) * 16
        return decode

    def jobs():
        for i in range(100):
            started[0] += 1
            yield i * 16, job(i)

    ends, lag = [], 0
    with pytest.raises(ValueError, match="grain 37"):
        for end in parallel.write_decoded(jobs(), written.__setitem__, 2, batch=4):
            ends.append(end)
            lag = max(lag, started[0] - 4 * len(ends))
    assert ends == [16 * 4 * (k + 1) for k in range(len(ends))] and len(ends) == 9
    assert lag <= 4 * (2 * 2 + 1)                      # at most 2 × workers batches ahead
    assert all(written[i * 16] == bytes([i % 255 + 1]) * 16 for i in range(36))
    assert 37 * 16 not in written


def test_write_decoded_leaves_zero_pieces_out() -> None:
    written = {}
    jobs = [(0, lambda: b"\0" * 64), (64, lambda: b"x" * 64), (128, lambda: bytes(64))]
    assert list(parallel.write_decoded(iter(jobs), written.__setitem__, 1)) == [192]
    assert written == {64: b"x" * 64}


def test_grow_of_a_stream_takes_the_level(tmp_path: Path, runner, codec) -> None:
    qemu_img = need_tool("qemu-img")
    raw = _raw(tmp_path / "src.raw")
    disk = tmp_path / "g.vmdk"
    assert vdisk(runner, "convert", str(raw), str(disk), "-F", "streamOptimized").exit_code == 0
    res = vdisk(runner, "grow", str(disk), "--size", "8M", "--compression-level", "1")
    assert res.exit_code == 0, res.output
    assert run(qemu_img, "check", str(disk), check=False).returncode == 0
    assert run(qemu_img, "compare", "-f", "raw", "-F", "vmdk", str(raw), str(disk),
               check=False).returncode == 0
    _, blob = _first_grain(disk.read_bytes())
    assert blob == codec.compress(raw.read_bytes()[:GRAIN], 1)


def test_open_image_of_a_stream_closes_its_workers(tmp_path: Path, monkeypatch) -> None:
    raw = _raw(tmp_path / "src.raw")
    img = tmp_path / "s.vmdk"
    _stream(raw, img, 2)
    monkeypatch.setattr(sparse, "READ_AHEAD_WORKERS", 2)
    with open_image(str(img)) as d:
        d.read_at(0, 4 * GRAIN)
        ext = d.sparse_extents[0]
        assert ext._ahead is not None
    assert ext._ahead is None


def test_allocated_zeros_of_a_flat_source_become_holes(tmp_path: Path, runner) -> None:
    """A thick flat extent (zeros written, not holes): its zero MiB chunks are left out of
    the raw copy; a chunk whose edges are zero but whose middle is not is copied whole."""
    qemu_img = need_tool("qemu-img")
    src = tmp_path / "thick.vmdk"
    run(qemu_img, "create", "-q", "-f", "vmdk", "-o", "subformat=monolithicFlat", str(src), "8M")
    flat = tmp_path / "thick-flat.vmdk"
    data = bytearray(8 * MiB)                       # every byte written: allocated zeros
    data[MiB + 500_000:MiB + 500_010] = b"middle...!"   # zero edges, data inside
    data[5 * MiB:6 * MiB] = random.Random(2).randbytes(MiB)
    flat.write_bytes(bytes(data))
    assert _data_bytes(flat) == 8 * MiB
    out = tmp_path / "out.raw"
    assert vdisk(runner, "convert", str(src), str(out)).exit_code == 0
    assert out.read_bytes() == bytes(data)
    assert run(qemu_img, "compare", "-F", "raw", str(src), str(out), check=False).returncode == 0
    assert _data_bytes(out) <= 2 * MiB


@pytest.mark.parametrize("workers", [1, 2])
def test_stream_to_raw_reports_the_first_broken_grain(tmp_path: Path, runner, monkeypatch,
                                                      workers: int) -> None:
    """Grain 2's deflate data broken, grain 10's marker wrong: the error names grain 2, as a
    reader going through the disk in order meets it, however many threads decode."""
    stream, _ = _qemu_stream(tmp_path)
    ext = sparse.SparseExtent(str(stream))
    e2, e10 = ext.gte(2), ext.gte(10)
    ext.close()
    data = bytearray(stream.read_bytes())
    data[e2 * 512 + 12 + 20:e2 * 512 + 12 + 40] = bytes(20)
    data[e10 * 512:e10 * 512 + 8] = struct.pack("<Q", 12345)
    stream.write_bytes(bytes(data))
    monkeypatch.setattr(parallel, "default_workers", lambda: workers)
    res = vdisk(runner, "convert", str(stream), str(tmp_path / "out.raw"))
    assert res.exit_code == 3
    assert "grain 2" in res.stderr and "grain 10" not in res.stderr, res.stderr
    assert not (tmp_path / "out.raw").exists()


@pytest.mark.parametrize("workers", [1, 4])
def test_stored_runs_are_copied_on_workers_to_the_same_bytes(tmp_path: Path, runner,
                                                             monkeypatch, workers: int) -> None:
    """Batches of two stored runs copied by 1 or 4 threads: the raw output is what qemu-img
    reads, its holes stay holes; a flat extent cut short fails the copy (exit 3, no output)."""
    qemu_img, qemu_io = need_tool("qemu-img"), need_tool("qemu-io")
    from vdisk_tool.image import create as generic
    monkeypatch.setattr(generic, "COPY_BATCH_RUNS", 2)
    monkeypatch.setattr(generic, "COPY_WORKERS", workers)
    monkeypatch.setattr(parallel, "default_workers", lambda: workers)
    src = tmp_path / "many.vmdk"
    run(qemu_img, "create", "-q", "-f", "vmdk", str(src), "24M")
    run(qemu_io, "-f", "vmdk", *sum((["-c", f"write -P {k + 1} {k * 192}k 64k"]
                                     for k in range(100)), []), str(src))
    out = tmp_path / "out.raw"
    assert vdisk(runner, "convert", str(src), str(out)).exit_code == 0
    expected = tmp_path / "q.raw"
    run(qemu_img, "convert", "-O", "raw", str(src), str(expected))
    assert out.read_bytes() == expected.read_bytes()
    assert _data_bytes(out) <= 100 * GRAIN + 4 * MiB
    flat = _qemu_sparse(tmp_path, "monolithicFlat")
    extent = tmp_path / "q-monolithicFlat-flat.vmdk"
    with open(extent, "r+b") as f:
        f.truncate(20 * MiB)
    res = vdisk(runner, "convert", str(flat), str(tmp_path / "cut.raw"))
    assert res.exit_code == 3 and "short read" in res.stderr, res.output
    assert not (tmp_path / "cut.raw").exists()
