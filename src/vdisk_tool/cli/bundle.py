"""The `bundle` group: the whole appliance (vmx + four IDE disks): check, set-mac, create,
clone, deploy, convert."""
from __future__ import annotations

import typer

from ..errors import Severity, VdiskError
from ..ipva import convert as bundle_convert
from ..ipva import doctor, golden, ova_check, ova_deploy
from ..ipva.appliance import find_platform_config
from ..ipva.attachments import PlatformOptions
from ..ipva.bundle import (
    CHECK_MAC_KEY,
    VmxFix,
    apply_mac,
    apply_vmx_fixes,
    format_mac,
    in_static_range,
    mac_state,
    open_bundle,
    parse_mac,
    plan_vmx_fixes,
    random_static_mac,
    relpath_in,
    validate_static_mac,
)
from ..ipva.packages import is_package
from .app import app
from .choices import DeployTarget, NicModel, Target, value
from .common import (
    COMPRESSION_LEVEL,
    EXIT_FINDINGS,
    EXIT_OK,
    EXIT_USAGE,
    MODE,
    emit_json,
    fail,
    handle_errors,
    parse_size,
    progress,
    say,
    warn,
)

grp = typer.Typer(help="The whole appliance: its vmx and its four IDE disks.", no_args_is_help=True)
app.add_typer(grp, name="bundle")

TARGET = typer.Argument(..., help="The appliance folder, or its .vmx file (check also takes "
                        "an .ova, .ovf or .zip package).")
JSON = typer.Option(False, "--json", help="Print the result as JSON.")
DRY_RUN = typer.Option(False, "--dry-run", help="Print the vmx changes as a diff; write nothing.")
BACKUP = typer.Option(None, "--backup", help="Keep the old vmx under this name.")
FORCE = typer.Option(False, "--force", help="Edit even though a VMware lock (.lck) exists.")
TARGET_HELP = ("workstation (monolithicSparse + vmx), vsphere (vmfs + -flat + vmx), ova "
               "(streamOptimized + .ovf + .ova), proxmox (qcow2 + <vmid>.conf), hyperv (VHDX + "
               "a PowerShell script making a generation 1 VM).")
NIC_MODEL = typer.Option(None, "--nic-model", help="NIC model of the target: vlance or vmxnet3 "
                         "(VMware); pcnet, vmxnet3, e1000, e1000e, virtio or rtl8139 (proxmox); "
                         "legacy or synthetic (hyperv). Default: the source's device (PCnet for a "
                         "new appliance); innovaphone publishes none for Proxmox or Hyper-V.")
CPUS = typer.Option(None, "--cpus", help="vCPUs (default: the source's, 1 for a new appliance).")
VMID = typer.Option(100, "--vmid", help="Proxmox VM id: names <vmid>.conf and vm-<vmid>-hd-*.qcow2.")
STORAGE = typer.Option("local", "--storage", help="Proxmox storage the qm configuration names.")
BRIDGE = typer.Option("vmbr0", "--bridge", help="Proxmox bridge of net0.")
SWITCH = typer.Option("", "--switch", help="Hyper-V virtual switch the script connects (default: "
                      "none; the script takes -SwitchName too).")


def _platform(nic_model: NicModel | None, vmid: int, storage: str, bridge: str, switch: str
              ) -> PlatformOptions:
    if not 100 <= vmid <= 999999999:
        raise fail(f"--vmid {vmid}: Proxmox VM ids are 100 to 999999999", EXIT_USAGE)
    return PlatformOptions(value(nic_model), vmid, storage, bridge, switch)


def _check_mac(ctx: typer.Context, text: str | None) -> str | None:
    """A --mac outside the static range (or no MAC at all) is a usage error (exit 2);
    set-mac also takes the bundle's current MAC, to freeze it."""
    if text is not None:
        try:
            if ctx.info_name == "set-mac":
                parse_mac(text)
            else:
                validate_static_mac(text)
        except VdiskError as exc:
            raise typer.BadParameter(f"{exc}" + (f" ({exc.hint})" if exc.hint else "")) from None
    return text


