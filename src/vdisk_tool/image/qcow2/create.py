"""A new qcow2 file as qemu-img lays one out (specs/qcow2.md §Writing): the header (with a
backing file name and format when given) in cluster 0, the refcount table and blocks
covering the metadata, the L1 table; with preallocation every L2 table and data cluster
next (qemu's preallocation=metadata|falloc|full); then the source's non-zero clusters,
through the Qcow2Device write path.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ...errors import RefusedError
from ...formats import qcow2 as q
from .. import hostio
from .header import l1_entries_for

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Qcow2Options:
    """What `-o` sets, with qemu-img's defaults."""

    cluster_bytes: int = 65536
    compat: str = "1.1"
    refcount_bits: int = 16
    lazy_refcounts: bool = False
    backing_file: str | None = None
    backing_format: str | None = None
    extended_l2: bool = False
    preallocation: str = "off"

    @property
    def cluster_bits(self) -> int:
        return self.cluster_bytes.bit_length() - 1

    @property
    def refcount_order(self) -> int:
        return self.refcount_bits.bit_length() - 1

    @property
    def l2_entry_bytes(self) -> int:
        return 16 if self.extended_l2 else 8


PREALLOCATION = ("off", "metadata", "falloc", "full")
_ON, _OFF = ("on", "true", "yes", "1"), ("off", "false", "no", "0")


def parse_options(text: str | None, base: Qcow2Options | None = None) -> Qcow2Options:
    """`cluster_size=64k,compat=0.10,refcount_bits=16,lazy_refcounts=on,extended_l2=on,
    preallocation=off|metadata|falloc|full,backing_file=…,backing_fmt=…` as qemu-img's -o
    takes them."""
    from dataclasses import replace
    opts = base or Qcow2Options()
    for item in filter(None, (text or "").split(",")):
        key, _, val = item.partition("=")
        key = key.strip()
        if key == "cluster_size":
            opts = replace(opts, cluster_bytes=_size(val))
        elif key == "compat":
            opts = replace(opts, compat={"v2": "0.10", "v3": "1.1"}.get(val, val))
        elif key == "refcount_bits":
            opts = replace(opts, refcount_bits=int(val) if val.isdigit() else -1)
        elif key in ("lazy_refcounts", "extended_l2"):
            if val not in _ON + _OFF:
                raise RefusedError(f"{key} is on or off, not {val!r}")
            opts = replace(opts, lazy_refcounts=val in _ON) if key == "lazy_refcounts" \
                else replace(opts, extended_l2=val in _ON)
        elif key == "preallocation":
            if val not in PREALLOCATION:
                raise RefusedError(f"preallocation is {', '.join(PREALLOCATION)}, not {val!r}")
            opts = replace(opts, preallocation=val)
        elif key == "backing_file":
            opts = replace(opts, backing_file=val)
        elif key == "backing_fmt":
            opts = replace(opts, backing_format=val)
        else:
            raise RefusedError(f"unknown or unsupported qcow2 option {item!r}; vdisk takes "
                               "cluster_size, compat, refcount_bits, lazy_refcounts, "
                               "extended_l2, preallocation, backing_file, backing_fmt")
    keys = {item.partition("=")[0].strip() for item in (text or "").split(",")}
    if base is not None and opts.extended_l2 and "extended_l2" not in keys and (
            opts.cluster_bytes < 1 << 14 or opts.compat == "0.10"):
        opts = replace(opts, extended_l2=False)   # kept from the source, not asked for
    validate(opts)
    return opts


def _size(val: str) -> int:
    mult = {"k": 1 << 10, "m": 1 << 20, "": 1}
    v = val.strip().lower()
    unit = v[-1] if v and v[-1] in "km" else ""
    num = v[:-1] if unit else v
    if not num.isdigit():
        raise RefusedError(f"cluster_size {val!r} is not a size")
    return int(num) * mult[unit]


def validate(o: Qcow2Options) -> None:
    cs = o.cluster_bytes
    if cs & (cs - 1) or not 1 << q.MIN_CLUSTER_BITS <= cs <= 1 << q.MAX_CLUSTER_BITS:
        raise RefusedError(f"cluster_size must be a power of two from 512 to 2M, got {cs}")
    if o.compat not in ("0.10", "1.1"):
        raise RefusedError(f"compat must be 0.10 or 1.1, got {o.compat!r}")
    rb = o.refcount_bits
    if rb < 1 or rb & (rb - 1) or rb > 64:
        raise RefusedError(f"refcount_bits must be a power of two from 1 to 64, got {rb}")
    if o.compat == "0.10" and (rb != 16 or o.lazy_refcounts):
        raise RefusedError("compat=0.10 has 16-bit refcounts and no lazy refcounts")
    if o.backing_file and len(o.backing_file.encode()) > q.MAX_BACKING_NAME_BYTES:
        raise RefusedError("the backing file name is longer than 1023 bytes")
    if o.extended_l2 and o.compat == "0.10":
        raise RefusedError("extended L2 entries need compat=1.1")
    if o.extended_l2 and cs < 1 << 14:
        raise RefusedError("extended L2 entries need a cluster_size of 16k or more")
    if o.backing_file and o.preallocation != "off" and not o.extended_l2:
        raise RefusedError("a backing file and preallocation go together only with "
                           "extended_l2=on (as in qemu-img)")


