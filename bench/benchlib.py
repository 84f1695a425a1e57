"""What the benches share: how `vdisk` is run, as a user runs it.

A user runs the `vdisk` script that pip installed, from bytecode pip compiled at install
time. An editable install under PYTHONDONTWRITEBYTECODE=1 would compile every module
from source on every run instead, which no user pays: vdisk_command() byte-compiles the
package first, then names the script beside the interpreter (or `python -m vdisk_tool`
where there is none).
"""
from __future__ import annotations

import compileall
import os
import sys


def vdisk_command(*extra: str) -> list[str]:
    import vdisk_tool
    compileall.compile_dir(os.path.dirname(vdisk_tool.__file__), quiet=1)
    script = os.path.join(os.path.dirname(sys.executable), "vdisk")
    base = [script] if os.path.exists(script) else [sys.executable, "-m", "vdisk_tool"]
    return [*base, *extra]
