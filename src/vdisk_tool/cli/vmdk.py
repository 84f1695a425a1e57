"""Image commands: info, map, compare, check, create, convert. The library modules only some
commands need are imported inside them, so `vdisk info` starts fast."""
from __future__ import annotations

import os

import typer

from ..image.backup import check_backup_for
from ..image.disk import open_image
from ..image.info import allocation_map, compare_devices, describe
from ..ipva.packages import is_package
from .app import app
from .choices import Adapter, OutputFormat, Subformat, value
from .common import (
    COMPRESSION_LEVEL,
    EXIT_FINDINGS,
    EXIT_OK,
    OVERWRITE,
    emit_json,
    handle_errors,
    parse_size,
    print_findings,
    progress,
    report,
    show_plan,
    takes_format,
    warn,
)

ALLOW_OUTSIDE = typer.Option(False, "--allow-outside",
                             help="Trust extent and parent paths outside the image's folder.")
JSON = typer.Option(False, "--json", help="Print the result as JSON.")
OUTPUT_FORMAT = typer.Option(None, "--output-format", "-O", case_sensitive=False,
                             help="The container to write (as qemu-img -O): vmdk (see "
                                  "--subformat), raw, qcow2 or vhdx. Default: from the name "
                                  "(.img/.raw, .qcow2, .vhdx), else the source's.")
OPTIONS = typer.Option(None, "--options", "-o",
                       help="Container options as qemu-img -o takes them. qcow2: cluster_size="
                            "64k,compat=0.10|1.1,refcount_bits=1..64,lazy_refcounts=on,"
                            "extended_l2=on,preallocation=off|metadata|falloc|full (create "
                            "also backing_file=...,backing_fmt=...); vhdx: subformat=dynamic|"
                            "fixed,block_size=1M..256M (create also backing_file=PARENT.vhdx"
                            "[,backing_fmt=vhdx]: a differencing child of the parent's size "
                            "and block size).")
_BY_NAME = {".qcow2": "qcow2", ".vhdx": "vhdx", ".vmdk": "vmdk", ".img": "raw", ".raw": "raw"}


def _pairs(text: str | None) -> dict[str, str]:
    opts: dict[str, str] = {}
    for item in filter(None, (p.strip() for p in (text or "").split(","))):
        key, eq, val = item.partition("=")
        if not eq:
            raise typer.BadParameter(f"-o takes key=value pairs, got {item!r}")
        opts[key.strip()] = val.strip()
    return opts


def output_choice(path: str, output_format: OutputFormat | None, options: str | None,
                  subformat: str | None, shape: dict | None = None
                  ) -> tuple[str, str, object]:
    """(container, subformat, creation options) from -O, -o, --subformat and the output's
    name; `shape` is the source's (image.create.like) for convert, whose container and
    options are kept when nothing else is asked."""
    src_sub = (shape or {}).get("subformat") or ""
    src_fmt = "qcow2" if src_sub == "qcow2" else "vhdx" if src_sub.startswith("vhdx") else None
    fmt = (value(output_format) or ("raw" if subformat == "raw" else None)
           or _BY_NAME.get(os.path.splitext(path.lower())[1])
           or (src_fmt if subformat is None else None) or "vmdk")
    same = fmt == src_fmt
    from ..image.create import SUBFORMATS
    if fmt == "qcow2":
        from ..image.qcow2.create import parse_options
        return fmt, "qcow2", parse_options(options, shape["options"] if same and shape else None)
    opts = _pairs(options)
    if fmt == "vhdx":
        merged = {**(shape["options"] if same and shape else {}), **opts}
        given = (subformat if subformat and subformat.startswith("vhdx")
                 else src_sub if same else "vhdx-dynamic")
        if merged.get("backing_file"):
            if merged.pop("subformat", "dynamic") != "dynamic" or given == "vhdx-fixed":
                raise typer.BadParameter("a VHDX with backing_file is a differencing file, "
                                         "neither fixed nor another subformat")
            return fmt, "vhdx-differencing", merged
        kind = merged.pop("subformat", given.removeprefix("vhdx-"))
        if kind not in ("dynamic", "fixed"):
            raise typer.BadParameter(f"VHDX subformat is dynamic or fixed, not {kind!r}")
        return fmt, f"vhdx-{kind}", merged
    if set(opts) - {"subformat"}:
        raise typer.BadParameter(f"-o {', '.join(opts)}: only qcow2 and vhdx take creation "
                                 "options")
    if fmt == "raw":
        return fmt, "raw", None
    sub = opts.get("subformat") or (subformat if subformat and subformat != "raw" else
                                    src_sub if src_sub in SUBFORMATS else "monolithicSparse")
    return fmt, sub, None


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024  # type: ignore[assignment]
    return str(n)


