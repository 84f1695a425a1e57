"""`vdisk info PACKAGE`: an OVF package described (used by the info command)."""
from __future__ import annotations

from typing import Any

import typer

from ..ipva.ova import describe_package
from .common import emit_json


def _mib(n: object) -> str:
    return f"{int(n) / (1 << 20):.1f} MiB" if isinstance(n, int) else "?"


def show_package(path: str, json_out: bool) -> None:
    d: dict[str, Any] = describe_package(path)
    if json_out:
        emit_json(d)
        return
    typer.echo(f"package: {d['package']} ({d['kind']}, OVF {d['ovf_version']}, {d['ovf']})")
    typer.echo(f"name: {d['name']}  hardware: {d['system_type']}  guest: {d['os_type']}")
    typer.echo(f"memsize: {d['memsize_mb']} MB  vCPUs: {d['numvcpus']}")
    typer.echo("members:")
    for m in d["members"]:
        typer.echo(f"  {m['name']:<24} {m['size_bytes']:>12} bytes at 0x{m['offset']:x}")
    typer.echo("disks:")
    for x in d["disks"]:
        typer.echo(f"  {x['slot']} {x['role'] or '-':<5} {x['file'] or x['disk_id']}  "
                   f"capacity {_mib(x['capacity_bytes'])}, {x['size_bytes']} bytes in the package")
    for i, n in enumerate(d["nics"]):
        typer.echo(f"ethernet{i}: {n['subtype']} ({n['model']}), MAC {n['mac'] or 'generated'}, "
                   f"network {n['network']}")
    for k, v in d["extra_config"].items():
        typer.echo(f"extra config: {k} = {v!r}")
    for k, v in d["config"].items():
        typer.echo(f"config: {k} = {v!r}")
    for g in d["digests"]:
        typer.echo(f"{g['algorithm']}({g['name']}) = {g['digest']}")
    if d["manifest"] is None:
        typer.echo("manifest: none")
    for f in d["findings"]:
        typer.echo(f"{f['severity']}: {f['code']}: {f['message']}")
