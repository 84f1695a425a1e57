"""`vdisk bundle check PACKAGE`: is this download intact, and will it boot?
(specs/ovf.md §Check).

The package's own structure (members, References, the manifest's digests), then its
settings presented as vmx keys and judged by the doctor's vmx rules (same codes, same boot
messages), then every disk checked in place inside the package: its VMDK metadata, its
capacity against the DiskSection, and the role checks (firmware, CF volume, flash, dump).
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import replace

from ..errors import Severity, VdiskError
from ..image.check import CheckReport, check_disk
from . import doctor
from .boot_verify import ResolvedTarget, TargetKind, VerifyResult, verify_boot_device
from .bundle import Bundle
from .doctor_disks import MSG_FIRMWARE, check_cf, check_dump, check_flash, check_flash_capacity
from .doctor_model import Context, DiskContext, DiskReport, Issue, Report, adopt, issue
from .ova import STREAM_FORMAT, Package, extra_config_refused, open_package, vmx_text
from .ova_tar import Member
from .vmx import Vmx

E, W, INFO = Severity.ERROR, Severity.WARNING, Severity.INFO
VMX_RULES = (doctor.check_keys, doctor.check_nic, doctor.check_memory, doctor.check_slots)
ROLE_CHECKS = (check_flash_capacity, check_cf, check_flash, check_dump)
Progress = Callable[[str], None]


def package_vmx(pkg: Package) -> Vmx:
    """The package's settings as the vmx the doctor's rules read."""
    return Vmx(vmx_text(pkg).encode("utf-8"), pkg.path)


def check_package(path: str, progress: Progress | None = None) -> Report:
    say = progress or (lambda _m: None)
    with open_package(path) as pkg:
        issues = [Issue(f, "package") for f in pkg.findings]
        issues += _references(pkg)
        say("manifest")
        issues += _manifest(pkg)
        vmx = package_vmx(pkg)
        ctx = Context(Bundle(pkg.path, vmx), pkg.path)
        for rule in VMX_RULES:
            issues += [_package_fix(i, pkg) for i in rule(ctx)
                       if i.code != "bundle.disk-missing"]
        for key, _value in pkg.envelope.extra_config:
            why = extra_config_refused(key)
            if why:
                issues.append(issue("ova.extraconfig-refused", W, f"ExtraConfig key {key!r} {why}; "
                                    "deploy does not carry it into the vmx", "package", path=path))
        disks = []
        for d in pkg.disks():
            if d.slot == "?":
                issues.append(issue("ova.disk-unplaced", E, f"disk {d.disk_id} is not attached "
                                    "to a controller slot (rasd:Parent / rasd:AddressOnParent)",
                                    "package", path=path))
                continue
            if d.role is None or d.member is None:
                continue
            say(f"{d.slot} {d.role}")
            rep, found = _check_disk(ctx, pkg, d.slot)
            disks.append(rep)
            issues += found
    return Report(path, tuple(issues), tuple(disks))


def _package_fix(i: Issue, pkg: Package) -> Issue:
    """The vmx rules' fix commands apply to a bundle; for a package they apply after deploy."""
    if i.fix and "bundle set-mac" in i.fix:
        return replace(i, fix=f"vdisk bundle deploy {pkg.path} DIR --new-mac")
    if i.fix and "--fix" in i.fix:
        return replace(i, fix=f"vdisk bundle deploy {pkg.path} DIR, then vdisk bundle check "
                              "DIR --fix (or correct the OVF and its manifest digest)")
    return i


def _references(pkg: Package) -> Iterator[Issue]:
    for f in pkg.envelope.files:
        m = pkg.member(f.href)
        if m is None:
            yield issue("ova.file-missing", E, f"References names {f.href!r} (id {f.file_id}), "
                        "which the package does not hold", "package", path=pkg.path)
        elif f.size_bytes is not None and f.size_bytes != m.length_bytes:
            yield issue("ova.file-size", E, f"{f.href}: References says {f.size_bytes} bytes, "
                        f"the package holds {m.length_bytes}", "package", path=pkg.path)
        if f.compression:
            yield issue("ova.file-compressed", E, f"{f.href} is {f.compression}-compressed in "
                        "the package; vdisk reads uncompressed members only", "package",
                        path=pkg.path)


def digest(m: Member, algorithm: str) -> str:
    """The hex digest of a member, read in 1 MiB pieces."""
    h = hashlib.new(algorithm.lower())
    with open(m.path, "rb") as f:
        f.seek(m.offset)
        left = m.length_bytes
        while left:
            chunk = f.read(min(left, 1 << 20))
            if not chunk:
                break
            h.update(chunk)
            left -= len(chunk)
    return h.hexdigest()