def _size(n: int | None) -> str:
    if n is None:
        return "?"
    return f"{n / (1 << 20):.1f} MiB" if n < (1 << 30) else f"{n / (1 << 30):.2f} GiB"


def _print_report(rep: doctor.Report) -> None:
    folder = rep.vmx_path.rsplit("/", 1)[0] if "/" in rep.vmx_path else "."
    typer.echo(f"appliance: {rep.vmx_path}")
    for d in rep.disks:
        name = relpath_in(folder, d.path) if d.path else "-"
        chain = f"  (snapshot of {' -> '.join(relpath_in(folder, p) for p in d.chain[1:])})" \
            if len(d.chain) > 1 else ""
        typer.echo(f"  {d.slot} {d.role:<5} {name}  {_size(d.capacity_bytes)}  "
                   f"{d.subformat or ''}{chain}")
    for i in rep.issues:
        typer.echo(f"{i.severity.value}: {i.code}: {i.finding.message}")
        if i.boot_message:
            typer.echo(f"  boot message: {i.boot_message}")
        if i.fix:
            typer.echo(f"  fix: {i.fix}")
    problems = [i for i in rep.issues if i.severity != Severity.INFO]
    if not problems:
        typer.echo("healthy")
    else:
        errors = sum(1 for i in problems if i.severity == Severity.ERROR)
        typer.echo(f"{len(problems)} problem(s): {errors} error(s), {len(problems) - errors} warning(s)")


@grp.command()
@handle_errors
def check(target: str = TARGET, json_out: bool = JSON,
          fix: bool = typer.Option(False, "--fix", help="Apply the safe vmx fixes (perfctr, NIC "
                                   "model -> vlance, memsize rounding); disk repairs stay with "
                                   "their own commands."),
          dry_run: bool = DRY_RUN, backup: str | None = BACKUP, force: bool = FORCE) -> None:
    """Check the whole appliance: vmx keys, IDE slots, MAC, memory, locks and every disk.
    Each problem comes with the boot message it causes and the command that fixes it.
    Exit 0 healthy, 1 problems.

    Example: vdisk bundle check ./ipva --fix --dry-run
    """
    applied: list[VmxFix] = []
    if fix and is_package(target):
        raise fail("a package is not changed in place; deploy it (vdisk bundle deploy) and fix "
                   "the bundle", EXIT_USAGE)
    if fix and find_platform_config(target) is not None:
        raise fail("a Proxmox or Hyper-V folder has no vmx to fix; change its .conf or .ps1, or "
                   "convert it again with the options you need (vdisk bundle convert)", EXIT_USAGE)
    if fix:
        b = open_bundle(target)
        plan = plan_vmx_fixes(b.vmx)
        apply_vmx_fixes(b.vmx, plan)
        if dry_run:
            if json_out:
                emit_json({"vmx": b.vmx_path, "dry_run": True, "fixes": [f.to_dict() for f in plan],
                           "diff": b.vmx.diff()})
            else:
                typer.echo(b.vmx.diff() or "nothing to fix in the vmx", nl=False)
            raise typer.Exit(EXIT_OK)
        if plan:
            for w in b.vmx.save(force=force, backup=backup):
                warn(w)
        applied = plan
    rep = ova_check.check_package(target) if is_package(target) else doctor.check_bundle(target)
    if json_out:
        out = rep.to_dict()
        if fix:
            out["fixed"] = [f.to_dict() for f in applied]
        emit_json(out)
    else:
        for f in applied:
            typer.echo(f'fixed: {f.code}: {f.key} = "{f.new}"'
                       + (f' (was "{f.old}")' if f.old is not None else ""))
        _print_report(rep)
    raise typer.Exit(EXIT_OK if rep.healthy else EXIT_FINDINGS)


