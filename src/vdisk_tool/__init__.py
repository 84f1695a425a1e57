"""vdisk: inspect and repair the virtual disks of the innovaphone Virtual Appliance.

The script entry points (open_image, open_fat, read_file, write_file, verify_firmware,
check_disk, open_bundle, check_bundle; see vdisk_tool.api) are imported on first use, so
`vdisk --version` stays fast.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from .api import (
        Bundle,
        Disk,
        check_bundle,
        check_disk,
        open_bundle,
        open_fat,
        open_image,
        read_file,
        verify_firmware,
        write_file,
    )

__all__ = ["__version__", "Disk", "Bundle", "open_image", "open_fat", "read_file", "write_file",
           "verify_firmware", "check_disk", "open_bundle", "check_bundle"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import api
        return getattr(api, name)
    raise AttributeError(f"module 'vdisk_tool' has no attribute {name!r}")
