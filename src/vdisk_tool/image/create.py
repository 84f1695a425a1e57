"""create_image(): a new raw, VMDK, qcow2 or VHDX disk, filled from a source; the VMDK
writers are image/vmdk/create.py, the qcow2 and VHDX ones image/qcow2/ and image/vhdx/.
Also the pieces every writer shares: a source's non-zero pieces, raw copies.

Every writer puts complete files under temporary names beside the target and renames them
into place at the end (extents first, descriptor last), so an interrupted create or convert
never leaves a half-written image under the real name.
"""
from __future__ import annotations

import bisect
import functools
import itertools
import os
from collections.abc import Callable, Iterator

from .. import clock
from ..errors import RefusedError
from ..formats import vmdk_descriptor as vd
from ..formats import vmdk_sparse as vs
from . import hostio, parallel, platform
from .base import SECTOR_BYTES, BlockDevice, Run, RunKind, copy_data, merge_runs
from .safe import Replacement, check_unlocked, clean_leftovers_for, create_temp

SUBFORMATS = ("monolithicSparse", "monolithicFlat", "vmfs", "twoGbMaxExtentSparse",
              "twoGbMaxExtentFlat", "streamOptimized")
ADAPTERS = ("ide", "lsilogic", "buslogic", "legacyESX")
# other containers create_image writes, by the name of their format (one file, no descriptor)
FORMAT_SUBFORMATS = ("qcow2",)
GRAIN_SECTORS = vs.DEFAULT_GRAIN_SECTORS
GRAIN_BYTES = GRAIN_SECTORS * SECTOR_BYTES
Progress = Callable[[int, int], None]


def new_cid() -> int:
    while True:
        cid = clock.randbits(32)
        if cid not in (0xFFFFFFFF, 0xFFFFFFFE):
            return cid


def like(disk) -> dict:
    """What create_image needs to make a blank disk identical in shape to `disk`
    (for a qcow2: its cluster size, compat, refcount width, lazy refcounts and extended L2
    entries as `options`)."""
    desc = disk.descriptor
    sub = disk.subformat if disk.subformat in SUBFORMATS + FORMAT_SUBFORMATS else (
        "raw" if disk.format == "raw" else "monolithicSparse")
    options = None
    if disk.format == "qcow2":
        from .qcow2.create import Qcow2Options
        m = disk.extents[0].device.meta
        options = Qcow2Options(m.cluster_bytes, m.compat, m.refcount_bits, m.lazy_refcounts,
                               extended_l2=m.extended_l2)
    if disk.format == "vhdx":
        from .vhdx import shape_of
        return shape_of(disk)
    return {"size_bytes": disk.size_bytes, "subformat": sub,
            "adapter": (desc.get("ddb.adapterType") if desc else None) or "ide",
            "template": desc, "options": options}


