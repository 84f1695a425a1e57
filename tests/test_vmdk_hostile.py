"""Malformed VMDKs (specs/vmdk.md "Corruption scenarios", vmdk-facts §11): vdisk must
refuse them with one clear line and exit 3, or report findings with exit 1 — never a
traceback, never an unbounded allocation, never zeros for bytes that are not there.

The corpus is derived in fixtures from small images qemu-img writes (tests/vmdkcorpus.py).
Every CLI run happens in a subprocess with a 1 GiB address-space limit, so an allocation
sized by a hostile header fails the test instead of the machine.
"""
from __future__ import annotations

import json
import os
import re
import resource
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
import vmdkcorpus as vc
from conftest import need_tool
from typer.testing import CliRunner

from vdisk_tool.cli.app import app, main
from vdisk_tool.errors import VdiskError
from vdisk_tool.image.base import iter_chunks
from vdisk_tool.image.disk import open_image

ADDRESS_SPACE_BYTES = 1 << 30
TIMEOUT_S = 60
CASES = {c.name: c for c in vc.HOSTILE}

# Engine bugs found by this corpus: keep the test, mark it, remove the mark when fixed.
# (case, test) -> the bug; "cli" is test_cli_refuses_or_reports,
# "read" is test_reads_raise_vdisk_errors.
KNOWN_BUGS: dict[tuple[str, str], str] = {}


# Why an "open" case must be refused: a pattern the one error line must match (so that the
# refusal is for the damage made, not for some accident of building the case).
OPEN_REASONS = {
    "capacity-2^63": r"capacity", "capacity-u64-max": r"capacity",
    "capacity-over-32Mi-gd-entries": r"capacity|directory entries",
    "grain-size-0": r"grainSize", "grain-size-7": r"grainSize", "grain-size-96": r"grainSize",
    "grain-size-2^40": r"grainSize",
    "gtes-per-gt-0": r"numGTEsPerGT", "gtes-per-gt-3": r"numGTEsPerGT",
    "gtes-per-gt-2^20": r"numGTEsPerGT",
    "gd-offset-outside": r"gdOffset|grain directory", "gd-offset-zero": r"gdOffset|grain directory",
    "bad-magic": r"magic", "unfinished-magic-kdmv": r"kdmv|unfinished|interrupted",
    "version-0": r"version", "version-4": r"version", "unknown-incompat-flag": r"flag",
    "compress-algorithm-7": r"compress", "compressed-without-markers": r"compress|marker",
    "descriptor-offset-past-eof": r"descriptor", "descriptor-size-huge": r"descriptor",
    "truncated-half-header": r"short|truncat",
    "stream-bad-footer-magic": r"footer", "stream-missing-eos": r"footer|end.of.stream|EOS",
    "stream-footer-gd-outside": r"gdOffset|grain directory",
    "descriptor-10MiB": r"descriptor.*(large|bytes|size)", "descriptor-200k-lines": r"lines",
    "descriptor-65537-extents": r"extents",
    "extent-path-dotdot": r"outside", "extent-path-absolute": r"outside",
    "extent-symlink-outside": r"outside", "extent-missing-file": r"missing|no such",
    "extent-size-disagrees": r"32000", "extent-line-invalid": r"extent line|lots",
    "extent-type-unknown": r"BOGUS", "descriptor-no-extents": r"no extent",
    "descriptor-binary-garbage": r"descriptor|line",
    "parent-hint-outside-folder": r"outside", "parent-hint-absolute": r"outside",
    "parent-missing": r"gone\.vmdk", "parent-cid-mismatch": r"parentCID|0badc0de",
    "parent-chain-loop": r"loop", "parent-hint-missing": r"parent",
    "cowd-magic": r"COWD|vmfsSparse", "sesparse-magic": r"seSparse",
    "kdmv-then-garbage": r"SparseExtentHeader",
}

