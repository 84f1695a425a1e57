"""Changing a FAT volume: create, replace, delete and rename files and directories, set the
label; keep both FAT copies and the FAT32 FSInfo sector right (specs/fat.md "Writing")."""
from __future__ import annotations

import datetime as _dt
from collections.abc import Iterable, Iterator
from typing import IO, TYPE_CHECKING, Any, TypeVar

from .. import clock
from ..errors import FormatError, UnsupportedError
from ..formats import fat as ff
from .dirent import (
    DirEntryInfo,
    build_entry,
    encode_label,
    generate_short_name,
    plain_short_name,
    validate_long_name,
    with_cluster_and_size,
)

_Self = TypeVar("_Self")

if TYPE_CHECKING:
    from ..image.base import BlockDevice
    from .directory import Directory
    from .layout import FatLayout
    from .table import FatTable

__all__ = ["VolumeWriter", "boot_sectors", "encode_label", "write_boot_label"]

E = ff.DIR_ENTRY_BYTES
WRITE_CHUNK_BYTES = 512 << 10
MAX_FILE_BYTES = 0xFFFFFFFF
#: File content: bytes, a binary file object, or an iterable of byte strings.
Source = bytes | bytearray | memoryview | IO[bytes] | Iterable[bytes]


def boot_sectors(layout: FatLayout) -> list[int]:
    """Sector 0 and, on FAT32, its backup (BPB_BkBootSec) when the reserved area holds it."""
    backup = layout.backup_boot_sector
    return [0] + ([backup] if layout.fat_type == 32 and 0 < backup < layout.reserved_sectors
                  else [])


def write_boot_label(dev: BlockDevice, layout: FatLayout, raw: bytes) -> None:
    """Write BS_VolLab (11 bytes) into the boot sector and its backup, where the extended
    boot signature says the field exists (fatgen103 §3.2-3.3)."""
    t = layout.fat_type
    for s in boot_sectors(layout):
        base = s * layout.bytes_per_sector
        if dev.read_at(base + ff.BOOT_SIG_OFFSET[t], 1)[0] == ff.EXT_BOOT_SIGNATURE:
            dev.write_at(base + ff.BOOT_LABEL_OFFSET[t], raw)