def layout(size_bytes: int, o: Qcow2Options) -> tuple[int, int, int, int]:
    """(L1 entries, L1 clusters, refcount table clusters, refcount blocks) of a new image
    whose first clusters hold header, refcount table, refcount blocks and L1."""
    cs, cb = o.cluster_bytes, o.cluster_bits
    l1 = l1_entries_for(size_bytes, cb, o.l2_entry_bytes)
    if l1 * 8 > q.MAX_L1_BYTES:
        raise RefusedError(f"{size_bytes} bytes need an L1 table larger than qemu's limit; "
                           "choose a larger cluster_size")
    l1c = max(1, -(-l1 * 8 // cs))
    rbe = cs * 8 // o.refcount_bits
    t, b = 1, 1
    while True:
        total = 1 + t + b + l1c
        nb = -(-total // rbe)
        nt = max(1, -(-nb * 8 // cs))
        if (nt, nb) == (t, b):
            return l1, l1c, t, b
        t, b = nt, nb


def write_empty(path: str, size_bytes: int, o: Qcow2Options) -> None:
    """Header, refcount structure and an empty L1 table in the (new, empty) file `path`."""
    cs = o.cluster_bytes
    l1, l1c, t, b = layout(size_bytes, o)
    total = 1 + t + b + l1c
    v3 = o.compat == "1.1"
    header = q.build_header(dict(
        magic=q.MAGIC, version=3 if v3 else 2, backing_file_offset=0, backing_file_size=0,
        cluster_bits=o.cluster_bits, size_bytes=size_bytes, crypt_method=0, l1_size=l1,
        l1_table_offset=(1 + t + b) * cs, refcount_table_offset=cs, refcount_table_clusters=t,
        nb_snapshots=0, snapshots_offset=0))
    if v3:
        header += q.build_header_v3(dict(
            incompatible_features=q.INCOMPAT_EXTL2 if o.extended_l2 else 0,
            compatible_features=q.COMPAT_LAZY_REFCOUNTS if o.lazy_refcounts else 0,
            autoclear_features=0, refcount_order=o.refcount_order,
            header_length=q.V3_HEADER_BYTES))
    if o.backing_format:
        header += q.build_extension(q.EXT_BACKING_FORMAT, o.backing_format.encode())
    header += bytes(8)   # end of the header extensions
    if o.backing_file:
        name = o.backing_file.encode()
        header = header[:8] + len(header).to_bytes(8, "big") + len(name).to_bytes(4, "big") \
            + header[20:] + name
    if len(header) > cs:
        raise RefusedError("the header and backing file name do not fit one cluster; choose a "
                           "larger cluster_size")
    table = b"".join(((1 + t + k) * cs).to_bytes(8, "big") for k in range(b))
    blocks = bytearray(b * cs)
    for c in range(total):   # the blocks are contiguous: entry c of the first is cluster c
        q.refcount_set(blocks, c, o.refcount_order, 1)
    with open(path, "r+b") as f:
        f.truncate(0)
        fd = f.fileno()
        hostio.ftruncate(fd, total * cs)
        hostio.pwrite(fd, header, 0)
        hostio.pwrite(fd, table, cs)
        hostio.pwrite(fd, bytes(blocks), (1 + t) * cs)
        hostio.fsync(fd)


def write_qcow2(path: str, size_bytes: int, o: Qcow2Options, source=None,
                progress: Progress | None = None) -> None:
    """A complete qcow2 in `path` (a temporary file): empty, then filled from `source`."""
    from ..create import _coalesce, data_pieces
    from .device import Qcow2Device
    write_empty(path, size_bytes, o)
    if source is None and o.preallocation == "off":
        return
    dev = Qcow2Device(path, writable=True)
    dev.refs.reuse = True   # refcounts vdisk just wrote cover every reference
    try:
        if o.preallocation != "off":
            dev.preallocate(o.preallocation)
        if source is None:
            dev.flush()
            return
        for off, piece in _coalesce(data_pieces(source, 0, size_bytes, o.cluster_bytes)):
            dev.write_at(off, piece)
            if progress:
                progress(off + len(piece), size_bytes)
        dev.flush()
    finally:
        dev.close()
