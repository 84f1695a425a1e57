"""The entry points a script needs, re-exported lazily by `import vdisk_tool`: open an
image, open the FAT volume inside it, read and write a file there, verify the firmware,
check a disk, open and check an appliance bundle. Everything here is the library the
`vdisk` command runs; edits are crash-safe in the same way (image.edit)."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from .image.disk import Disk, open_image
from .ipva.bundle import Bundle, open_bundle

if TYPE_CHECKING:
    from .fs.volume import FatVolume
    from .image.check import CheckReport
    from .ipva.boot_verify import VerifyResult
    from .ipva.doctor_model import Report

__all__ = ["Disk", "Bundle", "open_image", "open_fat", "read_file", "write_file",
           "verify_firmware", "check_disk", "open_bundle", "check_bundle"]


@contextmanager
def open_fat(image: str, partition: int | None = None) -> Iterator[FatVolume]:
    """The FAT volume inside a raw or VMDK image, read-only: partition N (1-based) of its
    MBR, or the only FAT volume. `listdir`, `stat`, `walk`, `read_file` and `label` read it."""
    from .fs.volume import open_volume
    with open_image(image) as disk:
        yield open_volume(disk, partition, image)


def read_file(image: str, path: str, partition: int | None = None) -> bytes:
    """The bytes of `path` (e.g. "/IPVA.BIN") on the image's FAT volume."""
    with open_fat(image, partition) as vol:
        return vol.read_file(path)


def write_file(image: str, path: str, data: bytes, partition: int | None = None, *,
               backup: str | None = None, force: bool = False) -> None:
    """Create or replace `path` on the image's FAT volume with `data`, crash-safely (the
    image holds the old volume or the new one, never a mix). `backup` keeps the old image
    files; a disk VMware holds open is refused unless `force`."""
    from .fs.volume import open_volume
    from .image.edit import edit_image
    with edit_image(image, force=force, backup=backup) as disk:
        vol = open_volume(disk, partition, image)
        vol.write_file(path, data)
        vol.flush()


def verify_firmware(target: str) -> VerifyResult:
    """Check the firmware the boot loader would load from a boot disk, a bare ipva.bin, an
    appliance folder or its .vmx: header, size, sections, CRCs. `.ok` says if it boots."""
    from .ipva.boot_verify import verify_target
    return verify_target(target)


def check_disk(path: str) -> CheckReport:
    """Walk all metadata of a raw or VMDK image; `.clean` and `.findings` say what is wrong
    (a check reports, it does not raise for what it finds)."""
    from .image.check import check_image
    return check_image(path)


def check_bundle(dir_or_vmx: str) -> Report:
    """Every appliance check `vdisk bundle check` runs; `.healthy` and `.issues`."""
    from .ipva.doctor import check_bundle as run
    return run(dir_or_vmx)
