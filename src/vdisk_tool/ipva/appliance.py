"""Writing a whole appliance for a target (specs/platforms.md §Writing): the destination
checks, the temporary folder beside it that is renamed into place at the end, the
attachment each platform needs beside its disks, and the check of every converted disk
against its source.
"""
from __future__ import annotations

import os
import shutil
import warnings

from .. import clock
from ..errors import LockedError, RefusedError
from ..image import safe
from ..image.base import BlockDevice
from ..image.check import check_image
from ..image.info import compare_devices
from ..image.safe import LockOverrideWarning
from .attachments import (
    Machine,
    PlatformOptions,
    build_hyperv_script,
    build_qm_conf,
    nic_for,
)
from .bundle import PERFCTR_KEY, format_mac, format_uuid_bios
from .ova_write import write_ova
from .targets import ROLES, TargetSpec
from .vmx import IDE_ROLES


def new_uuid(mac: int) -> bytes:
    """A random uuid.bios whose last three bytes are the MAC's (as set-mac keeps them)."""
    return clock.token_bytes(13) + mac.to_bytes(6, "big")[3:]


def refuse_running(locks: list[str], force: bool) -> None:
    """A source with a VMware lock beside it is running: refuse (or warn under --force)."""
    if locks and not force:
        raise RefusedError(f"{os.path.basename(locks[0])} exists: the source VM is running",
                           path=locks[0], hint="power it off first (or --force for a stale lock)")
    if locks:
        warnings.warn(f"{os.path.basename(locks[0])} exists (the source VM may be running); "
                      "continuing because of --force", LockOverrideWarning, stacklevel=3)


def empty_destination(folder: str) -> None:
    """Refuse a destination that exists and is not an empty folder, or holds a lock."""
    if os.path.isdir(folder):
        locks = sorted(n for n in os.listdir(folder) if n.endswith(".lck") or n.startswith(".lck-"))
        if locks:
            raise LockedError(f"{locks[0]} exists in the destination: a VM there is running",
                              path=folder, hint="choose a new folder for the bundle")
    if os.path.lexists(folder) and (not os.path.isdir(folder) or os.listdir(folder)):
        raise RefusedError("exists and is not an empty folder; refusing to overwrite it",
                           path=folder, hint="choose a new folder for the bundle")


def work_folder(dest: str) -> str:
    """A fresh hidden folder beside `dest` (same file system, so the rename is atomic)."""
    dest = os.path.abspath(dest)
    work = os.path.join(os.path.dirname(dest), f".{os.path.basename(dest)}{safe.TMP_MARK}{os.getpid()}")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    return work


def install(work: str, dest: str) -> None:
    """Rename the finished folder into place (an empty destination folder is replaced)."""
    for name in os.listdir(work):
        safe.fsync_path(os.path.join(work, name))
    if os.path.isdir(dest):
        os.rmdir(dest)
    os.rename(work, dest)
    safe.fsync_dir(dest)


def attachment_name(spec: TargetSpec, m: Machine, opts: PlatformOptions) -> str:
    """The file that tells the platform how to run the disks."""
    return {"qm": f"{opts.vmid}.conf", "hyperv": f"{m.name}.ps1"}.get(spec.attachment,
                                                                      f"{m.name}.vmx")


def vmx_for_machine(m: Machine, target: str, names: dict[str, str]) -> str:
    """A vmx holding every key ipva-model §6 asks for, with the machine's size and identity."""
    net = ('ethernet0.networkName = "VM Network"' if target == "vsphere"
           else 'ethernet0.connectionType = "bridged"')
    lines = [
        '.encoding = "UTF-8"', 'config.version = "8"', 'virtualHW.version = "7"',
        f'displayName = "{_q(m.name)}"', 'guestOS = "other"', f'memsize = "{m.memsize_mb}"',
        f'numvcpus = "{m.cpus}"', f'{PERFCTR_KEY} = "TRUE"',
    ]
    for slot, role in IDE_ROLES.items():
        lines += [f'{slot}.present = "TRUE"', f'{slot}.fileName = "{_q(names[role])}"']
    lines += ['ethernet0.present = "TRUE"', f'ethernet0.virtualDev = "{nic_for(target, m.nic, None)}"',
              net]
    if m.mac is not None:
        lines += ['ethernet0.addressType = "static"', f'ethernet0.address = "{format_mac(m.mac)}"',
                  f'uuid.bios = "{format_uuid_bios(m.uuid_bios or new_uuid(m.mac))}"']
    else:
        lines.append('ethernet0.addressType = "generated"')
    return "\n".join(lines) + "\n"


def _q(text: str) -> str:
    return "".join(c for c in text if c >= " " and c not in '"|')


def write_attachment(work: str, spec: TargetSpec, m: Machine, opts: PlatformOptions,
                     names: dict[str, str], sizes: dict[str, int],
                     vmx_text: str | None = None) -> None:
    """The vmx (and for ova the .ovf, .mf and .ova), the qm configuration or the Hyper-V
    script, in `work` beside the disks `names`. `vmx_text` replaces the generated vmx (a
    converted bundle carries its own keys)."""
    path = os.path.join(work, attachment_name(spec, m, opts))
    if spec.attachment == "qm":
        text = build_qm_conf(m, opts, {r: (names[r], sizes[r]) for r in ROLES})
    elif spec.attachment == "hyperv":
        text = build_hyperv_script(m, opts, names, os.path.basename(path))
    else:
        text = vmx_text if vmx_text is not None else vmx_for_machine(m, spec.name, names)
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write(text)
    if spec.attachment == "ova":
        write_ova(work, m, {r: (os.path.join(work, names[r]), sizes[r]) for r in ROLES})


def verify_copy(src: BlockDevice, out: str) -> None:
    """The written disk checks clean and reads the same bytes as its source."""
    from ..image.disk import open_image
    report = check_image(out)
    if not report.clean:
        raise RefusedError(f"the converted disk does not check clean: "
                           f"{report.findings[0].message}", path=out)
    with open_image(out) as new:
        res = compare_devices(src, new)
    if not res.same:
        raise RefusedError(f"the converted disk differs from its source at byte "
                           f"{res.first_difference}", path=out)