@grp.command("set-mac")
@handle_errors
def set_mac(target: str = TARGET,
            mac: str | None = typer.Option(None, "--mac", callback=_check_mac,
                                           help="The static MAC, 00:50:56:00:00:00 to "
                                                "00:50:56:3F:FF:FF, or the current MAC (to "
                                                "freeze a generated one)."),
            random: bool = typer.Option(False, "--random", help="Pick a random MAC in the static range."),
            json_out: bool = JSON, dry_run: bool = DRY_RUN, backup: str | None = BACKUP,
            force: bool = FORCE) -> None:
    """Give the appliance a static MAC: addressType static, ethernet0.address set,
    generatedAddress removed, the last three bytes of uuid.bios changed to match.
    Licences bound to the old MAC must be moved to the new one; `--mac` with the current
    (generated) MAC keeps it, so its licence stays valid.

    Example: vdisk bundle set-mac ./ipva --mac 00:50:56:12:34:56
    """
    if (mac is None) == (not random):
        raise fail("give exactly one of --mac and --random", EXIT_USAGE)
    b = open_bundle(target)
    old = mac_state(b.vmx)
    value = parse_mac(mac) if mac is not None else random_static_mac()
    current = old.effective is not None and parse_mac(old.effective) == value
    if not in_static_range(value) and not current:
        try:
            validate_static_mac(format_mac(value))
        except VdiskError as exc:
            raise fail(str(exc), EXIT_USAGE, exc.hint) from None
    apply_mac(b.vmx, value)
    if not in_static_range(value):      # freezing a generated MAC outside the static range
        b.vmx.set(CHECK_MAC_KEY, "FALSE")
    if not dry_run and b.vmx.changed:
        for w in b.vmx.save(force=force, backup=backup):
            warn(w)
    if json_out:
        emit_json({"vmx": b.vmx_path, "mac": format_mac(value), "old_mac": old.effective,
                   "uuid_bios": b.vmx.get("uuid.bios"), "dry_run": dry_run,
                   "diff": b.vmx.diff() if dry_run else None})
    elif dry_run:
        typer.echo(b.vmx.diff() or "nothing to change\n", nl=False)
    else:
        typer.echo(f"{b.vmx_path}: MAC {format_mac(value)} (static)"
                   + (f", was {old.effective}" if old.effective else ""))
        if b.vmx.get("uuid.bios"):
            typer.echo(f"uuid.bios: {b.vmx.get('uuid.bios')}")


@grp.command()
@handle_errors
def create(folder: str = typer.Argument(..., help="The new appliance folder (must not exist "
                                        "or be empty)."),
           firmware: str = typer.Option(..., "--firmware", help="The ipva.bin to install "
                                        "(verified first)."),
           cf_size: str = typer.Option("1G", "--cf-size", help="Capacity of the CF disk."),
           memsize: int = typer.Option(64, "--memsize", "--memory", help="RAM in MB (multiple "
                                       "of 4)."),
           mac: str | None = typer.Option(None, "--mac", callback=_check_mac,
                                          help="Static MAC (default: random in "
                                               "00:50:56:00:00:00-00:50:56:3F:FF:FF)."),
           target: Target = typer.Option(Target.workstation, "--target", help=TARGET_HELP),
           name: str = typer.Option("ipva", "--name", help="Name of the VM and its vmx/ovf/ova/"
                                    "ps1 files."),
           nic_model: NicModel | None = NIC_MODEL, cpus: int | None = CPUS, vmid: int = VMID,
           storage: str = STORAGE, bridge: str = BRIDGE, switch: str = SWITCH,
           compression_level: int = COMPRESSION_LEVEL,
           json_out: bool = JSON, dry_run: bool = DRY_RUN) -> None:
    """Make a complete new appliance: vmx with every required key, boot disk with the
    verified firmware, formatted CF, blank 100 MiB flash, initialised dump store.

    Example: vdisk bundle create ./ipva --firmware ipva.bin --target vsphere
    """
    plan = golden.plan_create(folder, firmware, cf_bytes=parse_size(cf_size, "--cf-size"),
                              memsize_mb=memsize, mac=mac, target=target.value, name=name,
                              cpus=cpus or 1,
                              options=_platform(nic_model, vmid, storage, bridge, switch),
                              compression_level=compression_level)
    if dry_run:
        d = plan.to_dict()
        _dry(d, json_out, f"would create {plan.folder} for {plan.target} "
             f"({plan.spec.container} {plan.subformat}), memsize {plan.memsize_mb} MB, NIC "
             f"{d['nic_model']}" + "".join(f"\n  {plan.disk_names()[r]} ({_size(n)})"
                                         for r, n in plan.sizes().items())
             + f"\n  {d['attachment']}")
        if mac is None:
            _random_mac_note(d, json_out)
        return
    files = golden.apply_create(plan)
    _report_made(plan.folder, files, json_out, plan.to_dict())


