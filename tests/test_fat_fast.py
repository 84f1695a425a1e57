"""The fast paths of the FAT layer held against the construct schemas and the real tools:
struct decoding of directory entries, FAT arrays across chunk boundaries, contiguous
allocation in fragmented free space, the per-directory name index across many writes."""
from __future__ import annotations

import os
import random
import subprocess
from pathlib import Path

from conftest import need_tool
from fatutil import MIB, fsck_clean, make_fragmented, mkfs, mt, mtype
from hypothesis import given, settings
from hypothesis import strategies as st

from vdisk_tool.formats import fat as ff
from vdisk_tool.fs.dirent import decode_entry
from vdisk_tool.fs.table import CHUNK_BYTES
from vdisk_tool.fs.volume import open_volume
from vdisk_tool.image.base import FileDevice


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=32, max_size=32), st.sampled_from([12, 16, 32]))
def test_struct_decoder_matches_construct_schema(raw: bytes, fat_type: int) -> None:
    d = ff.DirectoryEntry.parse(raw)
    info = decode_entry(raw, fat_type)
    assert info.raw_name == d.name and info.attributes == d.attributes
    assert info.size_bytes == d.file_size and info.raw_entry == raw
    hi = d.first_cluster_high if fat_type == 32 else 0
    assert info.first_cluster == (hi << 16) | d.first_cluster_low
    assert info.created == ff.decode_dos_datetime(d.create_date, d.create_time,
                                                  d.create_time_tenth)
    assert info.modified == ff.decode_dos_datetime(d.write_date, d.write_time)
    acc = ff.decode_dos_datetime(d.access_date)
    assert info.accessed == (acc.date() if acc else None)
    assert info.name == ff.format_short_name(d.name, d.nt_reserved)
    assert info.short_name == ff.format_short_name(d.name)


def _free_in_fsinfo(img: Path, offset: int) -> int:
    with open(img, "rb") as f:
        f.seek(offset + 512 + 488)
        return int.from_bytes(f.read(4), "little")


def test_large_file_across_fat_chunks_in_fragmented_space(tmp_path: Path) -> None:
    """A file of more clusters than one FAT chunk holds, written into free space broken by
    mtools, reads back through mtype; fsck.fat finds the FATs and FSInfo consistent."""
    img = tmp_path / "v.img"
    off = mkfs(img, 48 * MIB, 32, partition=True, extra=("-s", "1"))
    frag = make_fragmented(img, off, tmp_path, 512)
    per_chunk = CHUNK_BYTES // 4
    data = random.Random(5).randbytes(per_chunk * 512 + 777)   # > one chunk of entries
    with FileDevice(str(img), writable=True) as dev:
        vol = open_volume(dev)
        free_before = vol.fat.count_free()
        vol.write_file("/big.bin", data)
        vol.write_file("/small.txt", b"after the big one")
        vol.flush()
        chain = vol.file_chain(vol.stat("/big.bin"))
        assert chain[0] < per_chunk < chain[-1]          # crosses a chunk boundary
        runs = vol.cluster_runs(chain)
        assert len(runs) < len(chain) // 100              # mostly contiguous
        used = -(-len(data) // 512) + 1
        assert vol.fat.count_free() == free_before - used
    assert _free_in_fsinfo(img, off) == free_before - used
    fsck_clean(img, off)
    assert mtype(img, off, "big.bin") == data
    assert mtype(img, off, "frag.bin") == frag
    with FileDevice(str(img), writable=True) as dev:
        vol = open_volume(dev)
        vol.remove("/big.bin")
        vol.flush()
        assert vol.fat.count_free() == free_before - 1
    fsck_clean(img, off)


def test_name_index_across_many_writes(tmp_path: Path) -> None:
    """Hundreds of similar long names in one folder (numeric-tail 8.3 names), replaced,
    renamed and removed in one session: lookups stay right and mtools lists the same."""
    need_tool("mdir")
    img = tmp_path / "v.img"
    off = mkfs(img, 64 * MIB, 16, partition=True)
    names = [f"Report of the month {i:03d}.txt" for i in range(260)]
    with FileDevice(str(img), writable=True) as dev:
        vol = open_volume(dev)
        vol.mkdir("/Folder With Many Files")
        for n in names:
            vol.write_file(f"/Folder With Many Files/{n}", n.encode())
        for n in names[::7]:                                  # replace in place
            vol.write_file(f"/Folder With Many Files/{n.upper()}", b"new " + n.encode())
        for n in names[1::5]:
            vol.remove(f"/Folder With Many Files/{n}")
        for n in names[2::5]:
            vol.rename(f"/Folder With Many Files/{n}", f"/Folder With Many Files/moved {n}")
        vol.write_file("/Folder With Many Files/after.txt", b"reuses a deleted slot")
        vol.flush()
        expect: dict[str, bytes] = {}
        for i, n in enumerate(names):
            content = (b"new " if i % 7 == 0 else b"") + n.encode()
            if i % 5 == 1:
                continue
            expect[f"moved {n}" if i % 5 == 2 else n] = content
        expect["after.txt"] = b"reuses a deleted slot"
        listed = {k.name: vol.read_file(k.path) for k in vol.listdir("/Folder With Many Files")}
        assert listed == expect
        shorts = [k.raw_name for k in vol.listdir("/Folder With Many Files")]
        assert len(shorts) == len(set(shorts))
    fsck_clean(img, off)
    env = dict(os.environ, MTOOLS_SKIP_CHECK="1")
    out = subprocess.run(["mdir", "-i", mt(img, off), "-b", "::/Folder With Many Files"],
                         check=True, capture_output=True, env=env, text=True).stdout
    got = {line.rsplit("/", 1)[-1] for line in out.splitlines() if line.strip()}
    assert got == set(expect)
    for name in ("after.txt", f"moved {names[2]}", names[14]):
        assert mtype(img, off, f"Folder With Many Files/{name}") == expect[name]
