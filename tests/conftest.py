"""Shared fixtures: the independent tools (qemu-img, mtools, fsck.fat, vmdkinfo) and helpers.

Under VDISK_REQUIRE_TOOLS=1 (set by .ci/run) a missing tool fails the test instead of
skipping it, so CI always runs the interop tests.
"""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest
from typer.testing import CliRunner

from vdisk_tool.cli.app import app

REQUIRE = os.environ.get("VDISK_REQUIRE_TOOLS") == "1"

# Modules whose tests are long (crash harnesses, fuzzing, property tests): `-m "not slow"`
# leaves them out; .ci/run does that for the extra interpreters, the main one runs them all.
SLOW_MODULES = frozenset({
    "test_crash_all", "test_crash_vmdk", "test_fuzz", "test_vmdk_props", "test_security",
    "test_findings_coverage", "test_vmdk_hostile",
})
SLOW_TESTS = frozenset({
    "test_grow_every_subformat", "test_interrupted_edit_is_undone_by_check_repair",
    "test_cf_grow_is_crash_safe",
})


def pytest_collection_modifyitems(config, items) -> None:
    for item in items:
        module = item.module.__name__.rsplit(".", 1)[-1] if item.module is not None else ""
        if module in SLOW_MODULES or item.originalname in SLOW_TESTS:
            item.add_marker(pytest.mark.slow)


def need(available: bool, what: str) -> None:
    """An independent tool the test drives: missing, it fails under VDISK_REQUIRE_TOOLS=1
    (as in CI) and skips elsewhere."""
    if not available:
        if REQUIRE:
            pytest.fail(f"{what} is required (VDISK_REQUIRE_TOOLS=1) but not installed")
        pytest.skip(f"{what} not installed")


def need_tool(name: str) -> str:
    path = shutil.which(name)
    need(path is not None, name)
    assert path is not None
    return path


def run(*args: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    """Run an external tool; capture text output."""
    env = dict(os.environ, MTOOLS_SKIP_CHECK="1")
    return subprocess.run(list(args), check=check, capture_output=True, text=True, env=env, **kw)


@pytest.fixture
def qemu_img() -> str:
    return need_tool("qemu-img")


@pytest.fixture
def qemu_io() -> str:
    return need_tool("qemu-io")


@pytest.fixture
def vmdkinfo() -> str:
    return need_tool("vmdkinfo")


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def vdisk(runner: CliRunner, *args: str):
    """Invoke the CLI in-process; returns the click Result (exit_code, stdout, stderr)."""
    return runner.invoke(app, list(args), catch_exceptions=False)


def break_grain_table_and_flag(path) -> None:
    """Damage a sparse VMDK the way `check --repair` can fix: grain 16 of the primary grain
    table points past the end of the file (its redundant copy stays sound), and the
    uncleanShutdown flag is set."""
    import struct

    from vdisk_tool.image.sparse import SparseExtent
    e = SparseExtent(str(path))
    gt0 = e.gd[0]
    e.close()
    with open(path, "r+b") as f:
        f.seek(gt0 * 512 + 16 * 4)
        f.write(struct.pack("<I", 0x7FFFFFF0))
        f.seek(72)
        f.write(b"\x01")