@grp.command()
@handle_errors
def clone(src: str = typer.Argument(..., help="The golden appliance (folder or .vmx)."),
          dst: str = typer.Argument(..., help="The new appliance folder."),
          mac: str | None = typer.Option(None, "--mac", callback=_check_mac,
                                         help="Static MAC of the clone (default: random in the "
                                              "static range)."),
          reset_flash: bool = typer.Option(False, "--reset-flash", help="Give the clone a blank "
                                           "flash (no PBX objects)."),
          json_out: bool = JSON, dry_run: bool = DRY_RUN, force: bool = FORCE) -> None:
    """Stamp a new appliance from a golden one: new MAC and uuid.bios, disks copied sparse,
    optionally a blank flash. Licences are bound to the MAC: the clone needs its own.

    Example: vdisk bundle clone ./golden ./ipva-site2 --reset-flash
    """
    plan = golden.plan_clone(src, dst, mac=mac, reset_flash=reset_flash, force=force)
    if dry_run:
        _dry(plan.to_dict(), json_out, f"would clone {plan.source_vmx} to {plan.folder}"
             + (", blank flash" if plan.reset_flash else ""))
        if mac is None:
            _random_mac_note(plan.to_dict(), json_out)
        return
    files = golden.apply_clone(plan)
    _report_made(plan.folder, files, json_out, plan.to_dict())


@grp.command()
@handle_errors
def deploy(package: str = typer.Argument(..., help="The OVF package: .ova, .ovf (files beside "
                                         "it) or the .zip holding an .ova."),
           folder: str = typer.Argument(..., help="The new appliance folder (must not exist or "
                                        "be empty)."),
           target: DeployTarget = typer.Option(DeployTarget.workstation, "--target",
                                               help="workstation (monolithicSparse) or vsphere "
                                               "(vmfs + -flat)."),
           name: str | None = typer.Option(None, "--name", help="Name of the VM and its vmx "
                                           "(default: the OVF's)."),
           new_mac: bool = typer.Option(False, "--new-mac", help="Give the appliance a new "
                                        "random static MAC (licences are bound to the MAC)."),
           json_out: bool = JSON, dry_run: bool = DRY_RUN) -> None:
    """Deploy an OVF package as a bundle: vmx with the OVF's IDE slots, NICs, memory, CPUs
    and ExtraConfig keys; each disk converted from the package in place, compared with it
    and checked; all built beside FOLDER and renamed into place.

    Example: vdisk bundle deploy ipva-ovf.zip ./ipva --target workstation
    """
    plan = ova_deploy.plan_deploy(package, folder, target=target.value, name=name,
                                  new_mac=new_mac)
    mac = "generated by VMware" if plan.mac is None else format_mac(plan.mac)
    if dry_run:
        _dry(plan.to_dict(), json_out, f"would deploy {package} to {plan.folder} for "
             f"{plan.target} ({plan.subformat}), MAC {mac}" + "".join(
                 f"\n  {d.slot} {d.role:<5} {d.member} -> {d.file_name}" for d in plan.disks))
        return
    with progress("converting", not json_out) as cb:
        files = ova_deploy.apply_deploy(plan, None if json_out else _say, cb)
    _report_made(plan.folder, files, json_out, plan.to_dict())


