"""Start-up imports only what the command line needs: one command group, no rich unless
something is drawn, no repair/create machinery for `vdisk info` (bench/bench_startup.py
measures the time)."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SAMPLE = Path(__file__).resolve().parent.parent / "sample_images" / "ipva" / "hd-boot.vmdk"
PROBE = """
import sys
sys.argv = ["vdisk", *sys.argv[1:]]
from vdisk_tool.cli.main import main
try:
    main()
except SystemExit:
    pass
print(repr(sorted(m for m in sys.modules if m.startswith(("vdisk_tool", "rich", "construct",
                                                             "pydantic", "json")))), file=sys.stderr)
"""


def _modules(*args: str) -> set[str]:
    r = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True)
    return set(ast.literal_eval(r.stderr.strip().splitlines()[-1]))


def test_info_loads_one_group_and_no_rich() -> None:
    mods = _modules("info", str(SAMPLE))
    groups = {m for m in mods if m.startswith("vdisk_tool.cli.") and m.count(".") == 2}
    assert groups & {"vdisk_tool.cli.fs", "vdisk_tool.cli.bundle", "vdisk_tool.cli.dump",
                     "vdisk_tool.cli.flash", "vdisk_tool.cli.firmware", "vdisk_tool.cli.cf"} == set()
    assert not any(m.startswith("rich") for m in mods)
    assert not mods & {"vdisk_tool.image.repair", "vdisk_tool.image.create",
                       "vdisk_tool.image.grow", "vdisk_tool.image.check",
                       "vdisk_tool.image.vmdk.create", "vdisk_tool.image.vmdk.check"}
    # the OVF package reader, the construct schemas and typer's pydantic validators are
    # the rest of what made `vdisk info` cost 3x `import typer`
    assert not mods & {"vdisk_tool.ipva.ova", "vdisk_tool.ipva.bundle", "vdisk_tool.formats.ovf"}
    assert not any(m.startswith(("construct", "pydantic", "json")) for m in mods), sorted(mods)


def test_option_values_are_read_without_pydantic(tmp_path: Path) -> None:
    """Every kind of option value (text, number with bounds, choice, flag, a list) is
    converted by cli/_coerce.py, so no command line builds typer's pydantic validators."""
    mods = _modules("firmware", "pack", str(tmp_path / "x.bin"), "--build", "7", "--align", "512",
                    "--section", "a=b", "--timestamp", "1", "--json")
    assert "vdisk_tool.cli.firmware" in mods
    assert not any(m.startswith("pydantic") for m in mods)


def test_every_parameter_gets_the_plain_conversion() -> None:
    import typer.main

    from vdisk_tool.cli import _coerce
    from vdisk_tool.cli.app import app, polish
    if _coerce._plain_class() is None:
        pytest.skip("this typer converts values without per-parameter validators")
    group = typer.main.get_command(app)
    polish(group)
    stack, left = [group], []
    while stack:
        cmd = stack.pop()
        for p in cmd.params:
            if not isinstance(getattr(p, "_runtime_param", None), _coerce._plain_class()):
                left.append(f"{cmd.name} {p.name}")
        stack.extend(getattr(cmd, "commands", {}).values())
    assert left == []


def test_version_loads_no_group() -> None:
    mods = _modules("--version")
    assert "vdisk_tool.cli.vmdk" not in mods and "vdisk_tool.fs" not in mods
    assert "vdisk_tool.api" not in mods          # the script API is imported on first use
