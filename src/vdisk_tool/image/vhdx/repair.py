"""`vdisk check --repair` of a VHDX file: what the format itself makes safe.

A damaged header or region table copy is rewritten from the good one (image/repair.py
applies those as TableFix copies under the undo journal). A pending log is replayed as
MS-VHDX §2.3.3 says: opening the file writable applies the active sequence, extends the
file to LastFileOffset, flushes, then clears LogGuid in both headers; replay is
idempotent, so an interruption leaves a log that is replayed again.
"""
from __future__ import annotations

from ..safe import Replacement, check_unlocked


def replay_log(path: str, *, force: bool = False, backup: str | None = None,
               allow_outside: bool = False):
    """Replay the log of `path` into the file; returns the check of the result."""
    from ..check import check_image
    from .device import VhdxDevice
    check_unlocked([path], force=force)
    if backup:
        Replacement([(path, path)]).keep_backup(backup)
    VhdxDevice(path, writable=True).close()
    return check_image(path, allow_outside=allow_outside)
