"""The boot disk hd-boot (specs/ipva-firmware.md §Boot disk): one import for its whole API.

Verifying (find the volume and IPVA.BIN, read it through its cluster chain) lives in
`boot_verify`; writing (restore, rebuild, create) in `boot_restore`; the host-file reader
in `direct_reader`.
"""
from __future__ import annotations

from .boot_restore import (
    BOOT_FIRST_LBA,
    BOOT_LABEL,
    DEFAULT_BOOT_BYTES,
    MIN_BOOT_BYTES,
    REBUILD_CODES,
    ROOT_ENTRIES,
    RestorePlan,
    apply_restore,
    build_boot_image,
    check_new_firmware,
    create_boot_disk,
    format_boot_disk,
    plan_restore,
    rebuild_boot_disk,
)
from .boot_verify import (
    BOOT_FILE_NAME,
    BOOT_SLOT,
    MAX_FAT_COMPARE_BYTES,
    BootFile,
    BootVolume,
    ChainSource,
    ResolvedTarget,
    TargetKind,
    VerifyResult,
    boot_disk_of,
    find_volume,
    inspect_boot_volume,
    resolve_target,
    verify_boot_disk,
    verify_firmware_file,
    verify_target,
)
from .direct_reader import DirectReader

__all__ = [
    "BOOT_FILE_NAME", "BOOT_FIRST_LBA", "BOOT_LABEL", "BOOT_SLOT", "DEFAULT_BOOT_BYTES",
    "MAX_FAT_COMPARE_BYTES", "MIN_BOOT_BYTES", "REBUILD_CODES", "ROOT_ENTRIES",
    "BootFile", "BootVolume", "ChainSource", "DirectReader", "ResolvedTarget", "RestorePlan",
    "TargetKind", "VerifyResult",
    "apply_restore", "boot_disk_of", "build_boot_image", "check_new_firmware",
    "create_boot_disk", "find_volume", "format_boot_disk", "inspect_boot_volume",
    "plan_restore", "rebuild_boot_disk", "resolve_target", "verify_boot_disk",
    "verify_firmware_file", "verify_target",
]
