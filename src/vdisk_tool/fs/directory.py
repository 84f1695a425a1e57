"""One directory of a FAT volume held in memory: its slots, their device offsets, and an
index of its names for lookups (specs/fat.md "Directories")."""
from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from ..errors import FormatError
from ..formats import fat as ff
from .dirent import DirEntryInfo, RawItem, decode_entry, scan

if TYPE_CHECKING:
    from .volume import FatVolume

E = ff.DIR_ENTRY_BYTES
MAX_DIR_BYTES = 65536 * E          # fatgen103: at most 65,536 entries per directory


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
