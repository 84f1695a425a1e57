"""Deflate and inflate of streamOptimized grains on every core (specs/vmdk.md §Stream).

The codec (image/zcodec.py) releases the GIL while it deflates or inflates, so a few
threads keep every core busy while one thread reads, orders and writes. The work is split
into whole grains, each compressed on its own with the same parameters, so the output does
not depend on how many threads made it: 1 or N workers write the same bytes. Memory is
bounded by the number of grains in flight, whatever the size of the disk.
"""
from __future__ import annotations

import os
import struct
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, TypeVar

from ..errors import ImageError
from ..formats import vmdk_sparse as vs
from . import zcodec

T = TypeVar("T")
R = TypeVar("R")

DEFAULT_LEVEL = 6            # zlib's default, what qemu-img's compress() uses
MAX_WORKERS = 8
IN_FLIGHT_PER_WORKER = 4     # grains submitted but not yet written, per worker
SECTOR = vs.SECTOR_BYTES

if TYPE_CHECKING:   # the pool is imported when first used: commands that never start one load faster
    from concurrent.futures import Future, ThreadPoolExecutor


def default_workers() -> int:
    """One worker per core this process may run on (at most MAX_WORKERS)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, min(MAX_WORKERS, cores))


def in_flight_limit(workers: int) -> int:
    return max(1, workers * IN_FLIGHT_PER_WORKER)


def ordered_map(fn: Callable[[T], R], items: Iterable[T], workers: int,
                limit: int | None = None) -> Iterator[R]:
    """fn(item) for every item, in the order of `items`, computed on `workers` threads.

    At most `limit` items are taken from `items` ahead of the result the caller consumes,
    so a lazy `items` (grains read from a disk) holds at most `limit` grains in memory.
    With one worker everything runs in the calling thread.
    """
    if workers <= 1:
        for item in items:
            yield fn(item)
        return
    bound = limit if limit is not None else in_flight_limit(workers)
    from concurrent.futures import ThreadPoolExecutor
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="vdisk-zlib")
    pending: deque[tuple[Future[R], T]] = deque()
    try:
        for item in items:
            if len(pending) >= bound:
                yield _take(pending.popleft(), fn)
            pending.append((pool.submit(fn, item), item))
        while pending:
            yield _take(pending.popleft(), fn)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _take(job: tuple[Future[R], T], fn: Callable[[T], R]) -> R:
    """The result of a submitted job; one no worker has started yet is done here rather
    than waited for (the caller's core is not left idle when the workers' are busy)."""
    fut, item = job
    return fn(item) if fut.cancel() else fut.result()


DECODE_BATCH = 16    # decoded pieces per task of write_decoded (16 grains: 1 MiB)
_ZERO_OF: dict[int, bytes] = {}


def _all_zero(data: bytes) -> bool:
    zero = _ZERO_OF.get(len(data))
    if zero is None:
        zero = _ZERO_OF.setdefault(len(data), bytes(len(data))) if len(_ZERO_OF) < 8 \
            else bytes(len(data))
    return data == zero


def write_decoded(jobs: Iterable[tuple[int, Callable[[], bytes]]],
                  write: Callable[[int, bytes], None], workers: int,
                  batch: int = DECODE_BATCH) -> Iterator[int]:
    """Decode pieces on `workers` threads and write them where they belong.

    `jobs` gives (offset, decode) pairs; decode() returns the piece's bytes, which are
    written with write(offset, data) in the worker unless they are all zero (positional
    writes need no order, and a raw output's holes already read as zero). A task decodes
    `batch` pieces, so the hand-over between threads costs little beside the inflate.
    Yields the end of each batch in job order (for progress); the first error is raised
    in that order too. Memory: at most in_flight_limit(workers) batches of pieces."""
    def run(group: list[tuple[int, Callable[[], bytes]]]) -> int:
        end = 0
        for off, decode in group:
            data = decode()
            if not _all_zero(data):
                write(off, data)
            end = off + len(data)
        return end

    def groups() -> Iterator[list[tuple[int, Callable[[], bytes]]]]:
        group: list[tuple[int, Callable[[], bytes]]] = []
        for job in jobs:
            group.append(job)
            if len(group) >= batch:
                yield group
                group = []
        if group:
            yield group

    yield from ordered_map(run, groups(), workers, limit=max(2, 2 * workers))


def check_level(level: int) -> int:
    if not 1 <= level <= 9:
        raise ValueError(f"compression level must be 1..9, got {level}")
    return level


def grain_block(lba_sectors: int, data: bytes, level: int) -> bytes:
    """One grain of a stream: marker (lba, compressed size), the zlib data, sector padding
    (specs/vmdk.md §Grain marker)."""
    blob = zcodec.compress(data, level)
    head = struct.pack("<QI", lba_sectors, len(blob))
    return head + blob + bytes(-(len(head) + len(blob)) % SECTOR)


def inflate_grain(blob: bytes | memoryview, grain: int, grain_bytes: int, last_bytes: int, path: str,
                  offset: int) -> bytes:
    """The `grain_bytes` content of one compressed grain; `last_bytes` of them must be in
    the data (less only for the last grain of the capacity). Raises ImageError for data
    that is broken, incomplete or inflates past one grain."""
    d = zcodec.decompressobj()
    try:
        out = d.decompress(blob, grain_bytes)
    except zcodec.error as exc:
        raise ImageError(f"grain {grain}: decompression failed ({exc})", path=path,
                         offset=offset) from None
    if not d.eof:
        more = d.unconsumed_tail or b""
        raise ImageError(f"grain {grain}: compressed data "
                         + ("inflates to more than one grain" if more else "is incomplete"),
                         path=path, offset=offset)
    if len(out) < last_bytes:
        raise ImageError(f"grain {grain}: decompressed to {len(out)} bytes, expected {last_bytes}",
                         path=path, offset=offset)
    return out if len(out) == grain_bytes else out + bytes(grain_bytes - len(out))


READ_AHEAD_BATCH = 8   # grains one task of ReadAhead inflates (the hand-over costs less)


def _each(jobs: list[Callable[[], bytes]]) -> list[tuple[bool, object]]:
    """Run every job; (True, result) or (False, the exception) each, so a broken grain is
    reported when, and only if, the reader gets to it."""
    out: list[tuple[bool, object]] = []
    for job in jobs:
        try:
            out.append((True, job()))
        except Exception as exc:  # noqa: BLE001 - handed to the reader of that grain
            out.append((False, exc))
    return out


class ReadAhead:
    """Inflates the grains that follow a sequential reader's position on worker threads.

    `fetch(grain)` (called in the reader's thread, which owns the extent and its file)
    returns what to inflate: (entry, a zero-argument function that inflates) or None for a
    grain without compressed data. Read-ahead starts once reads go forward grain after
    grain and stops at a jump; at most `window` grains are read ahead, handed to the pool
    `batch` at a time. Results are keyed by (grain, entry): a caller asking for another
    entry than the one read ahead (check's reconciled tables) gets its own inflate.
    """

    def __init__(self, fetch: Callable[[int], tuple[int, Callable[[], bytes]] | None],
                 grains: int, workers: int, window: int, batch: int = READ_AHEAD_BATCH) -> None:
        self._fetch = fetch
        self._grains = grains
        self._window = window
        self._batch = max(1, min(batch, window))
        self._workers = workers
        self._pool: ThreadPoolExecutor | None = None
        # grain -> (entry, the future of its batch, its place in the batch, its inflate)
        self._ahead: dict[int, tuple[int, Future[list], int, Callable[[], bytes]]] = {}
        self._last = -1 - window   # the grain asked for last
        self._next = 0             # the first grain not yet read ahead

    def get(self, grain: int, entry: int, inflate: Callable[[], bytes]) -> bytes:
        """The content of `grain` (stored at `entry`), inflated ahead if it was."""
        hit = self._ahead.pop(grain, None)
        sequential = self._last < grain <= self._last + self._window
        self._last = grain
        if sequential:
            self._fill(grain + 1)
        else:
            self._drop()
        if hit is None or hit[0] != entry or hit[1].cancel():
            return inflate()   # not read ahead, or its batch not started: inflate it here
        ok, value = hit[1].result()[hit[2]]
        if not ok:
            raise value  # type: ignore[misc]
        return value  # type: ignore[return-value]

    @property
    def in_flight(self) -> int:
        return len(self._ahead)

    def _fill(self, start: int) -> None:
        for g in [g for g in self._ahead if g < start]:
            self._ahead.pop(g)[1].cancel()
        self._next = max(self._next, start)
        stop = min(self._grains, start + self._window)
        if stop - self._next < self._batch and stop < self._grains:
            return   # top up a whole batch at a time
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor
            self._pool = ThreadPoolExecutor(max_workers=self._workers,
                                            thread_name_prefix="vdisk-inflate")
        while self._next < stop:
            group: list[tuple[int, int, Callable[[], bytes]]] = []
            while self._next < stop and len(group) < self._batch:
                g = self._next
                self._next += 1
                job = self._fetch(g)
                if job is not None:
                    group.append((g, job[0], job[1]))
            if group:
                fut = self._pool.submit(_each, [inflate for _, _, inflate in group])
                for k, (g, e, inflate) in enumerate(group):
                    self._ahead[g] = (e, fut, k, inflate)

    def _drop(self) -> None:
        for _, fut, _k, _job in self._ahead.values():
            fut.cancel()
        self._ahead.clear()
        self._next = 0

    def close(self) -> None:
        self._drop()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
