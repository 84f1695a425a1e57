"""The deflate codec of stream grains (VMDK) and compressed clusters (qcow2).

zlib-ng, where it is installed (a dependency on the platforms it has wheels for), reads
and writes the same zlib and raw-deflate formats as Python's zlib, about twice as fast
both ways; what it writes at a level was smaller than zlib's in the bench (specs/vmdk.md,
"How vdisk writes and reads streams"). Python's zlib serves everywhere else, and where
the environment says VDISK_ZLIB=stdlib. Both release the GIL while they work, so threads
use every core.
Output is the same for any number of threads with either codec; the two codecs' outputs
differ from each other (any reader inflates both).
"""
from __future__ import annotations

import os
import zlib as _stdlib
from types import ModuleType
from typing import Any

NAME = "zlib"
_impl: ModuleType | None = None     # chosen on first use (loading zlib-ng costs start-up)
error: tuple[type[BaseException], ...] = (_stdlib.error,)


def use(name: str) -> str:
    """Choose the codec: "zlib-ng" (if importable, else "zlib") or "zlib"; return the one
    chosen."""
    global NAME, _impl, error
    impl: ModuleType = _stdlib
    if name == "zlib-ng":
        try:
            from zlib_ng import zlib_ng as impl  # type: ignore[no-redef]
        except ImportError:
            impl = _stdlib
    # the errors first: a thread that sees the new codec must also catch its errors
    error = (_stdlib.error,) if impl is _stdlib else (_stdlib.error, impl.error)
    NAME = "zlib" if impl is _stdlib else "zlib-ng"
    _impl = impl
    return NAME


def _chosen() -> ModuleType:
    if _impl is None:
        use(default())
    assert _impl is not None
    return _impl


def default() -> str:
    return "zlib" if os.environ.get("VDISK_ZLIB", "") == "stdlib" else "zlib-ng"


def name() -> str:
    """The codec in use: "zlib-ng" or "zlib"."""
    _chosen()
    return NAME


def compress(data: bytes, level: int) -> bytes:
    """`data` as one zlib stream (header, deflate, Adler-32) at `level`."""
    return _chosen().compress(data, level)


def decompressobj(wbits: int = 15) -> Any:
    """An inflater (zlib streams by default, raw deflate for negative `wbits`)."""
    return _chosen().decompressobj(wbits)
