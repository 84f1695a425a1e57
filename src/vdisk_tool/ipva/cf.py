"""hd-cf, the emulated CompactFlash: grow it and reformat it keeping its files, as one
crash-safe step (ipva-model §2; the IPVA wiki procedure "back up the CF, enlarge the disk,
format it, put the files back").

The old image is not touched until a complete new one exists beside it and every file in
it has been compared with the original; then the new files are renamed over the old.
"""
from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ..errors import RefusedError, RepairError
from ..fs.check import check_volume
from ..fs.format import default_fat_type, format_volume
from ..fs.transfer import copy_tree
from ..fs.volume import FatVolume, open_volume
from ..image import platform
from ..image.create import create_image, like
from ..image.disk import open_image
from ..image.edit import temp_dir_for
from ..image.journal import recover
from ..image.safe import Replacement, check_unlocked

CF_LABEL = "IPVACF"
PARTITION_LBA = 2048
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class CfPlan:
    path: str
    subformat: str
    adapter: str
    old_bytes: int
    new_bytes: int
    keep_files: bool
    old_fat_type: int | None
    new_fat_type: int
    label: str
    files: int
    dirs: int
    data_bytes: int

    def describe(self) -> list[str]:
        out = [f"{self.path}: {self.subformat}, {self.old_bytes} -> {self.new_bytes} bytes",
               f"new volume: MBR + partition at LBA {PARTITION_LBA}, FAT{self.new_fat_type}, "
               f"label {self.label}"]
        if self.keep_files:
            out.append(f"copy {self.files} file(s) in {self.dirs} folder(s), {self.data_bytes} bytes, "
                       "keeping long names, attributes and timestamps; compare every file")
        else:
            out.append("no files are kept (the CF is formatted empty)")
        out.append("replace the old image only when the new one is complete")
        return out


def _volume_summary(vol: FatVolume) -> tuple[int, int, int]:
    files = dirs = total = 0
    for _d, kids in vol.walk("/"):
        for k in kids:
            if k.is_dir:
                dirs += 1
            else:
                files += 1
                total += k.size_bytes
    return files, dirs, total


