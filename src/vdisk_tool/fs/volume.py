"""A FAT volume on any BlockDevice: open (partition N of an MBR or a superfloppy), resolve
paths, list directories, stream files (specs/fat.md)."""
from __future__ import annotations

import io
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass

from ..errors import FormatError
from ..formats import fat as ff
from ..image.base import BlockDevice
from .directory import Directory
from .dirent import DirEntryInfo
from .layout import FatLayout, parse_boot_sector
from .partition import Partition, looks_like_mbr, partition_device, read_partition_table
from .table import FatTable
from .writer import VolumeWriter

E = ff.DIR_ENTRY_BYTES
READ_RUN_BYTES = 1 << 20


@dataclass(frozen=True)
class RootFileChain:
    """A root-directory file found by its raw 8.3 name, with its cluster chain."""

    entry: DirEntryInfo
    chain: tuple[int, ...]
    needed_clusters: int
    ends_properly: bool

    @property
    def chain_short(self) -> bool:
        return len(self.chain) < self.needed_clusters


def label_text(raw: bytes) -> str:
    """An 11-byte label as text (0x05 in the first byte stands for 0xE5, fatgen103 §6.1)."""
    if raw[:1] == bytes([ff.KANJI_E5]):
        raw = bytes([ff.DELETED_MARK]) + raw[1:]
    return raw.decode("cp437").rstrip(" ")


def normalize_path(path: str) -> list[str]:
    """Components of a volume path ('/a/b', 'a\\b'); '..' above the root is refused."""
    path = path.replace("\\", "/")
    norm = posixpath.normpath("/" + path)
    parts = [p for p in norm.split("/") if p]
    if ".." in parts:
        raise FormatError(f"path {path!r} leaves the volume")
    return parts


def names_match(info: DirEntryInfo, name: str) -> bool:
    key = name.casefold()
    return info.name.casefold() == key or info.short_name.casefold() == key