@app.command()
@handle_errors
@takes_format("image")
def info(image: str = typer.Argument(..., help="A raw image, any VMDK (descriptor or sparse "
                                     "file), or an .ova/.ovf/.zip package."),
         json_out: bool = JSON, allow_outside: bool = ALLOW_OUTSIDE) -> None:
    """Describe an image: subformat, sizes, extents, CID chain, adapter, geometry.

    Example: vdisk info hd-cf.vmdk --json
    """
    if is_package(image):
        from .package_view import show_package
        show_package(image, json_out)
        return
    from ..image.journal import pending_finding
    pending = pending_finding(image)
    with open_image(image, allow_outside=allow_outside) as disk:
        d = describe(disk)
    d["findings"] = [pending] if pending else []
    if json_out:
        emit_json(d)
        raise typer.Exit(EXIT_FINDINGS if pending else 0)
    typer.echo(f"image: {d['path']}")
    typer.echo(f"format: {d['format']} ({d['subformat']})")
    typer.echo(f"virtual size: {_size(d['virtual_size_bytes'])} ({d['virtual_size_bytes']} bytes)")
    typer.echo(f"disk size: {_size(d['disk_size_bytes'])}")
    typer.echo(f"sector size: logical {d['logical_sector_bytes']}, physical "
               f"{d['physical_sector_bytes']} bytes")
    for key in ("cid", "parent_cid", "adapter", "hardware_version", "tools_version", "grain_bytes",
                "unclean_shutdown", "block_bytes", "disk_id", "data_write_guid",
                "log_replayed_entries"):
        if d.get(key) is not None:
            typer.echo(f"{key.replace('_', ' ')}: {d[key]}")
    if d.get("geometry") and d["geometry"].get("cylinders") is not None:
        g = d["geometry"]
        typer.echo(f"geometry: {g['cylinders']}/{g['heads']}/{g['sectors']}")
    _echo_qcow2(d.get("qcow2"))
    for e in d["extents"] if d["format"] != "qcow2" else ():
        typer.echo(f"extent: {e['access']} {e['sectors']} {e['type']} {e['file'] or ''}".rstrip())
    if len(d["chain"]) > 1:
        typer.echo("chain: " + " -> ".join(d["chain"]))
    for w in d["warnings"]:
        typer.echo(f"warning: {w}")
    if pending is not None:
        print_findings([pending])
        raise typer.Exit(EXIT_FINDINGS)


def _echo_qcow2(q: dict | None) -> None:
    """The qcow2 facts of `vdisk info`, as qemu-img info words them."""
    if not q:
        return
    typer.echo(f"compat: {q['compat']}")
    typer.echo(f"cluster size: {q['cluster_bytes']}")
    typer.echo(f"refcount bits: {q['refcount_bits']}")
    for key in ("lazy_refcounts", "extended_l2", "dirty", "corrupt"):
        if q[key]:
            typer.echo(f"{key.replace('_', ' ')}: true")
    if q["backing_file"]:
        fmt = f" (format {q['backing_format']})" if q["backing_format"] else ""
        typer.echo(f"backing file: {q['backing_file']}{fmt}")
    if q["bitmaps"]:
        typer.echo(f"bitmaps: {q['bitmaps']} (kept, not read)")
    if q["snapshots"]:
        typer.echo("snapshots (internal; vdisk reads and writes the active layer):")
        for s in q["snapshots"]:
            size = "" if s["disk_size_bytes"] is None else f" disk {s['disk_size_bytes']} bytes"
            typer.echo(f"  {s['id']:>4} {s['name']} vm state {s['vm_state_bytes']} bytes{size}")