def create_image(path: str, size_bytes: int, subformat: str = "monolithicSparse",
                 adapter: str = "ide", *, source: BlockDevice | None = None,
                 progress: Progress | None = None, overwrite: bool = False,
                 template: vd.Descriptor | None = None, hw_version: str = "4",
                 force: bool = False, backup: str | None = None,
                 parent_hint: str | None = None, parent_cid: int | None = None,
                 ddb: dict[str, str] | None = None, options: object = None,
                 compression_level: int = parallel.DEFAULT_LEVEL,
                 workers: int | None = None, allow_outside: bool = False) -> list[str]:
    """Create a disk (raw when subformat == 'raw', qcow2 when 'qcow2', VHDX when 'vhdx-dynamic',
    'vhdx-fixed' or 'vhdx-differencing'); fill it from `source` if given. `options` are the
    container's creation options: a Qcow2Options for qcow2, qemu-img -o pairs (block_size=...,
    backing_file=... for a differencing VHDX, whose parent may lie outside the folder only
    with `allow_outside`) for VHDX.

    `template` keeps another descriptor's lines (uuid, tools version, ...) with a new CID
    and new extents; without one, `ddb` adds disk-database keys to a fresh descriptor
    (see carried_ddb). A streamOptimized disk is deflated at `compression_level` (1..9)
    on `workers` threads (default one per core). Returns the files written (descriptor last).
    """
    from .vmdk.create import (
        MAX_HOSTED_SPARSE_SECTORS,
        MAX_STREAM_SECTORS,
        _descriptor,
        carried_ddb,
        extent_names,
        write_sparse_extent,
        write_stream,
    )
    vhdx = subformat.startswith("vhdx")
    if subformat != "raw" and subformat not in SUBFORMATS + FORMAT_SUBFORMATS and not vhdx:
        raise RefusedError(f"unknown subformat {subformat!r}; choose one of {', '.join(SUBFORMATS)}")
    if adapter not in ADAPTERS:
        raise RefusedError(f"unknown adapter {adapter!r}; choose one of {', '.join(ADAPTERS)}")
    if not 1 <= compression_level <= 9:
        raise RefusedError(f"compression level must be 1..9, got {compression_level}")
    if size_bytes <= 0 or size_bytes % SECTOR_BYTES:
        raise RefusedError(f"size must be a positive multiple of 512 bytes, got {size_bytes}")
    sectors = size_bytes // SECTOR_BYTES
    folder = os.path.dirname(os.path.abspath(path))
    names = extent_names(path, subformat, size_bytes)
    if subformat == "monolithicSparse" and sectors > MAX_HOSTED_SPARSE_SECTORS:
        raise RefusedError("monolithicSparse holds at most 2 TiB; use twoGbMaxExtentSparse, "
                           "streamOptimized or a flat subformat")
    if subformat == "streamOptimized" and sectors > MAX_STREAM_SECTORS:
        raise RefusedError(f"streamOptimized holds at most {MAX_STREAM_SECTORS * SECTOR_BYTES >> 50} "
                           f"PiB ({vs.MAX_GD_ENTRIES} grain tables)")
    if len(names) > vd.MAX_EXTENTS:
        raise RefusedError(f"{subformat} of {size_bytes} bytes needs {len(names)} extent files, "
                           f"more than {vd.MAX_EXTENTS}")
    targets = [os.path.join(folder, n) for n, _ in names] + [os.path.abspath(path)]
    for t in targets:
        if os.path.lexists(t) and not overwrite:
            raise RefusedError("exists; refusing to overwrite it", path=t,
                               hint="choose another name, or pass --overwrite to replace it")
    check_unlocked(targets, force=force)
    for t in targets:
        clean_leftovers_for(t)
    if vhdx:
        from .vhdx.create import create_vhdx, parse_options
        return create_vhdx(path, size_bytes, subformat, source=source, progress=progress,
                           backup=backup, allow_outside=allow_outside,
                           **parse_options(options if isinstance(options, dict) else None))
    cid = new_cid()
    rep = Replacement()
    try:
        if subformat == "raw":
            tmp = create_temp(path)
            rep.add(tmp, os.path.abspath(path))
            _write_raw(tmp, size_bytes, source, progress)
        elif subformat == "qcow2":
            from .qcow2.create import Qcow2Options, write_qcow2
            tmp = create_temp(path)
            rep.add(tmp, os.path.abspath(path))
            write_qcow2(tmp, size_bytes, options if isinstance(options, Qcow2Options)
                        else Qcow2Options(), source, progress)
        elif subformat == "monolithicSparse":
            tmp = create_temp(path)
            rep.add(tmp, os.path.abspath(path))
            line = vd.ExtentLine("RW", sectors, "SPARSE", os.path.basename(path), None, 0)
            desc = _descriptor(template, cid, subformat, [line], adapter, hw_version, parent_hint,
                               parent_cid, ddb)
            write_sparse_extent(tmp, sectors, desc.to_bytes(), source, 0, progress)
        elif subformat == "streamOptimized":
            tmp = create_temp(path)
            rep.add(tmp, os.path.abspath(path))
            line = vd.ExtentLine("RW", sectors, "SPARSE", os.path.basename(path), None, 0)
            desc = _descriptor(template, cid, subformat, [line], adapter, hw_version, None, None,
                               ddb if ddb is not None else carried_ddb(None, subformat).ddb)
            write_stream(tmp, sectors, desc.to_bytes(), source, progress,
                         level=compression_level, workers=workers)
        else:
            lines = []
            start = 0
            flat = subformat in ("monolithicFlat", "vmfs", "twoGbMaxExtentFlat")
            runs = list(source.runs()) if source is not None and len(names) > 1 else None
            for name, n in names:
                target = os.path.join(folder, name)
                tmp = create_temp(target)
                rep.add(tmp, target)
                if flat:
                    _write_raw(tmp, n * SECTOR_BYTES, source, progress, start, runs)
                else:
                    write_sparse_extent(tmp, n, None, source, start, progress, runs)
                etype = "VMFS" if subformat == "vmfs" else ("FLAT" if flat else "SPARSE")
                lines.append(vd.ExtentLine("RW", n, etype, name, None if etype != "FLAT" else 0, 0))
                start += n * SECTOR_BYTES
            desc = _descriptor(template, cid, subformat, lines, adapter, hw_version, parent_hint,
                               parent_cid, ddb)
            tmp = create_temp(path)
            rep.add(tmp, os.path.abspath(path))
            with open(tmp, "wb") as f:
                _write_all(f.fileno(), desc.to_bytes())
        rep.commit(backup=backup)
    except BaseException:
        rep.abort()
        raise
    return [t for _, t in rep.pairs]