class FatVolume(VolumeWriter):
    """An opened FAT volume. Writes go straight to the device; `flush()` writes the FAT
    copies and the FSInfo sector."""

    def __init__(self, dev: BlockDevice, layout: FatLayout, path: str | None = None,
                 partition: Partition | None = None, fat_copy: int | None = None) -> None:
        self.dev = dev
        self.layout = layout
        self.path = path
        self.partition = partition
        self.fat = FatTable(dev, layout, fat_copy, path)
        self._fsinfo_free: int | None = None
        self._dirs: dict[int, Directory] = {}
        super().__init__()

    # -- low level ----------------------------------------------------------------------
    @property
    def writable(self) -> bool:
        return bool(self.dev.writable)

    @property
    def fat_type(self) -> int:
        return self.layout.fat_type

    @property
    def root_first_cluster(self) -> int:
        """The cluster a subdirectory's '..' names for the root is 0; this is the real one."""
        return self.layout.root_cluster if self.fat_type == 32 else 0

    def cluster_runs(self, clusters: list[int] | tuple[int, ...]) -> list[tuple[int, int]]:
        """(offset, length) device ranges of a cluster list, contiguous ones merged."""
        cb = self.layout.cluster_bytes
        base = self.layout.data_offset - 2 * cb
        runs: list[tuple[int, int]] = []
        start = length = 0
        for c in clusters:
            off = base + c * cb
            if length and start + length == off and length < READ_RUN_BYTES:
                length += cb
            else:
                if length:
                    runs.append((start, length))
                start, length = off, cb
        if length:
            runs.append((start, length))
        return runs

    def directory(self, first_cluster: int) -> Directory:
        """The directory starting at `first_cluster` (0 = the root), read once per volume."""
        if first_cluster == 0 and self.layout.fat_type == 32:
            first_cluster = self.layout.root_cluster
        d = self._dirs.get(first_cluster)
        if d is None:
            d = self._dirs[first_cluster] = Directory(self, first_cluster)
        return d

    def forget(self, first_cluster: int | None = None) -> None:
        """Drop what was read of a directory (all of them, and the FAT, with None), e.g.
        after its clusters were freed or the device was changed by other means."""
        if first_cluster is None:
            self._dirs.clear()
            if not self.fat.dirty:
                self.fat = FatTable(self.dev, self.layout, self.fat.source_copy, self.path)
        else:
            self._dirs.pop(first_cluster, None)

    # -- lookup -------------------------------------------------------------------------
    def root_info(self) -> DirEntryInfo:
        return DirEntryInfo(name="/", short_name="/", raw_name=b"/".ljust(11), path="/",
                            attributes=ff.ATTR_DIRECTORY, size_bytes=0,
                            first_cluster=self.root_first_cluster, created=None,
                            modified=None, accessed=None)

    def lookup(self, directory: Directory, name: str, parent_path: str = "/"
               ) -> DirEntryInfo | None:
        return directory.find(name, parent_path)

    def stat(self, path: str) -> DirEntryInfo:
        """The entry at `path` ('/' is the root)."""
        parts = normalize_path(path)
        info = self.root_info()
        cur = "/"
        for i, part in enumerate(parts):
            if not info.is_dir:
                raise FormatError(f"{cur} is not a directory", path=self.path)
            found = self.lookup(self.directory(info.first_cluster), part, cur)
            if found is None:
                raise FormatError(f"no such file or directory: /{'/'.join(parts[:i + 1])}",
                                  path=self.path)
            info, cur = found, found.path
        return info

    def exists(self, path: str) -> bool:
        try:
            self.stat(path)
        except FormatError:
            return False
        return True

    def listdir(self, path: str = "/") -> list[DirEntryInfo]:
        """Files and subdirectories of a directory (no dot entries, no label)."""
        info = self.stat(path)
        if not info.is_dir:
            raise FormatError(f"{info.path} is not a directory", path=self.path)
        return self.children(info)

    def children(self, info: DirEntryInfo) -> list[DirEntryInfo]:
        """Files and subdirectories of the directory `info` (no dot entries, no label)."""
        return [e for e in self.directory(info.first_cluster).entries(info.path)
                if not e.is_label and e.raw_name[:1] != b"."]

    def walk(self, path: str = "/") -> Iterator[tuple[DirEntryInfo, list[DirEntryInfo]]]:
        """Depth-first (directory, its entries) pairs; each directory visited once."""
        seen: set[int] = set()
        stack = [self.stat(path)]
        while stack:
            d = stack.pop()
            if d.first_cluster in seen:
                continue
            seen.add(d.first_cluster)
            kids = self.children(d)
            yield d, kids
            stack.extend(reversed([k for k in kids if k.is_dir and k.first_cluster >= 2]))

    # -- reading ------------------------------------------------------------------------
    def file_chain(self, info: DirEntryInfo) -> list[int]:
        need = -(-info.size_bytes // self.layout.cluster_bytes)
        return self.fat.chain_list(info.first_cluster, limit=max(need, 1))

    def iter_file(self, target: str | DirEntryInfo) -> Iterator[bytes]:
        """The content of a file in pieces of at most 1 MiB; raises when the chain is shorter
        than the size says."""
        info = self.stat(target) if isinstance(target, str) else target
        if info.is_dir:
            raise FormatError(f"{info.path} is a directory", path=self.path)
        remaining = info.size_bytes
        if remaining == 0:
            return
        chain = self.file_chain(info)
        have = len(chain) * self.layout.cluster_bytes
        if have < remaining:
            raise FormatError(f"{info.path}: cluster chain holds {have} bytes, the entry says "
                              f"{remaining} (run 'vdisk fs check')", path=self.path)
        for off, n in self.cluster_runs(chain):
            n = min(n, remaining)
            yield self.dev.read_at(off, n)
            remaining -= n
            if remaining <= 0:
                break

    def read_file(self, path: str) -> bytes:
        return b"".join(self.iter_file(path))

    def open_file(self, path: str) -> io.BufferedReader:
        """A read-only file object streaming the file's content."""
        return io.BufferedReader(_ChunkReader(self.iter_file(path)), READ_RUN_BYTES)

    @property
    def label(self) -> str:
        """The volume label as Windows and fatlabel read it: the root directory's label entry;
        none ("") when there is no such entry or it is erased (0xE5). The boot sector's
        BS_VolLab is only a copy (fatgen103 §3.2) and is not consulted."""
        info = self.root_label_entry()
        return "" if info is None else label_text(info.raw_name)

    def root_label_entry(self) -> DirEntryInfo | None:
        """The live volume-label entry of the root directory (ATTR_VOLUME_ID, not a long name)."""
        for info in self.directory(self.root_first_cluster).entries():
            if info.is_label and not info.has_long_name:
                return info
        return None

    def find_root_entry(self, raw_name: bytes) -> RootFileChain | None:
        """The root-directory file whose DIR_Name is exactly `raw_name` (e.g. b'IPVA    BIN'),
        its cluster chain, and whether that chain is long enough for its size."""
        for info in self.directory(self.root_first_cluster).entries():
            if info.raw_name == raw_name and not info.is_label:
                need = -(-info.size_bytes // self.layout.cluster_bytes)
                chain = self.fat.chain_list(info.first_cluster, limit=self.layout.cluster_count)
                ends = True
                if chain:
                    last = self.fat.get(chain[-1])
                    ends = self.fat.is_eoc(last)
                return RootFileChain(info, tuple(chain), need, ends)
        return None


class _ChunkReader(io.RawIOBase):
    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buf = b""

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[override]
        while not self._buf:
            nxt = next(self._chunks, None)
            if nxt is None:
                return 0
            self._buf = nxt
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n


def open_volume(dev: BlockDevice, partition: int | None = None, path: str | None = None,
                fat_copy: int | None = None) -> FatVolume:
    """The FAT volume on a device: partition N (1-based) of its MBR, or, without N, the
    volume at sector 0 (superfloppy) or the MBR's only FAT partition."""
    if dev.size_bytes < ff.SECTOR_BYTES:
        raise FormatError("device shorter than one sector", path=path)
    sector0 = dev.read_at(0, ff.SECTOR_BYTES)
    if partition is None and sector0[0] in (0xEB, 0xE9):
        try:
            layout = parse_boot_sector(sector0, dev.size_bytes, path)
            return FatVolume(dev, layout, path, None, fat_copy)
        except FormatError:
            if not looks_like_mbr(sector0, dev.size_bytes):
                raise
    if partition is None and not looks_like_mbr(sector0, dev.size_bytes):
        raise FormatError("neither a FAT boot sector nor an MBR partition table at sector 0",
                          path=path, offset=0)
    table = read_partition_table(dev, path)
    if partition is None:
        usable = [p for p in table.partitions if p.partition_type in _FAT_OR_UNKNOWN]
        if len(usable) != 1:
            raise FormatError(
                f"the disk has {len(table.partitions)} partitions; choose one with --partition N",
                path=path)
        part = usable[0]
    else:
        part = table.get(partition)
    pdev = partition_device(dev, part, path)
    layout = parse_boot_sector(pdev.read_at(0, ff.SECTOR_BYTES), pdev.size_bytes, path)
    return FatVolume(pdev, layout, path, part, fat_copy)


_FAT_OR_UNKNOWN = frozenset(range(256)) - {0x05, 0x0F, 0x85, 0xEE, 0x82, 0x83, 0x8E}