@app.command("map")
@handle_errors
@takes_format("image")
def map_cmd(image: str = typer.Argument(..., help="The image to map."),
            json_out: bool = JSON, allow_outside: bool = ALLOW_OUTSIDE) -> None:
    """List allocation runs: data, zero, unallocated, or from the parent, with file offsets.

    Example: vdisk map hd-boot.vmdk
    """
    with open_image(image, allow_outside=allow_outside) as disk:
        runs = list(allocation_map(disk))
    if json_out:
        emit_json({"path": image, "runs": [
            {"offset": r.offset, "length": r.length_bytes, "kind": r.kind.value, "file": r.file,
             "file_offset": r.file_offset} for r in runs]})
        return
    typer.echo(f"{'offset':>14} {'length':>14}  {'kind':<12} file offset")
    for r in runs:
        fo = "" if r.file_offset is None else f"0x{r.file_offset:x} {r.file}"
        typer.echo(f"0x{r.offset:012x} 0x{r.length_bytes:012x}  {r.kind.value:<12} {fo}".rstrip())


@app.command()
@handle_errors
@takes_format("a", "b")
def compare(a: str = typer.Argument(..., help="First image."),
            b: str = typer.Argument(..., help="Second image."),
            json_out: bool = JSON, allow_outside: bool = ALLOW_OUTSIDE) -> None:
    """Do two images hold the same virtual content? Exit 0 same, 1 different.

    Example: vdisk compare hd-cf.vmdk hd-cf-copy.vmdk
    """
    with open_image(a, allow_outside=allow_outside) as da, open_image(b, allow_outside=allow_outside) as db:
        with progress("comparing", not json_out) as cb:
            res = compare_devices(da, db, cb)
    if json_out:
        emit_json({"same": res.same, "first_difference": res.first_difference,
                   "size_a": res.size_a, "size_b": res.size_b})
    elif res.same:
        typer.echo("Images are identical." if res.size_a == res.size_b
                   else "Images are identical (the larger one's tail reads as zeros).")
    else:
        typer.echo(f"Content mismatch at offset {res.first_difference} "
                   f"(0x{res.first_difference:x})!")
    raise typer.Exit(EXIT_OK if res.same else EXIT_FINDINGS)


@app.command()
@handle_errors
@takes_format("image")
def check(image: str = typer.Argument(..., help="The image to check (any VMDK or raw)."),
          repair: bool = typer.Option(False, "--repair", help="Fix what can be fixed without guessing."),
          dry_run: bool = typer.Option(False, "--dry-run", help="With --repair: print the plan only."),
          backup: str = typer.Option(None, "--backup", help="Keep the original file(s) here."),
          force: bool = typer.Option(False, "--force", help="Modify even if a VMware lock exists."),
          json_out: bool = JSON, allow_outside: bool = ALLOW_OUTSIDE) -> None:
    """Walk all metadata and report every finding. Exit 0 clean, 1 findings, 3 unreadable.

    Example: vdisk check hd-flash.vmdk --repair --backup hd-flash.bak
    """
    from ..image.check import check_image
    report = check_image(image, allow_outside=allow_outside)
    if not repair:
        _print_report(report, json_out)
        raise typer.Exit(EXIT_OK if report.clean else EXIT_FINDINGS)
    from ..image.repair import apply_repair, plan_repair
    plan = plan_repair(report)
    if plan.empty:
        _print_report(report, json_out)
        if not json_out and not report.clean:
            typer.echo("nothing can be repaired without guessing")
        raise typer.Exit(EXIT_OK if report.clean else EXIT_FINDINGS)
    if not json_out:
        _print_report(report, False)
        typer.echo("repair plan:")
        for a in plan.actions:
            typer.echo(f"  - {a}")
    if not dry_run:
        check_backup_for(backup, image, allow_outside)
    after = apply_repair(plan, backup=backup, force=force, dry_run=dry_run,
                         allow_outside=allow_outside)
    if json_out:
        emit_json({"before": report.to_dict(), "plan": list(plan.actions), "dry_run": dry_run,
                   "after": after.to_dict()}, ok=after.clean and not dry_run,
                  findings=after.findings)
    else:
        typer.echo("dry run: nothing was changed (the plan was tried on a copy)" if dry_run
                   else f"repaired {image}")
        if not after.clean:
            typer.echo("remaining findings:")
            print_findings(after.findings, "  ")
    if dry_run:
        raise typer.Exit(EXIT_FINDINGS)  # the image itself still has its findings
    raise typer.Exit(EXIT_OK if after.clean else EXIT_FINDINGS)


