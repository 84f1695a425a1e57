"""Repairing a FAT volume: the check with fixes applied, then a second check to confirm.
A dry run applies the fixes to an in-memory overlay, so it reports exactly what a real
repair would do and leaves the device untouched (specs/fat.md "Repairs")."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from ..errors import Finding, RepairError
from ..image.base import BlockDevice, Run, check_range
from .check import CheckResult, check_volume


class OverlayDevice:
    """Writes land in memory (by 512-byte sector); reads see them over the parent."""

    SECTOR = 512

    def __init__(self, parent: BlockDevice) -> None:
        self.parent = parent
        self.size_bytes = parent.size_bytes
        self.writable = True
        self._sectors: dict[int, bytes] = {}

    def read_at(self, offset: int, length: int) -> bytes:
        check_range(self, offset, length)
        s0, s1 = offset // self.SECTOR, -(-(offset + length) // self.SECTOR)
        if len(self._sectors) < s1 - s0:
            touched = any(s0 <= s < s1 for s in self._sectors)
        else:
            touched = any(s in self._sectors for s in range(s0, s1))
        if not touched:
            return self.parent.read_at(offset, length)
        base = s0 * self.SECTOR
        span = min(s1 * self.SECTOR, self.size_bytes) - base
        buf = bytearray(self.parent.read_at(base, span))
        for s, data in self._sectors.items():
            if s0 <= s < s1:
                pos = s * self.SECTOR - base
                buf[pos:pos + len(data)] = data[:span - pos]
        start = offset - base
        return bytes(buf[start:start + length])

    def write_at(self, offset: int, data: bytes) -> None:
        check_range(self, offset, len(data))
        end = offset + len(data)
        s = offset // self.SECTOR
        while s * self.SECTOR < end:
            lo = s * self.SECTOR
            n = min(self.SECTOR, self.size_bytes - lo)
            cur = bytearray(self.read_at(lo, n))
            a, b = max(lo, offset), min(lo + n, end)
            cur[a - lo:b - lo] = data[a - offset:b - offset]
            self._sectors[s] = bytes(cur)
            s += 1

    def runs(self) -> Iterator[Run]:
        return self.parent.runs()

    def flush(self) -> None:
        """Nothing reaches the parent."""

    def close(self) -> None:
        """The parent stays open."""


@dataclass(frozen=True)
class RepairResult:
    found: list[Finding]        # what the check found before repairing
    actions: list[str]          # what was (or, in a dry run, would be) done
    remaining: list[Finding]    # what a check after the repair still finds
    fat_copy: int

    def to_dict(self) -> dict[str, object]:
        return {"found": [f.to_dict() for f in self.found], "actions": self.actions,
                "remaining": [f.to_dict() for f in self.remaining],
                "trusted_fat": self.fat_copy + 1}


def repair_volume(dev: BlockDevice, partition: int | None = None, path: str | None = None,
                  dry_run: bool = False, discard_lost: bool = False) -> RepairResult:
    """Repair every fixable finding; raises RepairError when the volume cannot be opened
    even from a backup. With dry_run nothing is written to `dev`. Lost chains become files
    FSCKnnnn.REC in the root directory, or with `discard_lost` free space."""
    target: BlockDevice = OverlayDevice(dev) if dry_run else dev
    if not dry_run and not dev.writable:
        raise RepairError("device is read-only", path=path)
    first: CheckResult = check_volume(target, partition, path, fix=True,
                                      discard_lost=discard_lost)
    if any(f.code == "fat.boot-sector-invalid" and not f.fixable for f in first.findings):
        raise RepairError("the boot sector is unusable and has no good backup; nothing repaired",
                          path=path)
    after = check_volume(target, partition, path)
    return RepairResult(first.findings, first.actions, after.findings, first.fat_copy)
