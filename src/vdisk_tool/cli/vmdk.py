"""Image commands: info, map, compare, check, create, convert."""
from __future__ import annotations

import typer

from ..image.disk import open_image
from ..image.info import allocation_map, compare_devices, describe
from .app import app
from .common import EXIT_FINDINGS, EXIT_OK, emit_json, handle_errors, progress

ALLOW_OUTSIDE = typer.Option(False, "--allow-outside",
                             help="Trust extent and parent paths outside the image's folder.")
JSON = typer.Option(False, "--json", help="Print the result as JSON.")


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024  # type: ignore[assignment]
    return str(n)


@app.command()
@handle_errors
def info(image: str = typer.Argument(..., help="A raw image or any VMDK (descriptor or sparse file)."),
         json_out: bool = JSON, allow_outside: bool = ALLOW_OUTSIDE) -> None:
    """Describe an image: subformat, sizes, extents, CID chain, adapter, geometry.

    Example: vdisk info hd-cf.vmdk --json
    """
    with open_image(image, allow_outside=allow_outside) as disk:
        d = describe(disk)
    if json_out:
        emit_json(d)
        return
    typer.echo(f"image: {d['path']}")
    typer.echo(f"format: {d['format']} ({d['subformat']})")
    typer.echo(f"virtual size: {_size(d['virtual_size_bytes'])} ({d['virtual_size_bytes']} bytes)")
    typer.echo(f"disk size: {_size(d['disk_size_bytes'])}")
    for key in ("cid", "parent_cid", "adapter", "hardware_version", "grain_bytes", "unclean_shutdown"):
        if d.get(key) is not None:
            typer.echo(f"{key.replace('_', ' ')}: {d[key]}")
    if d.get("geometry") and d["geometry"].get("cylinders") is not None:
        g = d["geometry"]
        typer.echo(f"geometry: {g['cylinders']}/{g['heads']}/{g['sectors']}")
    for e in d["extents"]:
        typer.echo(f"extent: {e['access']} {e['sectors']} {e['type']} {e['file'] or ''}".rstrip())
    if len(d["chain"]) > 1:
        typer.echo("chain: " + " -> ".join(d["chain"]))
    for w in d["warnings"]:
        typer.echo(f"warning: {w}")


@app.command("map")
@handle_errors
def map_cmd(image: str = typer.Argument(..., help="The image to map."),
            json_out: bool = JSON, allow_outside: bool = ALLOW_OUTSIDE) -> None:
    """List allocation runs: data, zero, unallocated, or from the parent, with file offsets.

    Example: vdisk map hd-boot.vmdk
    """
    with open_image(image, allow_outside=allow_outside) as disk:
        runs = list(allocation_map(disk))
    if json_out:
        emit_json([{"offset": r.offset, "length": r.length_bytes, "kind": r.kind.value,
                    "file": r.file, "file_offset": r.file_offset} for r in runs])
        return
    typer.echo(f"{'offset':>14} {'length':>14}  {'kind':<12} file offset")
    for r in runs:
        fo = "" if r.file_offset is None else f"0x{r.file_offset:x} {r.file}"
        typer.echo(f"0x{r.offset:012x} 0x{r.length_bytes:012x}  {r.kind.value:<12} {fo}".rstrip())


@app.command()
@handle_errors
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