# What `vdisk check --json` must name for damage that lets the image open (specs/vmdk.md
# "Invariants"): the finding code that the case's damage violates.
EXPECTED_FINDINGS = {
    "gt-past-eof": "vmdk.gt-out-of-range",
    "grain-past-eof": "vmdk.grain-pointer",
    "grain-straddles-eof": "vmdk.grain-pointer",
    "grain-into-header": "vmdk.grain-pointer",
    "gt-loop-shared-gt": "vmdk.gt-shared",
    "gd-rgd-gt-mismatch": "vmdk.gt-rgt-mismatch",
    "rgd-offset-outside": "vmdk.rgd-unreadable",
    "truncated-half-gt": "vmdk.gt-out-of-range",
    "truncated-mid-grain": "vmdk.grain-pointer",
    "stream-bad-grain-lba": "vmdk.stream-grain",
    "stream-corrupt-zlib": "vmdk.stream-grain",
    "stream-compressed-size-0": "vmdk.stream-grain",
    "stream-compressed-size-huge": "vmdk.stream-grain",
    "stream-qemu-grain-past-eof": "vmdk.grain-pointer",
    "flat-offset-past-eof": "vmdk.flat-size-mismatch",
    "flat-file-truncated": "vmdk.flat-size-mismatch",
    "stream-grain-inflates-too-large": "vmdk.stream-grain",
}


def vdisk_script() -> str:
    """The `vdisk` console script of the interpreter running the tests (venv or .venv)."""
    path = Path(sys.executable).parent / "vdisk"
    assert path.exists(), f"no vdisk script next to {sys.executable}"
    return str(path)


def _limit() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE_BYTES, ADDRESS_SPACE_BYTES))


def run_limited(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("VDISK_DEBUG", None)
    return subprocess.run(list(args), capture_output=True, text=True, preexec_fn=_limit,
                          timeout=TIMEOUT_S, cwd=cwd, env=env, check=False)


def wait_child(pid: int, timeout_s: float = TIMEOUT_S) -> int:
    """waitpid with a deadline: a child that hangs is killed and fails the test."""
    import time

    deadline = time.monotonic() + timeout_s
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            pytest.fail(f"forked vdisk did not finish within {timeout_s} s")
        time.sleep(0.005)


def run_forked(*args: str) -> subprocess.CompletedProcess:
    """`vdisk ARGS` through the console script's own entry point (vdisk_tool.cli.app:main),
    in a forked child under the same address-space limit: as the script, minus the
    interpreter start-up (~0.3 s), which matters over a corpus of 60 images × 3 commands."""
    import tempfile

    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        pid = os.fork()
        if pid == 0:  # child
            code = 99
            try:
                os.dup2(out.fileno(), 1)
                os.dup2(err.fileno(), 2)
                # pytest's capture replaced sys.stdout/err: talk to the real fds again
                sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115 - lives until _exit
                sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
                _limit()
                sys.argv = ["vdisk", *args]
                try:
                    main()
                    code = 0
                except SystemExit as exc:
                    code = exc.code if isinstance(exc.code, int) else 1
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        status = wait_child(pid)
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(["vdisk", *args], os.waitstatus_to_exitcode(status),
                                           out.read().decode(errors="replace"),
                                           err.read().decode(errors="replace"))


@cache
def commands() -> frozenset[str]:
    """The commands this vdisk offers (check arrives with the checker)."""
    found = set()
    for name in ("info", "map", "check"):
        res = subprocess.run([vdisk_script(), name, "--help"], capture_output=True, text=True,
                             check=False)
        if res.returncode == 0:
            found.add(name)
    return frozenset(found)


@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> vc.Bases:
    need_tool("qemu-img")
    need_tool("qemu-io")
    return vc.make_bases(tmp_path_factory.mktemp("bases"))


def assert_clean_failure(res: subprocess.CompletedProcess, allowed: set[int], what: str) -> None:
    out = (f"{what}: exit {res.returncode}\nstdout: {res.stdout[-2000:]}\n"
           f"stderr: {res.stderr[-2000:]}")
    assert res.returncode in allowed, out
    assert "Traceback" not in res.stderr and "Traceback" not in res.stdout, out
    assert "MemoryError" not in res.stderr, out  # bounded: the 1 GiB limit was never reached
    assert "internal error" not in res.stderr, out
    if res.returncode == 3:
        lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith("vdisk: error:")]
        others = [ln for ln in lines if not ln.startswith(("vdisk: error:", "hint:",
                                                           "vdisk: warning:"))]
        assert len(errors) == 1 and not others, out


def _read_everything(path: str) -> dict:
    out: dict = {"stage": "open", "error": None, "kind": None, "nonzero": 0}
    try:
        with open_image(path) as disk:
            out["stage"] = "read"
            for _off, n, data in iter_chunks(disk):
                if data is not None:
                    out["nonzero"] += n - data.count(0)
            out["stage"] = "done"
    except VdiskError as exc:
        out["error"], out["kind"] = str(exc), type(exc).__name__
    except BaseException as exc:  # noqa: BLE001 - reported to the parent as a failure
        out["error"], out["kind"] = repr(exc)[:300], "FOREIGN:" + type(exc).__name__
    return out


