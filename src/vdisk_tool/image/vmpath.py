"""File names as VMware writes them, on every host (specs/platform.md §Names).

A descriptor's extent names and parentFileNameHint, and a vmx's `fileName`, are written
with the separators of the host that wrote them: `hd-boot-flat.vmdk`, `sub\\hd.vmdk`,
`C:\\VMs\\ipva\\hd-boot-flat.vmdk`, `\\\\nas\\vms\\base.vmdk`, `/vmfs/volumes/ds1/x.vmdk`.
Both separators split a name on any host. A drive letter or a UNC name is absolute, so
it lies outside the image's folder; on a host other than Windows it cannot be opened.
Where the folder's file system ignores case (NTFS, APFS, FAT), a name is matched whatever
its case (and Unicode normalisation: macOS keeps names decomposed).
"""
from __future__ import annotations

import enum
import os
import re
import unicodedata
from dataclasses import dataclass

from . import platform

_DRIVE = re.compile(r"^[A-Za-z]:")


class NameKind(str, enum.Enum):
    RELATIVE = "relative"      # hd-boot-flat.vmdk, sub\hd.vmdk
    ROOTED = "rooted"          # /vmfs/volumes/ds1/x.vmdk, \VMs\x.vmdk
    DRIVE = "drive"            # C:\VMs\x.vmdk (or C:x.vmdk, relative to a drive's folder)
    UNC = "unc"                # \\server\share\x.vmdk


@dataclass(frozen=True)
class VmName:
    text: str                  # as written
    kind: NameKind
    parts: tuple[str, ...]     # the components after the drive or share, "." dropped

    @property
    def outside(self) -> bool:
        """Absolute, or climbing out with `..`: not inside the folder of its owner."""
        return self.kind is not NameKind.RELATIVE or ".." in self.parts

    @property
    def windows_only(self) -> bool:
        return self.kind in (NameKind.DRIVE, NameKind.UNC)


def parse_name(text: str) -> VmName:
    norm = text.replace("\\", "/")
    if norm.startswith("//"):
        kind = NameKind.UNC
    elif _DRIVE.match(norm):
        kind, norm = NameKind.DRIVE, norm[2:]
    elif norm.startswith("/"):
        kind = NameKind.ROOTED
    else:
        kind = NameKind.RELATIVE
    return VmName(text, kind, tuple(p for p in norm.split("/") if p not in ("", ".")))


def to_host(base_dir: str, name: VmName) -> str:
    """The host path a name stands for, relative names against `base_dir`, matched
    whatever their case where the file system ignores it."""
    if name.kind is NameKind.RELATIVE:
        return match_case(os.path.join(base_dir, *name.parts))
    if platform.FEATURES.windows or not name.windows_only:
        if name.kind is NameKind.ROOTED:
            return os.path.normpath(os.sep + os.sep.join(name.parts))
        return os.path.normpath(name.text)
    return name.text    # a Windows path on another host: it names no file here


def _key(name: str) -> str:
    return unicodedata.normalize("NFC", name).casefold()


def match_case(path: str) -> str:
    """`path`, or the one entry of its folder whose name equals it but for case (and
    normalisation) when the folder's file system ignores case."""
    if os.path.lexists(path):
        return path
    folder, name = os.path.split(path)
    if not name or not os.path.isdir(folder or ".") or not platform.case_insensitive(folder or "."):
        return path
    want = _key(name)
    found = [e for e in _entries(folder) if _key(e) == want]
    return os.path.join(folder, found[0]) if len(found) == 1 else path


def _entries(folder: str) -> list[str]:
    try:
        return os.listdir(folder or ".")
    except OSError:
        return []


def missing_hint(name: VmName, path: str) -> str:
    """Why a named file is not there, when something can be said (appended to 'is missing')."""
    if name.windows_only and not platform.FEATURES.windows:
        return " (a Windows path, which names no file on this host: put the file beside " \
               "the descriptor and name it without a folder)"
    folder, base = os.path.split(path)
    twins = [e for e in _entries(folder) if e != base and _key(e) == _key(base)]
    if twins:
        return (f" ({twins[0]!r} differs only in case, and this file system tells case apart: "
                "rename the file or the name)")
    return ""

