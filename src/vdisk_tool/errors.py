"""The exception hierarchy and the Finding record (leaf module: imports nothing from vdisk)."""
from __future__ import annotations

import enum
from dataclasses import dataclass


class VdiskError(Exception):
    """Base of every error vdisk raises on purpose; carries the file and byte offset."""

    def __init__(self, message: str, path: str | None = None, offset: int | None = None,
                 hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.path = path
        self.offset = offset
        self.hint = hint

    def __str__(self) -> str:
        parts = []
        if self.path:
            parts.append(str(self.path))
        if self.offset is not None:
            parts.append(f"at 0x{self.offset:x}")
        prefix = " ".join(parts)
        return f"{prefix}: {self.message}" if prefix else self.message


class FormatError(VdiskError):
    """Bytes that break a format's schema."""


class ImageError(VdiskError):
    """An image that cannot be opened or used: missing extent, broken chain, locked disk."""


class UnsupportedError(ImageError):
    """A recognised format or feature that vdisk does not handle."""


class WrongFormatError(UnsupportedError):
    """A file that is not what vdisk can open (another container, a package, an empty
    file, a .vmdk name without VMDK structure). `found` is the key of what it is
    (formats/containers.py), so a caller can route e.g. an OVF package elsewhere.
    The message reads as a sentence about the file: "<path> is a qcow2 image; ..."."""

    def __init__(self, message: str, path: str, found: str, hint: str | None = None) -> None:
        super().__init__(message, path=path, hint=hint)
        self.found = found

    def __str__(self) -> str:
        return f"{self.path} {self.message}"


class LockedError(ImageError):
    """The disk is held open by VMware (a .lck beside it)."""


class RefusedError(VdiskError):
    """An operation refused to protect data (shrink, bad firmware, parent of a snapshot...)."""


class RepairError(VdiskError):
    """A repair that could not be completed."""


class Severity(str, enum.Enum):
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


@dataclass(frozen=True)
class Finding:
    """One problem a check found. Codes are stable kebab-case, listed in specs/."""

    code: str
    severity: Severity
    message: str
    offset: int | None = None
    fixable: bool = False
    path: str | None = None

    def to_dict(self) -> dict[str, object]:
        return {
            "code": self.code,
            "severity": self.severity.value,
            "message": self.message,
            "offset": self.offset,
            "fixable": self.fixable,
            "path": self.path,
        }
