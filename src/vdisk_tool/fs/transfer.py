"""Moving files between a FAT volume and the host, or between two volumes.

Names read from a volume are never trusted as host paths: `safe_host_name` turns each
into one harmless path component (specs/fat.md "Extraction")."""
from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO

from ..errors import FormatError, RefusedError
from ..image import platform
from .dirent import DirEntryInfo
from .volume import FatVolume

_DRIVE = re.compile(r"^[A-Za-z]:")
_UNSAFE = re.compile(r'[\x00-\x1f\x7f/\\:*?"<>|]')


def safe_host_name(name: str) -> str:
    """One path component safe to create on the host: no separators, no drive letter, no
    control characters, never '.' or '..' or empty."""
    clean = _DRIVE.sub(lambda m: m.group(0)[0] + "_", name)
    clean = _UNSAFE.sub("_", clean)
    if clean.strip(" .") == "":
        clean = "_" + clean.replace(".", "_") if clean else "_"
    return clean


def _create(path: str, overwrite: bool = True) -> BinaryIO:
    """Open a host file for writing without following a symbolic link at `path`."""
    if os.path.islink(path):
        raise RefusedError("refusing to write through a symbolic link", path=path)
    if not overwrite and os.path.lexists(path):
        raise RefusedError("exists; refusing to overwrite it", path=path,
                           hint="pass --overwrite to replace it")
    try:
        fd = platform.open_fd(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, nofollow=True)
    except OSError as exc:
        raise RefusedError(f"cannot create: {platform.describe(exc)}", path=path) from None
    return os.fdopen(fd, "wb")


@dataclass(frozen=True)
class Extracted:
    files: int
    dirs: int
    bytes: int
    renamed: tuple[tuple[str, str], ...]   # (volume path, host name) where sanitised


def _copy_out(vol: FatVolume, info: DirEntryInfo, out: BinaryIO) -> int:
    n = 0
    for piece in vol.iter_file(info):
        out.write(piece)
        n += len(piece)
    return n


def extract(vol: FatVolume, path: str, dest: str,
            progress: Callable[[int, int], None] | None = None, *,
            overwrite: bool = True) -> Extracted:
    """Copy a file or a directory tree from the volume to the host path `dest` (a directory
    tree is created under `dest`; an existing directory `dest` receives the item). Existing
    host files are replaced only if `overwrite`."""
    info = vol.stat(path)
    renamed: list[tuple[str, str]] = []
    files = dirs = total = 0
    top = dest
    if os.path.isdir(dest) and info.path != "/":
        name = safe_host_name(info.name)
        if name != info.name:
            renamed.append((info.path, name))
        top = os.path.join(dest, name)
    if not info.is_dir:
        with _create(top, overwrite) as f:
            total = _copy_out(vol, info, f)
        return Extracted(1, 0, total, tuple(renamed))
    root = os.path.realpath(top)
    os.makedirs(top, exist_ok=True)
    for d, kids in vol.walk(info.path):
        rel = os.path.relpath(d.path, info.path) if d.path != info.path else ""
        here = os.path.join(top, *[safe_host_name(p) for p in rel.split("/") if p and p != "."])
        dirs += 1
        used: set[str] = set()
        for k in kids:
            name = safe_host_name(k.name)
            base, n = name, 1
            while name.casefold() in used:
                name = f"{base}~{n}"
                n += 1
            used.add(name.casefold())
            if name != k.name:
                renamed.append((k.path, name))
            target = os.path.join(here, name)
            if not os.path.realpath(target).startswith(root + os.sep):
                raise FormatError(f"{k.path}: refusing to write outside {top}")
            if k.is_dir:
                os.makedirs(target, exist_ok=True)
                continue
            with _create(target, overwrite) as f:
                total += _copy_out(vol, k, f)
            files += 1
            if progress:
                progress(total, 0)
    return Extracted(files, dirs, total, tuple(renamed))


def copy_tree(src: FatVolume, dst: FatVolume, path: str = "/",
              progress: Callable[[int, int], None] | None = None) -> int:
    """Recreate every file and directory under `path` of `src` on `dst`, keeping long names,
    attributes and the create/modify/access stamps. Returns the bytes copied."""
    total = 0
    for _d, kids in src.walk(path):
        for k in kids:
            if k.is_dir:
                dst.mkdir(k.path, raw_entry=k.raw_entry)
            else:
                dst.write_file(k.path, src.iter_file(k), raw_entry=k.raw_entry)
                total += k.size_bytes
                if progress:
                    progress(total, 0)
    dst.flush()
    return total