def plan_cf(path: str, new_bytes: int | None, keep_files: bool = True,
            allow_outside: bool = False) -> CfPlan:
    """Read the CF and decide; refuse a shrink and a damaged volume (when keeping files)."""
    with open_image(path, allow_outside=allow_outside) as disk:
        shape = like(disk)
        old = disk.size_bytes
        target = old if new_bytes is None else -(-new_bytes // 512) * 512
        if target < old:
            raise RefusedError(f"shrinking the CF is not supported ({old} -> {target} bytes)", path=path)
        old_type, label = None, CF_LABEL
        files = dirs = data = 0
        if keep_files:
            vol = open_volume(disk, path=path)
            result = check_volume(vol)
            bad = [f for f in result.findings if f.severity.value == "error"]
            if bad:
                raise RefusedError(f"the CF volume is damaged ({bad[0].code}: {bad[0].message}); "
                                   "nothing was changed", path=path,
                                   hint="run `vdisk fs check --repair` first, or pass --no-keep-files")
            old_type = vol.layout.fat_type
            label = (vol.label or CF_LABEL).strip() or CF_LABEL
            if label.upper() == "NO NAME":
                label = CF_LABEL
            files, dirs, data = _volume_summary(vol)
    if target - PARTITION_LBA * 512 <= 0:
        raise RefusedError("the disk is too small for a partition at LBA 2048", path=path)
    new_type = default_fat_type(target - PARTITION_LBA * 512)
    return CfPlan(path, shape["subformat"], shape["adapter"], old, target, keep_files, old_type,
                  new_type, label, files, dirs, data)


def apply_cf(plan: CfPlan, *, force: bool = False, backup: str | None = None,
             progress: Progress | None = None, allow_outside: bool = False) -> None:
    """Build the new CF beside the old one, verify it, then swap it in."""
    with open_image(plan.path, allow_outside=allow_outside) as probe:
        files = probe.files
        template = probe.descriptor
    check_unlocked(files, force=force)
    recover(plan.path)   # the old content is read below: not half an interrupted edit
    work = temp_dir_for(plan.path)
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    try:
        scratch = os.path.join(work, "scratch.vmdk")
        create_image(scratch, plan.new_bytes, "monolithicSparse", plan.adapter)
        with open_image(scratch, writable=True) as new_disk:
            format_volume(new_disk, plan.new_fat_type, plan.label, partition=True, active=False)
            if plan.keep_files:
                with open_image(plan.path, allow_outside=allow_outside) as old_disk:
                    old_vol = open_volume(old_disk, path=plan.path)
                    new_vol = open_volume(new_disk, path=scratch)
                    copy_tree(old_vol, new_vol, progress=progress and (
                        lambda done, _t: progress(done, plan.data_bytes)))
                    new_vol.flush()
                    verify_copy(old_vol, new_vol)
            new_disk.flush()
        final = os.path.join(work, os.path.basename(plan.path))
        if plan.subformat == "monolithicSparse":
            platform.replace(scratch, final)
            written = [final]
        else:
            with open_image(scratch) as src:
                written = create_image(final, plan.new_bytes, plan.subformat, plan.adapter,
                                       source=src, template=template)
        rep = Replacement()
        folder = os.path.dirname(os.path.abspath(plan.path))
        for w in written:
            rep.add(w, os.path.join(folder, os.path.basename(w)))
        rep.commit(backup=backup)
        _remove_stale_extents(files, [t for _, t in rep.pairs])
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _remove_stale_extents(old_files: list[str], new_files: list[str]) -> None:
    """Extent files of the old layout that the new descriptor no longer names."""
    keep = {os.path.abspath(f) for f in new_files}
    for f in old_files:
        if os.path.abspath(f) not in keep and os.path.exists(f):
            os.unlink(f)


def verify_copy(old: FatVolume, new: FatVolume) -> None:
    """Every file and folder of `old` exists in `new` with the same bytes, attributes,
    timestamps and names; raise RepairError on the first difference. The two trees are
    walked side by side, each name looked up in the matching folder of `new`."""
    pending = [(old.root_info(), new.root_info())]
    seen: set[int] = set()
    while pending:
        od, nd = pending.pop()
        if od.first_cluster in seen:
            continue
        seen.add(od.first_cluster)
        folder = new.directory(nd.first_cluster)
        for k in old.children(od):
            try:
                n = new.lookup(folder, k.name, nd.path)
            except Exception as exc:  # noqa: BLE001 - any failure is a failed copy
                raise RepairError(f"{k.path} is missing from the new CF ({exc})") from None
            if n is None:
                raise RepairError(f"{k.path} is missing from the new CF (no such file or "
                                  "directory)")
            if (n.name, n.attributes, n.modified, n.created, n.is_dir) != (
                    k.name, k.attributes, k.modified, k.created, k.is_dir):
                raise RepairError(f"{k.path}: names, attributes or timestamps differ in the new CF")
            if k.is_dir:
                if k.first_cluster >= 2:
                    pending.append((k, n))
                continue
            if n.size_bytes != k.size_bytes:
                raise RepairError(f"{k.path}: size differs in the new CF")
            a, b = old.iter_file(k), new.iter_file(n)
            if not _same_stream(a, b):
                raise RepairError(f"{k.path}: content differs in the new CF")


def _same_stream(a: Iterable[bytes], b: Iterable[bytes]) -> bool:
    abuf = bbuf = b""
    ia, ib = iter(a), iter(b)
    while True:
        if not abuf:
            abuf = next(ia, b"")
        if not bbuf:
            bbuf = next(ib, b"")
        if not abuf and not bbuf:
            return True
        if not abuf or not bbuf:
            return False
        n = min(len(abuf), len(bbuf))
        if abuf[:n] != bbuf[:n]:
            return False
        abuf, bbuf = abuf[n:], bbuf[n:]