def read_all(path: Path) -> dict:
    """Open and read every stored byte in a forked child under the address-space limit;
    what happened, as a dict (a fork is much cheaper than a fresh interpreter)."""
    import tempfile

    with tempfile.TemporaryFile() as out:
        pid = os.fork()
        if pid == 0:  # child
            code = 0
            try:
                _limit()
                os.write(out.fileno(), json.dumps(_read_everything(str(path))).encode())
            except BaseException:  # noqa: BLE001
                code = 1
            finally:
                os._exit(code)
        status = wait_child(pid)
        out.seek(0)
        payload = out.read()
    assert os.waitstatus_to_exitcode(status) == 0 and payload, f"reader died: status {status}"
    return json.loads(payload)


def _params(test: str):
    out = []
    for case in vc.HOSTILE:
        marks = []
        bug = KNOWN_BUGS.get((case.name, test))
        if bug:
            marks.append(pytest.mark.xfail(strict=True, reason=f"bug: {bug}"))
        out.append(pytest.param(case.name, marks=marks, id=case.name))
    return out


def test_corpus_is_large_enough():
    assert len(vc.HOSTILE) >= 30
    assert len(CASES) == len(vc.HOSTILE), "case names must be unique"
    assert {c.name for c in vc.HOSTILE if c.level == "open"} == set(OPEN_REASONS)
    assert set(EXPECTED_FINDINGS) <= {c.name for c in vc.HOSTILE if c.level != "open"}


@pytest.mark.parametrize("name", _params("cli"))
def test_cli_refuses_or_reports(name, bases, tmp_path):
    case = CASES[name]
    image = case.build(tmp_path / "img", bases)
    vdisk = vdisk_script()
    have = commands()
    open_codes = {3} if case.level == "open" else {0, 3}
    res = run_limited(vdisk, "info", str(image))
    assert_clean_failure(res, open_codes, "info")
    if case.level == "open":
        assert re.search(OPEN_REASONS[name], res.stderr, re.IGNORECASE), res.stderr
    if res.returncode == 0:  # the JSON form of an image that opens (in-process: cheap)
        got = CliRunner().invoke(app, ["info", "--json", str(image)])
        assert got.exit_code == 0, got.output
        assert json.loads(got.stdout)["virtual_size_bytes"] >= 0
    res = run_forked("map", "--json", str(image))
    assert_clean_failure(res, open_codes, "map --json")
    if "check" in have:
        res = run_forked("check", str(image))
        assert_clean_failure(res, {1, 3}, "check")


@pytest.mark.parametrize("name", _params("read"))
def test_reads_raise_vdisk_errors(name, bases, tmp_path):
    """open_image + reading every stored byte: a VdiskError where bytes are missing, and
    never any other exception."""
    case = CASES[name]
    image = case.build(tmp_path / "img", bases)
    got = read_all(image)
    assert not (got["kind"] or "").startswith("FOREIGN"), got
    if case.level == "open":
        assert got["stage"] == "open" and got["kind"], got
    elif case.level == "read":
        assert got["kind"] is not None, f"damaged image read without error: {got}"
    else:
        assert got["kind"] is None or got["stage"] == "read", got


@pytest.mark.parametrize("name", sorted(EXPECTED_FINDINGS))
def test_check_names_the_damage(name, bases, tmp_path):
    if "check" not in commands():
        pytest.fail("vdisk check is missing")
    assert CASES[name].level != "open"
    image = CASES[name].build(tmp_path / "img", bases)
    res = run_forked("check", "--json", str(image))
    assert res.returncode == 1, (res.stdout, res.stderr)
    codes = {f["code"] for f in json.loads(res.stdout)["findings"]}
    assert EXPECTED_FINDINGS[name] in codes, codes


def test_pointer_past_eof_is_not_zeros(bases, tmp_path):
    """The exact bytes of a grain whose GTE points past the end raise, they do not read as 0."""
    image = CASES["grain-past-eof"].build(tmp_path / "img", bases)
    with open_image(image) as disk:
        assert disk.read_at(65536, 512) == bytes(512)  # grain 1: unallocated, truly zero
        with pytest.raises(VdiskError):
            disk.read_at(100, 10)


