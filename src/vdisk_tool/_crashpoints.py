"""Kill points for the crash-consistency tests (leaf module; inert unless asked for).

With VDISK_CRASH_AT=N in the environment, the process kills itself with SIGKILL just
before its N-th file-system mutation (write, truncate, fsync, rename, unlink), counted
from 1. With VDISK_CRASH_COUNT=FILE it writes the number of mutations it made to FILE at
exit, so a harness can spread kill points over a command's whole run.
"""
from __future__ import annotations

import atexit
import builtins
import os
import signal

_WRAPPED = ("pwrite", "pwritev", "write", "truncate", "ftruncate", "fsync", "fdatasync",
            "replace", "rename", "unlink", "rmdir")


def install() -> None:
    at = os.environ.get("VDISK_CRASH_AT")
    count_file = os.environ.get("VDISK_CRASH_COUNT")
    if not at and not count_file:
        return
    target = int(at) if at else -1
    state = {"n": 0}

    def wrap(fn):
        def inner(*args, **kwargs):
            state["n"] += 1
            if state["n"] == target:
                os.kill(os.getpid(), signal.SIGKILL)
            return fn(*args, **kwargs)
        return inner

    for name in _WRAPPED:
        if hasattr(os, name):
            setattr(os, name, wrap(getattr(os, name)))
    real_open = builtins.open

    class _Counted:
        """A file object whose writes, truncates and flushes are kill points too."""

        def __init__(self, f):
            self._f = f

        def __getattr__(self, name):
            return getattr(self._f, name)

        def __enter__(self):
            self._f.__enter__()
            return self

        def __exit__(self, *exc):
            return self._f.__exit__(*exc)

        def __iter__(self):
            return iter(self._f)

        write = property(lambda self: wrap(self._f.write))
        writelines = property(lambda self: wrap(self._f.writelines))
        truncate = property(lambda self: wrap(self._f.truncate))

    def counted_open(file, mode="r", *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        return _Counted(f) if any(c in mode for c in "wax+") else f

    builtins.open = counted_open
    if count_file:

        def report() -> None:
            with real_open(count_file, "w") as f:
                f.write(str(state["n"]))
        atexit.register(report)
