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
from .dirent import DirEntryInfo, RawItem, decode_entry, scan
from .layout import FatLayout, parse_boot_sector
from .partition import Partition, looks_like_mbr, partition_device, read_partition_table
from .table import FatTable
from .writer import VolumeWriter

E = ff.DIR_ENTRY_BYTES
MAX_DIR_BYTES = 65536 * E          # fatgen103: at most 65,536 entries per directory
READ_RUN_BYTES = 1 << 20


class Directory:
    """The bytes of one directory (the fixed FAT12/16 root or a cluster chain) in memory,
    with the device offset of every slot so that single entries can be rewritten.

    A volume keeps one Directory per directory it has read (see FatVolume.directory), so
    every change made through it is seen by later lookups. Lookups by name go through an
    index built on first use: `write_slot` drops it (it may change any name), while the
    writer's own insertions and deletions keep it up to date (`put_slot`, `index_add`,
    `index_remove`)."""

    def __init__(self, vol: FatVolume, first_cluster: int) -> None:
        self.vol = vol
        self.first_cluster = first_cluster
        lay = vol.layout
        if first_cluster == 0 and lay.fat_type != 32:
            self.clusters: list[int] = []
            self.extents = [(lay.root_dir_offset, lay.root_dir_bytes)]
        else:
            limit = max(1, MAX_DIR_BYTES // lay.cluster_bytes)
            self.clusters = vol.fat.chain_list(first_cluster or lay.root_cluster, limit)
            if not self.clusters:
                raise FormatError(f"directory at cluster {first_cluster} has no valid cluster",
                                  path=vol.path)
            self.extents = vol.cluster_runs(self.clusters)
        self.data = bytearray()
        for off, n in self.extents:
            self.data += vol.dev.read_at(off, n)
        self._names: dict[str, int] | None = None          # casefolded name -> slot
        self._meta: dict[int, tuple[str | None, tuple[int, ...]]] = {}
        self._taken: set[bytes] = set()                      # 8.3 names in use
        self._duplicates = False

    @property
    def fixed(self) -> bool:
        return not self.clusters

    @property
    def slots(self) -> int:
        return len(self.data) // E

    def slot_offset(self, i: int) -> int:
        pos = i * E
        for off, n in self.extents:
            if pos < n:
                return off + pos
            pos -= n
        raise FormatError(f"directory slot {i} out of range", path=self.vol.path)

    def raw(self, i: int) -> bytes:
        return bytes(self.data[i * E:(i + 1) * E])

    def put_slot(self, i: int, entry: bytes | bytearray) -> None:
        """Write one slot, leaving the name index to the caller."""
        self.data[i * E:(i + 1) * E] = entry
        self.vol.dev.write_at(self.slot_offset(i), bytes(entry))

    def write_slot(self, i: int, entry: bytes | bytearray) -> None:
        self.put_slot(i, entry)
        self._names = None

    def items(self) -> Iterator[RawItem]:
        return scan(self.data)

    def entry_at(self, slot: int, parent_path: str = "/", long_name: str | None = None,
                 lfn_slots: tuple[int, ...] = ()) -> DirEntryInfo:
        return decode_entry(memoryview(self.data)[slot * E:(slot + 1) * E],
                            self.vol.layout.fat_type, long_name, "", self.slot_offset(slot),
                            slot, lfn_slots, self.first_cluster, parent_path)

    def entries(self, parent_path: str = "/") -> Iterator[DirEntryInfo]:
        """Every live 8.3 entry (dot entries and labels included), long names attached."""
        for item in self.items():
            if item.kind == "entry":
                yield self.entry_at(item.slot, parent_path, item.long_name, item.lfn_slots)

    # -- the name index ---------------------------------------------------------------------
    def _index(self) -> dict[str, int]:
        if self._names is None:
            self._names, self._meta, self._taken = {}, {}, set()
            self._duplicates = False
            for item in self.items():
                if item.kind == "entry":
                    self.index_add(item.slot, item.long_name, item.lfn_slots)
        return self._names

    def index_add(self, slot: int, long_name: str | None, lfn_slots: tuple[int, ...]) -> None:
        """Record the entry now stored at `slot` (when the index exists)."""
        names = self._names if self._names is not None else self._index()
        at = slot * E
        raw = bytes(self.data[at:at + 11])
        self._taken.add(raw)
        attr = self.data[at + 11]
        if raw[:1] == b"." or attr & ff.ATTR_VOLUME_ID and not attr & ff.ATTR_DIRECTORY:
            return
        self._meta[slot] = (long_name, lfn_slots)
        short = ff.format_short_name(raw)
        shown = long_name or ff.format_short_name(raw, self.data[at + 12])
        for key in {shown.casefold(), short.casefold()}:
            if names.setdefault(key, slot) != slot:
                self._duplicates = True

    def index_remove(self, info: DirEntryInfo) -> None:
        """Forget an entry that was just deleted."""
        if self._names is None:
            return
        if self._duplicates:
            self._names = None
            return
        self._taken.discard(info.raw_name)
        self._meta.pop(info.slot, None)
        for key in (info.name.casefold(), info.short_name.casefold()):
            if self._names.get(key) == info.slot:
                del self._names[key]

    def find(self, name: str, parent_path: str = "/") -> DirEntryInfo | None:
        """The file or directory called `name` (long or 8.3 name, any case)."""
        slot = self._index().get(name.casefold())
        if slot is None:
            return None
        return self.indexed_entry(slot, parent_path)

    def indexed_entry(self, slot: int, parent_path: str = "/") -> DirEntryInfo:
        """The entry at `slot`, with the long name the index recorded for it."""
        self._index()
        long_name, lfn_slots = self._meta[slot]
        return self.entry_at(slot, parent_path, long_name, lfn_slots)

    def taken_short_names(self) -> set[bytes]:
        self._index()
        return self._taken


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
        """The root directory's label entry (what DOS/Windows show), else the BPB's."""
        for info in self.directory(self.root_first_cluster).entries():
            if info.is_label and not info.has_long_name:
                return info.raw_name.decode("cp437").rstrip()
        return "" if self.layout.label == "NO NAME" else self.layout.label

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
