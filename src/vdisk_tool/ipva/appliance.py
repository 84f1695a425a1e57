"""Writing a whole appliance for a target (specs/platforms.md §Writing): the destination
checks, the temporary folder beside it that is renamed into place at the end, the
attachment each platform needs beside its disks, and the check of every converted disk
against its source.
"""
from __future__ import annotations

import glob
import os
import shutil
import warnings

from .. import clock
from ..errors import FormatError, LockedError, RefusedError
from ..image import platform, safe
from ..image.base import BlockDevice
from ..image.check import check_image
from ..image.info import compare_devices
from ..image.safe import LockOverrideWarning
from .attachments import (
    DEFAULT_VMWARE_NIC,
    VMWARE_NIC_OF_QEMU,
    Machine,
    PlatformOptions,
    build_hyperv_script,
    build_qm_conf,
    nic_for,
    read_hyperv_machine,
    read_qm_machine,
)
from .bundle import PERFCTR_KEY, Bundle, format_mac, format_uuid_bios
from .ova_write import write_ova
from .targets import ROLES, TargetSpec
from .vmx import IDE_ROLES, Vmx

PLATFORM_CONFIGS = {".conf": "proxmox", ".ps1": "hyperv"}


def find_platform_config(path: str) -> tuple[str, str] | None:
    """(configuration, "proxmox"|"hyperv") of a folder vdisk wrote for Proxmox VE or
    Hyper-V (one `*.conf` or `*.ps1` and no vmx), or of such a file itself."""
    if os.path.isfile(path):
        kind = PLATFORM_CONFIGS.get(os.path.splitext(path)[1].lower())
        return (path, kind) if kind else None
    if not os.path.isdir(path) or glob.glob(os.path.join(glob.escape(path), "*.vmx")):
        return None
    for ext, kind in PLATFORM_CONFIGS.items():
        found = sorted(glob.glob(os.path.join(glob.escape(path), "*" + ext)))
        if len(found) == 1:
            return found[0], kind
    return None


def read_platform_config(config: str, kind: str) -> tuple[Machine, dict[str, str]]:
    """The machine and the disk path of each role that a qm configuration or Hyper-V
    script vdisk wrote names; disks must lie beside it."""
    try:
        with open(config, encoding="utf-8") as f:
            text = f.read(1 << 20)
        reader = read_qm_machine if kind == "proxmox" else read_hyperv_machine
        m, files = reader(text)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise FormatError(f"not a {kind} appliance vdisk can read: {exc}", path=config) from None
    folder = os.path.dirname(os.path.abspath(config))
    disks = {}
    for role, name in files.items():
        if os.path.basename(name) != name or name in (".", ".."):
            raise RefusedError(f"the {role} disk {name!r} is not a file beside the "
                               "configuration", path=config)
        disks[role] = os.path.join(folder, name)
    return m, disks


def open_platform_bundle(path: str) -> Bundle | None:
    """A Proxmox or Hyper-V folder seen as a bundle for the doctor: a vmx made in memory
    from its configuration (slots, MAC, memory, vCPUs; the NIC by its VMware name where
    the device is the same). None when `path` is no such folder or file."""
    found = find_platform_config(path)
    if found is None:
        return None
    m, disks = read_platform_config(*found)
    nic = VMWARE_NIC_OF_QEMU.get((m.nic or "").lower(), m.nic) if found[1] == "proxmox" \
        else DEFAULT_VMWARE_NIC           # no public NIC requirement for Hyper-V
    text = vmx_for_machine(m, "workstation", {r: os.path.basename(p) for r, p in disks.items()},
                           nic=nic or DEFAULT_VMWARE_NIC)
    vmx = Vmx(text.encode("utf-8"), path=found[0])
    return Bundle(found[0], vmx)


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
    platform.replace(work, dest)
    safe.fsync_dir(dest)


def attachment_name(spec: TargetSpec, m: Machine, opts: PlatformOptions) -> str:
    """The file that tells the platform how to run the disks."""
    return {"qm": f"{opts.vmid}.conf", "hyperv": f"{m.name}.ps1"}.get(spec.attachment,
                                                                      f"{m.name}.vmx")


def vmx_for_machine(m: Machine, target: str, names: dict[str, str], nic: str | None = None
                    ) -> str:
    """A vmx holding every key ipva-model §6 asks for, with the machine's size and identity
    (the NIC: `nic`, else the machine's device under its VMware name)."""
    net = ('ethernet0.networkName = "VM Network"' if target == "vsphere"
           else 'ethernet0.connectionType = "bridged"')
    lines = [
        '.encoding = "UTF-8"', 'config.version = "8"', 'virtualHW.version = "7"',
        f'displayName = "{_q(m.name)}"', 'guestOS = "other"', f'memsize = "{m.memsize_mb}"',
        f'numvcpus = "{m.cpus}"', f'{PERFCTR_KEY} = "TRUE"',
    ]
    for slot, role in IDE_ROLES.items():
        lines += [f'{slot}.present = "TRUE"', f'{slot}.fileName = "{_q(names[role])}"']
    model = nic or nic_for(target, m.nic, None)
    lines += ['ethernet0.present = "TRUE"', f'ethernet0.virtualDev = "{_q(model)}"', net]
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