_ZEROS = bytes(1 << 20)


def _zero_grain(data: bytes) -> bool:
    n = len(data)
    if n <= len(_ZEROS):
        return data == _ZEROS[:n]
    return data.count(0) == n


def _runs_from(runs: list[Run], start: int) -> Iterator[Run]:
    """The runs of a listed source from the one that ends after `start` on."""
    first = max(0, bisect.bisect_right([r.end for r in runs], start))
    return itertools.islice(runs, first, None)


def data_pieces(source: BlockDevice, start: int, length: int, piece_bytes: int = GRAIN_BYTES,
                runs: list[Run] | None = None) -> Iterator[tuple[int, bytes]]:
    """(offset relative to start, bytes) of every non-zero, piece-aligned piece of the
    source window [start, start+length). Zero and unallocated runs cost nothing.
    `runs`: the source's runs, listed once by a caller that walks many windows (a split
    target of a thousand extents would otherwise walk the whole source for each)."""
    end = min(start + length, source.size_bytes)   # a larger target (grow) reads no further
    pending_lo = pending_hi = -1
    todo = _runs_from(runs, start) if runs is not None else source.runs()
    for run in todo:
        if run.offset >= end:
            break
        if run.end <= start:
            continue
        if run.kind in (RunKind.ZERO, RunKind.UNALLOCATED):
            continue
        lo = max(run.offset, start)
        hi = min(run.end, end)
        # align to pieces relative to start
        a = start + ((lo - start) // piece_bytes) * piece_bytes
        b = min(end, start + -(-(hi - start) // piece_bytes) * piece_bytes)
        if pending_hi >= a:
            pending_hi = max(pending_hi, b)
            continue
        if pending_lo >= 0:
            yield from _read_pieces(source, start, pending_lo, pending_hi, piece_bytes)
        pending_lo, pending_hi = a, b
    if pending_lo >= 0:
        yield from _read_pieces(source, start, pending_lo, pending_hi, piece_bytes)


def _read_pieces(source: BlockDevice, start: int, lo: int, hi: int, piece_bytes: int
                 ) -> Iterator[tuple[int, bytes]]:
    chunk = max(piece_bytes, (1 << 20) // piece_bytes * piece_bytes)
    zero = _ZEROS[:piece_bytes] if piece_bytes <= len(_ZEROS) else bytes(piece_bytes)
    pos = lo
    while pos < hi:
        n = min(chunk, hi - pos)
        data = source.read_at(pos, n)
        for k in range(0, n, piece_bytes):
            piece = data[k:k + piece_bytes]   # bytes: compared with memcmp (a memoryview is slow)
            if piece != zero[:len(piece)]:
                yield pos + k - start, piece
        pos += n


def _coalesce(pieces: Iterator[tuple[int, bytes]], limit: int = 1 << 20
              ) -> Iterator[tuple[int, bytes]]:
    """Join adjacent pieces into writes of up to `limit` bytes."""
    buf: list = []
    start = end = -1
    for off, piece in pieces:
        if buf and off == end and end - start + len(piece) <= limit:
            buf.append(piece)
            end += len(piece)
            continue
        if buf:
            yield start, b"".join(buf)
        buf, start, end = [piece], off, off + len(piece)
    if buf:
        yield start, b"".join(buf)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _write_raw(tmp: str, size_bytes: int, source: BlockDevice | None, progress: Progress | None,
               source_start: int = 0, runs: list[Run] | None = None) -> None:
    """A raw image or flat extent of `size_bytes` from the source window at `source_start`.
    What is stored uncompressed in a host file (flat and raw extents, uncompressed grains)
    is copied file to file (copy_range: in the kernel where possible) without being read;
    what has to be decoded is read and written without its zero pieces; holes stay holes."""
    with open(tmp, "r+b") as f:
        platform.set_sparse(f.fileno())
        f.truncate(size_bytes)
        fd = f.fileno()
        if source is not None:
            with _SourceFiles() as files:
                writeback = hostio.Writeback(fd)

                def note(done: int, total: int) -> None:
                    writeback.upto(done)
                    if progress:
                        progress(done, total)

                plan = _raw_plan(source, source_start, size_bytes, runs)
                tasks = _copy_tasks(plan, files, source, source_start, fd, note, size_bytes)
                workers = 1 if hostio.any_journal() else min(COPY_WORKERS,
                                                            parallel.default_workers())
                for done in parallel.ordered_map(functools.partial(_copy_batch, fd), tasks,
                                                 workers, limit=2 * workers):
                    note(done, size_bytes)
        hostio.fsync(fd)


COPY_WORKERS = 4               # threads copying stored runs (each call waits in the kernel)
COPY_BATCH_RUNS = 32           # stored runs per copy task
COPY_BATCH_BYTES = 16 << 20    # ... or this many bytes


def _copy_tasks(plan: Iterator[tuple[int, int, Run | None]], files: _SourceFiles,
                source: BlockDevice, source_start: int, fd: int, progress: Progress | None,
                size_bytes: int) -> Iterator[list[tuple[int, int, int, int, str]]]:
    """Batches of stored runs to copy (source fd, source offset, output offset, length,
    source path). What must be decoded is written here, in the reader's thread, as the
    plan reaches it (decoding spreads over the cores itself)."""
    batch: list[tuple[int, int, int, int, str]] = []
    nbytes = 0
    for off, length, src in plan:
        if src is None:
            if batch:
                yield batch
                batch, nbytes = [], 0
            _write_decoded(source, source_start + off, length, fd, off, progress, size_bytes)
            continue
        assert src.file is not None and src.file_offset is not None
        batch.append((files.fd(src.file), src.file_offset, off, length, src.file))
        nbytes += length
        if len(batch) >= COPY_BATCH_RUNS or nbytes >= COPY_BATCH_BYTES:
            yield batch
            batch, nbytes = [], 0
    if batch:
        yield batch


def _copy_batch(fd: int, batch: list[tuple[int, int, int, int, str]]) -> int:
    """Copy a batch of stored runs into the output (any thread: positional I/O only);
    returns the output offset where the batch ends."""
    end = 0
    for src_fd, src_off, off, length, path in batch:
        copy_data(src_fd, src_off, fd, off, length, path)
        end = off + length
    return end


def _raw_plan(source: BlockDevice, start: int, length: int, runs: list[Run] | None
              ) -> Iterator[tuple[int, int, Run | None]]:
    """(offset relative to start, length, the stored run or None) of what a raw copy of
    [start, start+length) must write: stretches stored in a host file come with their run
    (offsets relative to start), stretches to be read come with None. Zero and unallocated
    stretches are left out."""
    end = start + length
    todo: Iterator[Run] = _runs_from(runs, start) if runs is not None else source.runs()
    pending: tuple[int, int] | None = None   # a stretch to be read
    for run in merge_runs(todo):
        if run.offset >= end:
            break
        lo, hi = max(run.offset, start), min(run.end, end)
        if lo >= hi or run.kind in (RunKind.ZERO, RunKind.UNALLOCATED):
            continue
        if run.file is not None and run.file_offset is not None:
            if pending is not None:
                yield pending[0] - start, pending[1] - pending[0], None
                pending = None
            yield lo - start, hi - lo, Run(lo - start, hi - lo, run.kind, run.file,
                                           run.file_offset + (lo - run.offset))
        elif pending is not None and pending[1] == lo:
            pending = (pending[0], hi)
        else:
            if pending is not None:
                yield pending[0] - start, pending[1] - pending[0], None
            pending = (lo, hi)
    if pending is not None:
        yield pending[0] - start, pending[1] - pending[0], None


def _write_decoded(source: BlockDevice, start: int, length: int, fd: int, at: int,
                   progress: Progress | None = None, total: int = 0) -> None:
    """Write [start, start+length) of the source at `at`, without its all-zero pieces.
    A source that decodes (a stream's compressed grains) is inflated and written on every
    core (parallel.write_decoded); any other is read grain by grain (a compressed grain is
    then its inflate as it is, no copy)."""
    jobs = getattr(source, "decode_jobs", lambda _o, _n: None)(start, length)
    if jobs is not None:
        def put(off: int, data: bytes) -> None:
            hostio.pwrite(fd, data, at + off)
        workers = 1 if hostio.any_journal() else parallel.default_workers()
        for done in parallel.write_decoded(jobs, put, workers):
            if progress:
                progress(at + done, total)
        return
    zero = _ZEROS[:GRAIN_BYTES]
    pos = 0
    while pos < length:
        n = min(GRAIN_BYTES - (start + pos) % GRAIN_BYTES, length - pos)
        data = source.read_at(start + pos, n)
        if data != zero[:n]:
            hostio.pwrite(fd, data, at + pos)
        pos += n


class _SourceFiles:
    """Read-only descriptors of the source's host files, opened once each (the bound
    journal's own descriptor for a file an edit has open, so its pending writes count)."""

    def __init__(self) -> None:
        self.fds: dict[str, int] = {}
        self.owned: list[int] = []

    def fd(self, path: str) -> int:
        fd = self.fds.get(path)
        if fd is None:
            fd = hostio.fd_for(path)
            if fd is None:
                fd = platform.open_fd(path, os.O_RDONLY)
                self.owned.append(fd)
            self.fds[path] = fd
        return fd

    def __enter__(self) -> _SourceFiles:
        return self

    def __exit__(self, *exc: object) -> None:
        for fd in self.owned:
            os.close(fd)