def _manifest(pkg: Package) -> Iterator[Issue]:
    if pkg.manifest is None:
        yield issue("ova.manifest-missing", W, f"no {pkg.ovf_name[:-4]}.mf manifest: the download "
                    "cannot be checked for damage", "package", path=pkg.path)
        return
    mf = pkg.manifest
    try:
        entries, bad = pkg.manifest_entries()
    except VdiskError as exc:
        yield issue("ova.manifest-malformed", E, exc.message, "package", path=pkg.label(mf.name))
        return
    for n, text in bad:
        yield issue("ova.manifest-malformed", E, f"line {n} is not 'SHA1|SHA256|SHA512(name)= "
                    f"hex': {text!r}", "package", path=pkg.label(mf.name))
    listed = set()
    for e in entries:
        m = pkg.member(e.name)
        listed.add(e.name)
        if m is None:
            yield issue("ova.manifest-absent", E, f"the manifest lists {e.name!r}, which the "
                        "package does not hold", "package", path=pkg.label(mf.name))
            continue
        got = digest(m, e.algorithm)
        if got != e.digest:
            yield issue("ova.digest-mismatch", E, f"{e.name}: {e.algorithm} is {got}, the manifest "
                        f"says {e.digest}: the member is damaged or was changed",
                        "package", path=pkg.label(e.name),
                        fix="download the package again")
    for m in pkg.members:
        if m is not mf and m.name not in listed and not m.name.lower().endswith((".cert",)):
            yield issue("ova.manifest-unlisted", W, f"{m.name} is not listed in the manifest: "
                        "its integrity cannot be checked", "package", path=pkg.label(m.name))


def _check_disk(ctx: Context, pkg: Package, slot_name: str) -> tuple[DiskReport, list[Issue]]:
    d = pkg.disk_for(slot_name)
    assert d is not None and d.member is not None and d.role is not None
    label, role = pkg.label(d.member.name), d.role
    found: list[Issue] = []
    if d.format and not d.format.lower().endswith(STREAM_FORMAT):
        found.append(issue("ova.disk-format", W, f"{d.member.name}: DiskSection format is "
                           f"{d.format!r}, not VMware's streamOptimized", role, path=label))
    try:
        disk = pkg.open_disk(slot_name)
    except (VdiskError, OSError) as exc:
        return DiskReport(slot_name, role, label), found + [issue(
            "bundle.disk-unreadable", E, f"{role} disk cannot be opened: {exc}", role, path=label)]
    with disk:
        if disk.size_bytes != d.capacity_bytes:
            found.append(issue("ova.capacity-mismatch", E, f"DiskSection says {d.capacity_bytes} "
                               f"bytes for {d.member.name}, its header holds {disk.size_bytes}",
                               role, path=label))
        slot = ctx.vmx.slot(slot_name)
        assert slot is not None
        dctx = DiskContext(slot, role, label, disk)
        for f in check_disk(pkg.open_disk(slot_name), CheckReport(label)).findings:
            if f.code != "vmdk.leftover-temp":
                found.append(adopt(f, dctx))
        found += _role_checks(ctx, dctx)
        rep = DiskReport(slot_name, role, label, disk.size_bytes, disk.subformat, (label,))
    return rep, found


def _role_checks(ctx: Context, d: DiskContext) -> list[Issue]:
    out: list[Issue] = []
    if d.role == "boot":
        res = ResolvedTarget(TargetKind.DISK, d.path, ctx.bundle.vmx_path)
        for f in verify_boot_device(d.disk, d.path, res).findings:
            bad = f.severity == E
            loader = bad and (f.code.startswith("fw.") or f.code.startswith("boot.chain"))
            out.append(adopt(f, d, None, MSG_FIRMWARE if loader else None))
    for check in ROLE_CHECKS:
        if d.role not in _roles_of(check):
            continue
        try:
            out += list(check(ctx, d))
        except (VdiskError, OSError) as exc:
            out.append(issue("bundle.check-failed", E, f"{check.__name__} could not read the "
                             f"{d.role} disk: {exc}", d.role, path=d.path))
    return out


def _roles_of(check: Callable[..., object]) -> tuple[str, ...]:
    return next((roles for roles, fn in doctor.DISK_CHECKS if fn is check), ())


def verify_package(path: str, progress: Callable[[int, int], None] | None = None
                   ) -> VerifyResult:
    """`vdisk verify PACKAGE`: the firmware on the package's boot disk (ide0:0)."""
    with open_package(path) as pkg, pkg.open_disk("ide0:0") as disk:
        res = ResolvedTarget(TargetKind.DISK, disk.path, path)
        return verify_boot_device(disk, path, res, progress)