@grp.command("convert")
@handle_errors
def convert_cmd(appliance: str = typer.Argument(..., help="The appliance: a bundle folder or its "
                                                ".vmx, an .ova/.ovf/.zip package, or a Proxmox or "
                                                "Hyper-V folder vdisk wrote."),
                out: str = typer.Argument(..., help="The new folder (must not exist or be "
                                          "empty)."),
                target: Target = typer.Option(..., "--target", help=TARGET_HELP),
                new_mac: bool = typer.Option(False, "--new-mac", help="Make a clone: a new random "
                                             "static MAC and uuid.bios (licences are bound to "
                                             "the MAC)."),
                name: str | None = typer.Option(None, "--name", help="Name of the VM (default: "
                                                "the source's)."),
                memsize: int | None = typer.Option(None, "--memsize", "--memory", help="RAM in "
                                                   "MB (default: the source's)."),
                cpus: int | None = CPUS, nic_model: NicModel | None = NIC_MODEL, vmid: int = VMID,
                storage: str = STORAGE, bridge: str = BRIDGE, switch: str = SWITCH,
                json_out: bool = JSON, dry_run: bool = DRY_RUN,
                force: bool = typer.Option(False, "--force", help="Convert even though a lock "
                                           "(.lck) says the source is running.")) -> None:
    """Convert an appliance to another platform: the four disks in the target's container
    (sparse), each checked and compared with its source, plus the vmx, OVF package, qm
    configuration or Hyper-V script. The MAC and uuid.bios stay (it is the same appliance;
    a generated MAC is frozen as static); --new-mac makes a clone.

    Example: vdisk bundle convert ./ipva ./ipva-pve --target proxmox --vmid 120
    """
    plan = bundle_convert.plan_convert(
        appliance, out, target=target.value, new_mac=new_mac, memsize_mb=memsize, cpus=cpus,
        options=_platform(nic_model, vmid, storage, bridge, switch), force=force, name=name)
    d = plan.to_dict()
    if dry_run:
        _dry(d, json_out, f"would convert {plan.source.config} to {plan.folder} for "
             f"{plan.target} ({plan.spec.container} {plan.spec.subformat}), memsize "
             f"{plan.machine.memsize_mb} MB, NIC {d['nic_model']}" + "".join(
                 f"\n  {bundle_convert.SLOT_OF_ROLE[r]} {r:<5} {plan.source.disks[r]} -> {n}"
                 for r, n in plan.disk_names().items()) + f"\n  {d['attachment']}")
        return
    with progress("converting", not json_out) as cb:
        files = bundle_convert.apply_convert(plan, None if json_out else _say, cb)
    _report_made(plan.folder, files, json_out, d)


def _say(message: str) -> None:
    say(message, err=True)


def _identity(plan: dict) -> None:
    """The MAC (the licence is bound to it) and the uuid.bios a new appliance gets."""
    if plan.get("mac"):
        typer.echo(f"MAC: {plan['mac']} (static)")
    if plan.get("uuid_bios"):
        typer.echo(f"uuid.bios: {plan['uuid_bios']}")


def _dry(plan: dict, json_out: bool, text: str) -> None:
    if json_out:
        emit_json({**plan, "dry_run": True})
    else:
        typer.echo(text)
        _identity(plan)


def _random_mac_note(plan: dict, json_out: bool) -> None:
    """A MAC chosen at random is drawn anew by every run: say how to make the real run
    write the one a dry run showed."""
    if not json_out and plan.get("mac"):
        say(f"note: the MAC and uuid.bios are random, drawn anew by each run; pass --mac "
            f"{plan['mac']} to write this MAC")


def _report_made(folder: str, files: list[str], json_out: bool, plan: dict) -> None:
    rep = doctor.check_bundle(folder)
    if json_out:
        emit_json({**plan, "files": files, "check": rep.to_dict(), "dry_run": False},
                  ok=rep.healthy, findings=rep.issues)
    else:
        typer.echo(f"created {folder}: {', '.join(files)}")
        _identity(plan)
        if not (MODE["quiet"] and rep.healthy):   # the check of what was made: chatter if healthy
            _print_report(rep)
    raise typer.Exit(EXIT_OK if rep.healthy else EXIT_FINDINGS)
