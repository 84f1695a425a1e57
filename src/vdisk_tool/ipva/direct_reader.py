"""A read-only view of a disk that reads its bytes straight from the host files.

Verifying a firmware reads every byte of IPVA.BIN once; going through the image backends
costs a copy per grain. The disk's runs already say which host file holds which bytes, so
those reads are served with positional reads of the host files.
"""
from __future__ import annotations

import bisect
import os
from collections.abc import Iterator

from ..errors import ImageError
from ..image import hostio, platform
from ..image.base import BlockDevice, Run, RunKind, check_range, merge_runs


class DirectReader:
    """Reads of a disk served straight from its host files where the disk's runs say where
    the bytes are (positional reads, no per-grain copying), zeros for holes, and the disk's own
    read_at for everything else (compressed grains, parent links)."""

    writable = False

    def __init__(self, disk: BlockDevice) -> None:
        self.disk = disk
        self.size_bytes = disk.size_bytes
        self.runs_list = list(merge_runs(disk.runs()))
        self._starts = [r.offset for r in self.runs_list]
        self._fds: dict[str, int] = {}

    def _piece(self, run: Run, pos: int, k: int) -> bytes:
        if run.kind in (RunKind.ZERO, RunKind.UNALLOCATED):
            return bytes(k)
        if run.kind == RunKind.DATA and run.file and run.file_offset is not None:
            fd = self._fds.get(run.file)
            if fd is None:
                fd = self._fds[run.file] = platform.open_fd(run.file, os.O_RDONLY)
            data = hostio.pread(fd, k, run.file_offset + pos - run.offset)
            if len(data) == k:
                return data
        return self.disk.read_at(pos, k)

    def read_at(self, offset: int, length: int) -> bytes:
        check_range(self, offset, length)
        parts = []
        i = max(0, bisect.bisect_right(self._starts, offset) - 1)
        while length > 0:
            run = self.runs_list[i]
            k = min(length, run.end - offset)
            if k > 0:
                parts.append(self._piece(run, offset, k))
                offset += k
                length -= k
            i += 1
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def runs(self) -> Iterator[Run]:
        return iter(self.runs_list)

    def write_at(self, offset: int, data: bytes) -> None:
        raise ImageError("read-only view")

    def flush(self) -> None:
        pass

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
