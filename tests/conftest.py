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
    "test_findings_coverage", "test_vmdk_hostile", "test_powerloss", "test_crash_inplace",
    "test_inplace", "test_fat_damage", "test_ova_hostile", "test_vmdk_limits", "test_roles",
    "test_cid", "test_grow", "test_journal", "test_vhdx_commands", "test_platform_crash",
    "test_qcow2_write", "test_qcow2_hostile", "test_qcow2_bundle", "test_bundle_convert",
    # every command walked or run through the CLI: the interpreter makes no difference there
    "test_locks", "test_readme", "test_json_schema", "test_cli_shape", "test_completion",
    "test_fast",
    # interop with the independent tools, whose time is theirs: once is enough
    "test_ova", "test_boot_verify", "test_fat_interop", "test_qcow2_grow", "test_upgrade_trap",
    "test_dump_cli", "test_quiet", "test_vmdk_detect", "test_qcow2_create", "test_sample_bundle",
    "test_vhdx_read", "test_vhdx_check", "test_vhdx_child",
})
SLOW_TESTS = frozenset({
    "test_grow_every_subformat", "test_interrupted_edit_is_undone_by_check_repair",
    "test_cf_grow_is_crash_safe", "test_grow_moves_the_bat_when_it_must",
    "test_convert_to_vhdx_passes_qemu",
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


# Commands that write an image, with the position (among the arguments after the command
# words) of the image they write. After each one that succeeds on a sparse VMDK, `vdisk()`
# runs `vdisk check` on it: its two grain tables, the grain directory and the header must
# agree (qemu-img check does not compare the redundant table).
WRITERS: dict[tuple[str, ...], int] = {
    ("fs", "put"): 0, ("fs", "rm"): 0, ("fs", "mkdir"): 0, ("fs", "mv"): 0, ("fs", "label"): 0,
    ("fs", "format"): 0, ("boot", "restore"): 0, ("boot", "create"): 0, ("flash", "restore"): 0,
    ("flash", "reset"): 0, ("dump", "write"): 0, ("dump", "clear"): 0, ("dump", "init"): 0,
    ("cf", "grow"): 0, ("cf", "format"): 0, ("grow",): 0, ("create",): 0, ("convert",): 1,
    ("check",): 0,
}


def written_sparse_image(args: list[str], magic: bytes = b"KDMV") -> str | None:
    """The sparse VMDK (or, with magic QFI\\xfb, the qcow2) a successful command line wrote,
    if any (see WRITERS)."""
    if "--dry-run" in args or (args[:1] == ["check"] and "--repair" not in args):
        return None
    for words, pos in WRITERS.items():
        if tuple(args[:len(words)]) == words:
            rest = args[len(words):]
            target = rest[pos] if len(rest) > pos and not rest[pos].startswith("-") else None
            if target and os.path.isfile(target):
                with open(target, "rb") as f:
                    if f.read(4) == magic:
                        return target
    return None


def vdisk(runner: CliRunner, *args: str):
    """Invoke the CLI in-process; returns the click Result (exit_code, stdout, stderr).
    A command that wrote a sparse VMDK must leave it clean for `vdisk check`, one that wrote
    a qcow2 clean for `qemu-img check`."""
    result = runner.invoke(app, list(args), catch_exceptions=False)
    target = written_sparse_image(list(args)) if result.exit_code == 0 else None
    if target:
        check = runner.invoke(app, ["check", target], catch_exceptions=False)
        assert check.exit_code == 0, f"vdisk {' '.join(args)} left {target} unclean:\n{check.stdout}"
    qcow2 = written_sparse_image(list(args), b"QFI\xfb") if result.exit_code == 0 else None
    if qcow2 and shutil.which("qemu-img"):
        # every qcow2 vdisk writes must pass the oracle's refcount check
        qc = run("qemu-img", "check", "-f", "qcow2", qcow2, check=False)
        assert qc.returncode == 0, f"vdisk {' '.join(args)} left {qcow2} failing qemu-img check:\n{qc.stdout}"
    return result


def break_grain_table_and_flag(path) -> None:
    """Damage a sparse VMDK the way `check --repair` can fix: grain 16 of the primary grain
    table points past the end of the file (its redundant copy stays sound), and the
    uncleanShutdown flag is set."""
    import struct

    from vdisk_tool.image.vmdk.sparse import SparseExtent
    e = SparseExtent(str(path))
    gt0 = e.gd[0]
    e.close()
    with open(path, "r+b") as f:
        f.seek(gt0 * 512 + 16 * 4)
        f.write(struct.pack("<I", 0x7FFFFFF0))
        f.seek(72)
        f.write(b"\x01")


def descriptor_lines(path) -> list[str]:
    """The descriptor of a VMDK, as lines: the text file, or the area embedded in a sparse
    extent (read directly, not through vdisk)."""
    with open(path, "rb") as f:
        head = f.read(64 * 1024)
    if head[:4] == b"KDMV":
        offset = int.from_bytes(head[28:36], "little") * 512
        sectors = int.from_bytes(head[36:44], "little")
        head = head[offset:offset + sectors * 512]
    return head.split(b"\0", 1)[0].decode().splitlines()


def assert_cid_renewed(before: list[str], after: list[str]) -> None:
    """The content changed: the descriptor keeps every line but CID, which is new."""
    def cid(lines: list[str]) -> str:
        found = [ln for ln in lines if ln.startswith("CID=")]
        assert len(found) == 1, lines
        return found[0]
    assert cid(after) != cid(before), "the CID was not renewed"
    assert [ln for ln in after if not ln.startswith("CID=")] == \
        [ln for ln in before if not ln.startswith("CID=")]
