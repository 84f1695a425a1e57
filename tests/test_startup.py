"""Start-up imports only what the command line needs: one command group, no rich unless
something is drawn, no repair/create machinery for `vdisk info` (bench/bench_startup.py
measures the time)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SAMPLE = Path(__file__).resolve().parent.parent / "sample_images" / "ipva" / "hd-boot.vmdk"
PROBE = """
import json, sys
sys.argv = ["vdisk", *sys.argv[1:]]
from vdisk_tool.cli.main import main
try:
    main()
except SystemExit:
    pass
print(json.dumps(sorted(m for m in sys.modules if m.startswith(("vdisk_tool", "rich")))),
      file=sys.stderr)
"""


def _modules(*args: str) -> set[str]:
    r = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True)
    return set(json.loads(r.stderr.strip().splitlines()[-1]))


def test_info_loads_one_group_and_no_rich() -> None:
    mods = _modules("info", str(SAMPLE))
    groups = {m for m in mods if m.startswith("vdisk_tool.cli.") and m.count(".") == 2}
    assert groups & {"vdisk_tool.cli.fs", "vdisk_tool.cli.bundle", "vdisk_tool.cli.dump",
                     "vdisk_tool.cli.flash", "vdisk_tool.cli.firmware", "vdisk_tool.cli.cf"} == set()
    assert not any(m.startswith("rich") for m in mods)
    assert not mods & {"vdisk_tool.image.repair", "vdisk_tool.image.create",
                       "vdisk_tool.image.grow", "vdisk_tool.image.check"}


def test_version_loads_no_group() -> None:
    mods = _modules("--version")
    assert "vdisk_tool.cli.vmdk" not in mods and "vdisk_tool.fs" not in mods
    assert "vdisk_tool.api" not in mods          # the script API is imported on first use
