"""Which reader a file gets: one decision, made from its magic and structure
(specs/vmdk.md §Identification).

As in qemu-img, raw is the fallback for bytes that look like no container, and
`-f raw|vmdk|qcow2|vhdx` overrides the guess. Two rules go beyond qemu-img: a file named `*.vmdk`
that has no VMDK structure is refused (it is a lost descriptor or a flat extent opened
by mistake, not a disk), and an empty file is never a disk.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from ..errors import FormatError, ImageError, UnsupportedError, WrongFormatError
from ..formats import containers as ct

FORMATS = ("raw", "vmdk", "qcow2", "vhdx")
FORMAT_LIST = "raw, vmdk, qcow2 or vhdx"
READS = "vdisk reads VMDK, qcow2, VHDX and raw images"


# -f given for a file the user named: honoured wherever that file is opened during the
# command (check, repair, edits, the appliance commands), not for the files it refers to
_FORCED: ContextVar[tuple[tuple[str, str], ...]] = ContextVar("vdisk_forced_formats", default=())


@contextmanager
def forced_format(path: str | os.PathLike[str] | None, fmt: str | None) -> Iterator[None]:
    """Within the block, open `path` as `fmt` (one of FORMATS) whatever its bytes say."""
    if path is None or fmt is None:
        yield
        return
    if fmt not in FORMATS:
        raise UnsupportedError(f"unknown format {fmt!r}; -f takes {FORMAT_LIST}")
    token = _FORCED.set((*_FORCED.get(), (os.path.realpath(path), fmt)))
    try:
        yield
    finally:
        _FORCED.reset(token)


def detect(path: str) -> ct.Container:
    """What the file at `path` is, from its first and last bytes."""
    try:
        with open(path, "rb") as f:
            head = f.read(ct.HEAD_BYTES)
            file_bytes = os.fstat(f.fileno()).st_size
            tail = b""
            if file_bytes > len(head):
                f.seek(max(0, file_bytes - ct.TAIL_BYTES))
                tail = f.read(ct.TAIL_BYTES)
            else:
                tail = head[-ct.TAIL_BYTES:]
    except IsADirectoryError:
        raise ImageError("is a folder, not an image", path=path) from None
    except OSError as exc:
        raise ImageError(f"cannot open: {exc.strerror}", path=path) from None
    return ct.identify(head, tail, file_bytes)


def choose_format(path: str, forced: str | None = None) -> tuple[str, ct.Container]:
    """('vmdk', 'qcow2', 'vhdx' or 'raw', what was found) for the file at `path`; raises for
    anything vdisk cannot read, naming what the file is."""
    forced = forced or dict(_FORCED.get()).get(os.path.realpath(path))
    if forced is not None and forced not in FORMATS:
        raise UnsupportedError(f"unknown format {forced!r}; -f takes {FORMAT_LIST}", path=path)
    found = detect(path)
    if found is ct.EMPTY:
        raise WrongFormatError("is empty (0 bytes): not a disk image", path, found.key)
    if forced == "raw":
        return "raw", found
    if found.family is ct.Family.VMDK:
        return "vmdk", found
    if found is ct.VHDX and forced in (None, "vhdx"):
        return "vhdx", found
    if forced == "vhdx":
        raise WrongFormatError(f"is {found.name}, not a VHDX image (-f vhdx)", path, found.key)
    if found.family is ct.Family.VMDK_UNSUPPORTED:
        _refuse_vmdk_kind(path, found)
    if found is ct.QCOW2:
        if forced in (None, "qcow2"):
            return "qcow2", found
    elif forced == "qcow2":
        raise WrongFormatError(f"is {found.name}, not a qcow2 image (-f qcow2)", path, found.key)
    if forced == "vmdk":
        raise WrongFormatError(f"is {found.name}, not a VMDK (-f vmdk)", path, found.key)
    if found.family is ct.Family.PACKAGE:
        raise WrongFormatError(f"is {found.name}, not a disk image; `vdisk bundle check` and "
                               "`vdisk verify` take packages", path, found.key)
    if found.family is ct.Family.FOREIGN:
        raise WrongFormatError(f"is {found.name}; {READS}", path, found.key,
                               hint=_foreign_hint(path, found))
    if path.lower().endswith(".vmdk"):
        raise WrongFormatError(f"is named .vmdk but has no VMDK structure (it holds "
                               f"{found.name})", path, found.key,
                               hint="if it is a flat extent, open its descriptor; pass "
                                    "-f raw to read it as a raw image")
    return "raw", found


def _foreign_hint(path: str, found: ct.Container) -> str | None:
    if found is ct.VHD_FIXED:
        return (f"convert it first (qemu-img convert -O vmdk {path} disk.vmdk), or pass -f raw "
                "to read its disk bytes and the 512-byte footer after them")
    if found.key in ("qcow", "vhdx", "vhd-dynamic", "vhd-fixed", "vdi", "qed"):
        return f"convert it first, e.g. qemu-img convert -O vmdk {path} disk.vmdk"
    if found.family is ct.Family.FOREIGN and found.key != "luks":
        return "decompress it first"
    return None


def _refuse_vmdk_kind(path: str, found: ct.Container) -> None:
    """The VMDK kinds vdisk recognises but does not read: one precise line each."""
    if found is ct.COWD:
        raise UnsupportedError("vmfsSparse (COWD) delta extents are not supported; consolidate "
                               "the snapshot on the ESXi host first", path=path)
    if found is ct.SESPARSE:
        raise UnsupportedError("seSparse snapshot extents are not supported; consolidate the "
                               "snapshot on the ESXi host first", path=path)
    if found is ct.SPARSE_UNFINISHED:
        raise FormatError("magic is 'kdmv': an interrupted conversion left this file unfinished",
                          path=path, offset=0)
    with open(path, "rb") as f:
        magic = f.read(4)
    raise FormatError(f"SparseExtentHeader.magicNumber at 0x0: expected 'KDMV', got {magic!r} "
                      "(the rest is a sparse header: the magic is damaged)", path=path, offset=0)