def _print_report(report, json_out: bool) -> None:
    if json_out:
        emit_json(report.to_dict())
        return
    from ._plain import check_lines
    for line in check_lines(report):
        typer.echo(line)


@app.command()
@handle_errors
def create(file: str = typer.Argument(..., help="The image to create: a VMDK's descriptor "
                                       "file, or a raw, qcow2 or VHDX file."),
           size: str | None = typer.Option(None, "--size", "-s",
                                           help="Capacity, e.g. 100M, 8G (required, but for a "
                                                "differencing VHDX: its parent's)."),
           subformat: Subformat = typer.Option(Subformat.monolithicSparse, "--subformat", "-F",
                                               help="The VMDK subformat, or raw."),
           adapter: Adapter = typer.Option(Adapter.ide, "--adapter", help="ddb.adapterType."),
           hw_version: str = typer.Option("4", "--hw-version", help="ddb.virtualHWVersion."),
           output_format: OutputFormat | None = OUTPUT_FORMAT,
           options: str | None = OPTIONS,
           force: bool = typer.Option(False, "--force", help="Write even if a VMware lock exists."),
           overwrite: bool = OVERWRITE, json_out: bool = JSON,
           allow_outside: bool = ALLOW_OUTSIDE) -> None:
    """Create an empty disk: VMDK (as VMware writes it), raw, qcow2 or VHDX (also a
    differencing VHDX over a VHDX parent).

    \b
    Example: vdisk create hd-flash.vmdk --size 100M --subformat monolithicSparse
    Example: vdisk create hd-flash.qcow2 --size 100M -O qcow2 -o cluster_size=64k
    Example: vdisk create hd-flash.vhdx --size 100M -O vhdx -o subformat=dynamic,block_size=1M
    Example: vdisk create hd-cf-child.vhdx -O vhdx -o backing_file=hd-cf.vhdx,backing_fmt=vhdx
    """
    from ..image.create import create_image
    subformat, adapter = subformat.value, adapter.value  # type: ignore[assignment]
    fmt, sub, opts = output_choice(file, output_format, options, str(subformat))
    if size is not None:
        n = -(-parse_size(size) // 512) * 512
    elif sub == "vhdx-differencing":
        from ..image.vhdx.create import parent_facts
        assert isinstance(opts, dict)
        n = parent_facts(file, opts["backing_file"], opts.get("backing_fmt"),
                         allow_outside).size_bytes
    else:
        raise typer.BadParameter("--size is required (only a differencing VHDX takes its "
                                 "parent's)", param_hint="'--size' / '-s'")
    files = create_image(file, n, sub, adapter, hw_version=hw_version, force=force,
                         overwrite=overwrite, options=opts, allow_outside=allow_outside)
    if json_out:
        emit_json({"files": files, "virtual_size_bytes": n, "subformat": sub})
    elif sub == "vhdx-differencing":
        assert isinstance(opts, dict)
        typer.echo(f"Formatting '{file}', fmt=vhdx size={n} backing_file={opts['backing_file']} "
                   "backing_fmt=vhdx subformat=vhdx-differencing")
    elif fmt == "qcow2":
        from ..image.qcow2.create import Qcow2Options
        assert isinstance(opts, Qcow2Options)
        prealloc = f" preallocation={opts.preallocation}" if opts.preallocation != "off" else ""
        typer.echo(f"Formatting '{file}', fmt=qcow2 cluster_size={opts.cluster_bytes} "
                   f"extended_l2={'on' if opts.extended_l2 else 'off'}{prealloc} "
                   f"compat={opts.compat} refcount_bits={opts.refcount_bits} size={n}")
    else:
        typer.echo(f"Formatting '{file}', fmt={fmt} size={n} subformat={sub} adapter={adapter}")


@app.command()
@handle_errors
@takes_format("src")
def convert(src: str = typer.Argument(..., help="Any image vdisk reads."),
            dst: str = typer.Argument(..., help="The new image (.img/.raw, or --raw, for a raw image)."),
            subformat: Subformat | None = typer.Option(None, "--subformat", "-F",
                                                       help="Default: the source's, else "
                                                            "monolithicSparse."),
            raw: bool = typer.Option(False, "--raw", help="Write a raw image."),
            output_format: OutputFormat | None = OUTPUT_FORMAT,
            options: str | None = OPTIONS,
            adapter: Adapter | None = typer.Option(None, "--adapter",
                                                   help="Default: the source's adapter."),
            force: bool = typer.Option(False, "--force", help="Write even if a VMware lock exists."),
            compression_level: int = COMPRESSION_LEVEL,
            overwrite: bool = OVERWRITE, json_out: bool = JSON,
            allow_outside: bool = ALLOW_OUTSIDE) -> None:
    """Copy any readable image to any writable subformat; zero grains are not written.
    The container follows -O, else the name (.img/.raw raw, .qcow2 qcow2, .vhdx VHDX), else
    the source's.

    \b
    Example: vdisk convert hd-cf.vmdk hd-cf-stream.vmdk --subformat streamOptimized
    Example: vdisk convert hd-cf.vmdk hd-cf.qcow2 -O qcow2 -o compat=1.1
    Example: vdisk convert hd-cf.vmdk hd-cf.vhdx -O vhdx -o subformat=fixed
    """
    from ..image.create import create_image, like
    from ..image.vmdk.create import carried_ddb
    with open_image(src, allow_outside=allow_outside) as disk:
        for w in disk.warnings:
            warn(w)
        shape = like(disk)
        fmt, sub, opts = output_choice(dst, output_format, options,
                                       "raw" if raw else value(subformat), shape)
        kept = carried_ddb(disk.descriptor, sub, value(adapter))
        with progress(f"converting to {sub}", not json_out) as cb:
            files = create_image(dst, disk.size_bytes, sub, kept.adapter, source=disk, progress=cb,
                                 force=force, hw_version=kept.hw_version, ddb=kept.ddb,
                                 overwrite=overwrite, options=opts,
                                 compression_level=compression_level)
        report(None, {"path": dst, "files": files, "subformat": sub,
                      "virtual_size_bytes": disk.size_bytes})


@app.command()
@handle_errors
@takes_format("image")
def grow(image: str = typer.Argument(..., help="The disk to enlarge."),
         size: str = typer.Option(..., "--size", "-s", help="New capacity, e.g. 8G (never smaller)."),
         dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan only."),
         backup: str = typer.Option(None, "--backup", help="Keep the original file(s) here."),
         force: bool = typer.Option(False, "--force", help="Modify even if a VMware lock exists."),
         compression_level: int = COMPRESSION_LEVEL,
         json_out: bool = JSON, allow_outside: bool = ALLOW_OUTSIDE) -> None:
    """Enlarge a disk of any writable subformat; the data and the file system inside stay as
    they are (use `vdisk cf grow` to grow hd-cf's file system too).

    Example: vdisk grow hd-cf.vmdk --size 8G --backup hd-cf.bak
    """
    from ..image.grow import apply_grow, plan_grow
    plan = plan_grow(image, parse_size(size), allow_outside=allow_outside)
    if not dry_run:
        check_backup_for(backup, image, allow_outside)
    if not json_out:
        show_plan(list(plan.describe()), dry_run)
    if not dry_run:
        with progress("growing", not json_out) as cb:
            apply_grow(plan, force=force, backup=backup, progress=cb,
                       compression_level=compression_level)
    if json_out:
        emit_json({"path": plan.path, "subformat": plan.subformat, "old_size_bytes": plan.old_bytes,
                   "new_size_bytes": plan.new_bytes, "method": plan.method, "dry_run": dry_run})
    elif dry_run:
        typer.echo("dry run: nothing was changed")
    else:
        typer.echo(f"grown to {plan.new_bytes} bytes")