class VolumeWriter:
    """Mutating operations of FatVolume (a mixin: it uses the volume's lookup methods,
    declared here for the type checker)."""

    if TYPE_CHECKING:
        dev: BlockDevice
        layout: FatLayout
        path: str | None
        fat: FatTable

        @property
        def writable(self) -> bool: ...
        @property
        def root_first_cluster(self) -> int: ...
        def stat(self, path: str) -> DirEntryInfo: ...
        def exists(self, path: str) -> bool: ...
        def listdir(self, path: str = "/") -> list[DirEntryInfo]: ...
        def directory(self, first_cluster: int) -> Directory: ...
        def forget(self, first_cluster: int | None = None) -> None: ...
        def lookup(self, directory: Directory, name: str, parent_path: str = "/"
                   ) -> DirEntryInfo | None: ...

    def __init__(self) -> None:
        self._mutated = False

    # -- plumbing -----------------------------------------------------------------------
    def _begin(self) -> None:
        if not self.writable:
            raise UnsupportedError("volume is open read-only", path=self.path)
        if not self._mutated and self.layout.fat_type == 32:
            fs = self._read_fsinfo()
            if fs is not None and 2 <= fs.next_free <= self.layout.max_cluster:
                self.fat.next_free_hint = fs.next_free
        self._mutated = True

    def _read_fsinfo(self) -> Any:
        lay = self.layout
        if lay.fat_type != 32 or not 0 < lay.fsinfo_sector < lay.reserved_sectors:
            return None
        fs = ff.FsInfo.parse(self.dev.read_at(lay.fsinfo_sector * lay.bytes_per_sector, 512))
        if (fs.lead_signature, fs.struct_signature) != (ff.FSINFO_LEAD_SIG, ff.FSINFO_STRUCT_SIG):
            return None
        return fs

    def flush(self) -> None:
        """Write changed FAT sectors to every copy, then the FSInfo free count and hint."""
        self.fat.flush()
        if self._mutated and self.layout.fat_type == 32:
            fs = self._read_fsinfo()
            if fs is not None:
                if fs.free_count <= self.layout.cluster_count:
                    free = fs.free_count + self.fat.free_delta
                    if not 0 <= free <= self.layout.cluster_count:
                        free = self.fat.count_free()
                else:
                    free = self.fat.count_free()
                self.fat.free_delta = 0
                hint = self.fat.next_free_hint
                if not 2 <= hint <= self.layout.max_cluster:
                    hint = 2
                off = self.layout.fsinfo_sector * self.layout.bytes_per_sector
                self.dev.write_at(off + 488, free.to_bytes(4, "little") + hint.to_bytes(4, "little"))
        self.dev.flush()

    def close(self) -> None:
        if self._mutated:
            self.flush()

    def __enter__(self: _Self) -> _Self:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.close()

    def _parent_and_name(self, path: str) -> tuple[DirEntryInfo, str]:
        from .volume import normalize_path
        parts = normalize_path(path)
        if not parts:
            raise FormatError("the root directory cannot be the target", path=self.path)
        parent = self.stat("/" + "/".join(parts[:-1]))
        if not parent.is_dir:
            raise FormatError(f"{parent.path} is not a directory", path=self.path)
        return parent, validate_long_name(parts[-1])

    # -- directory slots ------------------------------------------------------------------
    def _free_run(self, d: Directory, need: int, start: int = 0) -> int:
        """Index (from `start` on) of `need` consecutive free slots, growing a cluster
        directory if needed: the first run of deleted slots long enough, else the end marker
        (or `start`, when the end marker lies before it) when the room after it suffices."""
        firsts = bytes(d.data[0::E])          # the first byte of every slot
        end = firsts.find(0)
        deleted = firsts.find(bytes([ff.DELETED_MARK]) * need, start,
                              end if end >= 0 else len(firsts))
        if deleted >= 0:
            return deleted
        run_start = max(end, start) if end >= 0 else d.slots
        if d.slots - run_start >= need:
            return run_start
        if d.fixed:
            raise FormatError("the root directory is full", path=self.path)
        cb = self.layout.cluster_bytes
        while d.slots - run_start < need:
            if len(d.data) + cb > 65536 * E:
                raise FormatError("directory is full (65,536 entries)", path=self.path)
            new = self.fat.allocate(1, after=d.clusters[-1])[0]
            self.dev.write_at(self.layout.cluster_offset(new), bytes(cb))
            d.clusters.append(new)
            d.extents.append((self.layout.cluster_offset(new), cb))
            d.data += bytes(cb)
        return run_start

    def _insert(self, d: Directory, name: str, template: bytes) -> int:
        """Place an entry for `name` made from the 32-byte `template` (name bytes replaced),
        with long-name entries when the name is not a plain 8.3 name; returns its slot."""
        taken = d.taken_short_names()
        plain = plain_short_name(name)
        lfns: list[bytes] = []
        if plain is not None and plain[0] not in taken:
            short, nt = plain
        else:
            short, nt = generate_short_name(name, taken), 0
            lfns = ff.build_lfn_entries(name, short)
        entry = bytearray(template)
        entry[0:11] = short
        entry[12] = nt
        idx = self._free_run(d, len(lfns) + 1)
        at_end = d.data[idx * E] == 0
        for k, raw in enumerate([*lfns, bytes(entry)]):
            d.put_slot(idx + k, raw)
        slot = idx + len(lfns)
        if at_end and slot + 1 < d.slots and d.data[(slot + 1) * E] != 0:
            d.put_slot(slot + 1, bytes(E))
        d.index_add(slot, name if lfns else None, tuple(range(idx, slot)))
        return slot

    def _erase(self, d: Directory, info: DirEntryInfo) -> None:
        for slot in (*info.lfn_slots, info.slot):
            raw = bytearray(d.raw(slot))
            raw[0] = ff.DELETED_MARK
            d.put_slot(slot, raw)
        d.index_remove(info)

    # -- content ---------------------------------------------------------------------------
    def _pieces(self, source: Source, chunk_bytes: int) -> Iterator[bytes | memoryview]:
        """The content in pieces of `chunk_bytes` (a multiple of the cluster size), the
        last one shorter."""
        if isinstance(source, (bytes, bytearray, memoryview)):
            view = memoryview(source).cast("B")
            for i in range(0, len(view), chunk_bytes):
                yield view[i:i + chunk_bytes]
            return
        if hasattr(source, "read"):
            reader: IO[bytes] = source  # type: ignore[assignment]
            yield from iter(lambda: reader.read(chunk_bytes), b"")
            return
        cb = self.layout.cluster_bytes
        parts: list[bytes] = []
        have = 0
        for piece in source:
            if not parts and len(piece) % cb == 0:
                yield piece                # whole clusters: no copy
                continue
            parts.append(piece)
            have += len(piece)
            if have >= chunk_bytes:
                joined = b"".join(parts)
                n = have // cb * cb
                yield joined if n == have else joined[:n]
                parts = [joined[n:]] if n < have else []
                have -= n
        if parts:
            yield b"".join(parts)

    def _write_content(self, source: Source) -> tuple[int, int]:
        """Write data into newly allocated clusters; returns (first cluster, size)."""
        cb = self.layout.cluster_bytes
        chunk_bytes = max(cb, WRITE_CHUNK_BYTES // cb * cb)
        base = self.layout.data_offset - 2 * cb
        first, last, size = 0, None, 0
        for piece in self._pieces(source, chunk_bytes):
            if not piece:
                continue
            size += len(piece)
            if size > MAX_FILE_BYTES:
                raise FormatError("file larger than FAT's 4 GiB - 1 limit", path=self.path)
            runs = self.fat.allocate_runs(-(-len(piece) // cb), after=last)
            first = first or runs[0][0]
            last = runs[-1][0] + runs[-1][1] - 1
            if len(runs) == 1:
                self._write_padded(base + runs[0][0] * cb, piece, runs[0][1] * cb)
                continue
            view, pos = memoryview(piece), 0
            for c, n in runs:
                self._write_padded(base + c * cb, view[pos:pos + n * cb], n * cb)
                pos += n * cb
        return first, size

    def _write_padded(self, offset: int, data: bytes | memoryview, room: int) -> None:
        """Write `data` at `offset` and zeros after it up to `room` bytes (the rest of its
        last cluster)."""
        if data:
            self.dev.write_at(offset, data if isinstance(data, bytes) else bytes(data))
        if len(data) < room:
            self.dev.write_at(offset + len(data), bytes(room - len(data)))

    # -- public operations ---------------------------------------------------------------
    def write_file(self, path: str, source: Source,
                   mtime: _dt.datetime | None = None, attributes: int = ff.ATTR_ARCHIVE,
                   created: _dt.datetime | None = None, accessed: _dt.date | None = None,
                   raw_entry: bytes | None = None) -> DirEntryInfo:
        """Create or replace a file. `raw_entry` (a 32-byte 8.3 entry) carries attributes
        and all timestamps over unchanged, for copying between volumes."""
        self._begin()
        parent, name = self._parent_and_name(path)
        d = self.directory(parent.first_cluster)
        old = self.lookup(d, name, parent.path)
        if old is not None and old.is_dir:
            raise FormatError(f"{old.path} is a directory", path=self.path)
        if old is not None and old.first_cluster >= 2:
            self.fat.free_chain(old.first_cluster)
        first, size = self._write_content(source)
        when = mtime or clock.now()
        if old is not None:
            entry = bytearray(with_cluster_and_size(old.raw_entry, first, size))
            if raw_entry is not None:
                entry[11:32] = with_cluster_and_size(raw_entry, first, size)[11:32]
            else:
                stamp = ff.encode_dos_datetime(when)
                entry[22:26] = stamp.time.to_bytes(2, "little") + stamp.date.to_bytes(2, "little")
                entry[18:20] = stamp.date.to_bytes(2, "little")
                entry[11] |= ff.ATTR_ARCHIVE
            d.put_slot(old.slot, entry)
            slot = old.slot
        else:
            if raw_entry is not None:
                template = with_cluster_and_size(raw_entry, first, size)
            else:
                template = build_entry(b" " * 11, attributes, first, size, when, created, accessed)
            slot = self._insert(d, name, template)
        self.fat.flush()
        return self._entry(d, slot, parent.path)

    def _entry(self, d: Directory, slot: int, parent_path: str) -> DirEntryInfo:
        """The entry just written at `slot` of `d`, as a lookup would return it."""
        return d.indexed_entry(slot, parent_path)

    def mkdir(self, path: str, parents: bool = False, exist_ok: bool = False,
              mtime: _dt.datetime | None = None, raw_entry: bytes | None = None) -> DirEntryInfo:
        """Create a directory with its '.' and '..' entries."""
        self._begin()
        if parents:
            from .volume import normalize_path
            parts = normalize_path(path)
            for i in range(1, len(parts)):
                sub = "/" + "/".join(parts[:i])
                if not self.exists(sub):
                    self.mkdir(sub, mtime=mtime)
        parent, name = self._parent_and_name(path)
        d = self.directory(parent.first_cluster)
        old = self.lookup(d, name, parent.path)
        if old is not None:
            if old.is_dir and (exist_ok or parents):
                return old
            raise FormatError(f"{old.path} already exists", path=self.path)
        when = mtime or clock.now()
        cluster = self.fat.allocate(1)[0]
        if raw_entry is not None:
            template = with_cluster_and_size(raw_entry, cluster, 0)
        else:
            template = build_entry(b" " * 11, ff.ATTR_DIRECTORY, cluster, 0, when)
        body = bytearray(self.layout.cluster_bytes)
        dot = bytearray(template)
        dot[0:11], dot[12] = b".          ", 0
        dotdot = bytearray(with_cluster_and_size(template, parent.first_cluster
                                                 if parent.first_cluster != self.root_first_cluster
                                                 else 0, 0))
        dotdot[0:11], dotdot[12] = b"..         ", 0
        body[0:E], body[E:2 * E] = dot, dotdot
        self.dev.write_at(self.layout.cluster_offset(cluster), bytes(body))
        self.forget(cluster)
        slot = self._insert(d, name, template)
        self.fat.flush()
        return self._entry(d, slot, parent.path)

    def remove(self, path: str, recursive: bool = False) -> None:
        """Delete a file, or a directory (empty unless recursive)."""
        self._begin()
        info = self.stat(path)
        if info.path == "/":
            raise FormatError("cannot remove the root directory", path=self.path)
        if info.is_dir:
            kids = self.listdir(info.path)
            if kids and not recursive:
                raise FormatError(f"{info.path} is not empty", path=self.path)
            for k in kids:
                self.remove(k.path, recursive=True)
            info = self.stat(path)
            self.forget(info.first_cluster)
        if info.first_cluster >= 2:
            self.fat.free_chain(info.first_cluster)
        self._erase(self.directory(info.parent_cluster), info)
        self.fat.flush()

    def rename(self, src: str, dst: str) -> DirEntryInfo:
        """Rename or move a file or directory (dst names the new path, not a folder to
        move into)."""
        self._begin()
        info = self.stat(src)
        if info.path == "/":
            raise FormatError("cannot rename the root directory", path=self.path)
        parent, name = self._parent_and_name(dst)
        if info.is_dir and (parent.path + "/").startswith(info.path.rstrip("/") + "/"):
            raise FormatError(f"cannot move {info.path} into itself", path=self.path)
        target = self.lookup(self.directory(parent.first_cluster), name, parent.path)
        if target is not None and target.entry_offset != info.entry_offset:
            raise FormatError(f"{target.path} already exists", path=self.path)
        self._erase(self.directory(info.parent_cluster), info)
        self._insert(self.directory(parent.first_cluster), name, info.raw_entry)
        if info.is_dir and info.first_cluster >= 2 and info.parent_cluster != parent.first_cluster:
            sub = self.directory(info.first_cluster)
            if sub.raw(1)[:2] == b"..":
                new_parent = 0 if parent.first_cluster == self.root_first_cluster \
                    else parent.first_cluster
                sub.write_slot(1, with_cluster_and_size(sub.raw(1), new_parent, 0))
        self.fat.flush()
        return self.stat(f"{parent.path.rstrip('/')}/{name}")

    def set_label(self, label: str) -> None:
        """Set (or with '' remove) the volume label in the root directory and the BPB."""
        self._begin()
        raw = encode_label(label)
        write_boot_label(self.dev, self.layout, raw if label else ff.NO_NAME_LABEL)
        d = self.directory(self.root_first_cluster)
        current = next((i for i in d.entries() if i.is_label and not i.has_long_name), None)
        if current is not None:
            if label:
                entry = bytearray(current.raw_entry)
                entry[0:11] = raw
                d.write_slot(current.slot, bytes(entry))
            else:
                self._erase(d, current)
        elif label:
            label_entry = build_entry(raw, ff.ATTR_VOLUME_ID, 0, 0, clock.now())
            idx = self._free_run(d, 1)
            at_end = d.data[idx * E] == 0
            d.write_slot(idx, label_entry)
            if at_end and idx + 1 < d.slots and d.data[(idx + 1) * E] != 0:
                d.write_slot(idx + 1, bytes(E))
        self.fat.flush()