def test_valid_bases_are_clean(bases):
    """The untouched bases open, read and (where check exists) pass: the corpus' failures
    come from the damage, not from the base images."""
    for image in (bases.sparse8, bases.sparse64, bases.stream_qemu, bases.stream_vmware,
                  bases.split, bases.flat):
        got = read_all(image)
        assert got["stage"] == "done" and got["kind"] is None, (image, got)
        assert got["nonzero"] > 0, image
        res = run_limited(vdisk_script(), "info", str(image))
        assert res.returncode == 0, res.stderr
        if "check" in commands():
            res = run_limited(vdisk_script(), "check", str(image))
            assert res.returncode == 0, (image, res.stdout, res.stderr)


# -- repairs (specs/vmdk.md "Corruption scenarios") ------------------------------------------------
def _damage_gte(path: Path, redundant: bool) -> None:
    vc.patch_u32(path, vc.gte_offset(path, 0, redundant=redundant), 0x00FFFF00)


@pytest.mark.parametrize("damaged", ["primary", "redundant"])
def test_repair_restores_a_grain_table_from_its_sound_copy(bases, tmp_path, damaged):
    """One GT copy points past the end, the other is sound: `check --repair` copies the sound
    one over it, the image checks clean and reads as it did before the damage."""
    image = vc.copy_image(bases.sparse8, tmp_path)
    _damage_gte(image, redundant=damaged == "redundant")
    runner = CliRunner()
    res = runner.invoke(app, ["check", "--json", str(image)])
    assert res.exit_code == 1
    found = json.loads(res.stdout)["findings"]
    assert any(f["code"] == "vmdk.gt-rgt-mismatch" and f["fixable"] for f in found), found
    before = image.read_bytes()
    res = runner.invoke(app, ["check", "--repair", "--dry-run", str(image)])
    assert res.exit_code == 1 and image.read_bytes() == before, res.output
    res = runner.invoke(app, ["check", "--repair", str(image)])
    assert res.exit_code == 0, res.output
    assert runner.invoke(app, ["check", str(image)]).exit_code == 0
    res = runner.invoke(app, ["compare", str(bases.sparse8), str(image)])
    assert res.exit_code == 0, res.output
    q = subprocess.run(["qemu-img", "check", str(image)], capture_output=True, text=True,
                       check=False)
    assert q.returncode == 0, q.stdout + q.stderr


def test_repair_clears_unclean_shutdown(bases, tmp_path):
    image = vc.copy_image(bases.sparse8, tmp_path)
    vc.patch_header(image, unclean_shutdown=1)
    runner = CliRunner()
    res = runner.invoke(app, ["check", "--json", str(image)])
    assert res.exit_code == 1
    assert [f["code"] for f in json.loads(res.stdout)["findings"]] == ["vmdk.unclean-shutdown"]
    backup = tmp_path / "before.vmdk"
    res = runner.invoke(app, ["check", "--repair", "--backup", str(backup), str(image)])
    assert res.exit_code == 0, res.output
    assert vc.read_header(image)["unclean_shutdown"] == 0
    assert vc.read_header(backup)["unclean_shutdown"] == 1


def test_repair_refuses_to_guess(bases, tmp_path):
    """Both GT copies plausible but different: reported, nothing changed."""
    image = CASES["gd-rgd-gt-mismatch"].build(tmp_path / "img", bases)
    before = image.read_bytes()
    res = CliRunner().invoke(app, ["check", "--repair", str(image)])
    assert res.exit_code == 1, res.output
    assert image.read_bytes() == before


@pytest.mark.parametrize("redundant", [False, True], ids=["gd", "rgd"])
def test_repair_restores_a_directory_entry(bases, tmp_path, redundant):
    """One directory entry overwritten, its twin and both tables intact: `check --repair`
    puts the entry back and the disk reads as before."""
    image = vc.copy_image(bases.sparse64, tmp_path)
    vc.patch_u32(image, vc.gd_entry_offset(image, 1, redundant=redundant), 0x00FFFFF0)
    runner = CliRunner()
    res = runner.invoke(app, ["check", "--json", str(image)])
    assert res.exit_code == 1
    assert "vmdk.gd-entry" in {f["code"] for f in json.loads(res.stdout)["findings"]}
    res = runner.invoke(app, ["check", "--repair", str(image)])
    assert res.exit_code == 0, res.output
    assert runner.invoke(app, ["compare", str(bases.sparse64), str(image)]).exit_code == 0
    assert runner.invoke(app, ["check", str(image)]).exit_code == 0
