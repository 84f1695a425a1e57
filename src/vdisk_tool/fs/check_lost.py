"""Lost clusters: FAT entries in use that no file or directory reaches. A repair saves each
lost chain as a file FSCK0000.REC, FSCK0001.REC, ... in the root directory (the names of
`fsck.fat -f`), so that nothing is lost; with `discard` it frees them, as `fsck.fat -a`
does (specs/fat.md "Corruption scenarios")."""
from __future__ import annotations

from typing import TYPE_CHECKING

from .. import clock
from ..errors import FormatError
from ..formats import fat as ff
from .dirent import build_entry

if TYPE_CHECKING:
    from .check import _Walk

MAX_FILE_BYTES = 0xFFFFFFFF


def check_lost(w: _Walk, discard: bool) -> None:
    vol, fat = w.vol, w.vol.fat
    bad, used = ff.BAD_CLUSTER[vol.fat_type], w.used
    found = [(c, v) for c, v in fat.entries() if not used[c] and v != bad]
    if not found:
        return
    lost = [c for c, _v in found]
    targets = {v for _c, v in found}
    heads = [c for c in lost if c not in targets]
    n_chains = max(len(heads), 1)
    act = (f"free {len(lost)} lost cluster(s)" if discard else
           f"save {len(lost)} lost cluster(s) in {n_chains} chain(s) as FSCKnnnn.REC "
           "file(s) in the root directory")
    w.add("fat.lost-clusters", f"{len(lost)} cluster(s) in {n_chains} chain(s) belong to "
          "no file", vol.layout.fat_entry_offset(lost[0]), None, action=act)
    if not w.fix:
        return
    if discard:
        for c in lost:
            fat.set(c, 0)
        return
    chains = _chains(w, lost, heads)
    root = vol.directory(vol.root_first_cluster)
    before = list(root.clusters)
    for i, chain in enumerate(chains):
        name = _free_rec_name(root.taken_short_names())
        size = min(len(chain) * vol.layout.cluster_bytes, MAX_FILE_BYTES)
        template = build_entry(name, ff.ATTR_ARCHIVE, chain[0], size, clock.now())
        try:
            vol._insert(root, ff.format_short_name(name), template)
        except FormatError as exc:
            rest = [c for ch in chains[i:] for c in ch]
            for c in rest:
                fat.set(c, 0)
            w.actions.append(f"{exc.message}: freed the {len(rest)} lost cluster(s) left")
            break
    for c in root.clusters[len(before):]:
        used[c] = 1


def _chains(w: _Walk, lost: list[int], heads: list[int]) -> list[list[int]]:
    """Split the lost clusters into chains, each ending in an end mark: from each head (a
    cluster no lost cluster points to), then from what is left (loops are broken)."""
    fat = w.vol.fat
    lost_set = set(lost)
    taken: set[int] = set()
    chains: list[list[int]] = []
    for start in [*heads, *lost]:
        if start in taken:
            continue
        chain: list[int] = []
        c = start
        while c in lost_set and c not in taken:
            taken.add(c)
            chain.append(c)
            nxt = fat.get(c)
            if fat.is_eoc(nxt):
                break
            c = nxt
        if not fat.is_eoc(fat.get(chain[-1])):
            fat.set(chain[-1], fat.eoc)
        for k in chain:
            w.used[k] = 1
        chains.append(chain)
    return chains


def _free_rec_name(taken: set[bytes]) -> bytes:
    for n in range(10_000):
        cand = f"FSCK{n:04d}REC".encode()
        if cand not in taken:
            return cand
    raise FormatError("no free FSCKnnnn.REC name in the root directory")
