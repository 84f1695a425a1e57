"""The shipped sample bundle and its scripted broken variants: each problem is found by
`vdisk bundle check` with the right code, and the command the report names fixes it."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import vdisk

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "sample_images" / "ipva"
SCRIPT = ROOT / "sample_images" / "make_sample_bundle.py"


def _codes(runner, folder: Path) -> tuple[int, set[str]]:
    res = vdisk(runner, "bundle", "check", str(folder), "--json")
    doc = json.loads(res.stdout)
    issues = doc.get("issues") or doc.get("findings") or []
    for d in doc.get("disks", []):
        issues += d.get("issues", []) + d.get("findings", [])
    return res.exit_code, {i["code"] for i in issues}


def test_shipped_bundle_is_healthy(runner):
    res = vdisk(runner, "bundle", "check", str(SAMPLE))
    assert res.exit_code == 0, res.output
    assert "healthy" in res.stdout
    res = vdisk(runner, "verify", str(SAMPLE))
    assert res.exit_code == 0, res.output
    assert "build 90468" in res.stdout


def test_script_rebuilds_a_healthy_bundle(tmp_path, runner):
    out = tmp_path / "ipva"
    subprocess.run([sys.executable, str(SCRIPT), str(out)], check=True, capture_output=True)
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in SAMPLE.iterdir())
    assert vdisk(runner, "bundle", "check", str(out)).exit_code == 0
    for p in SAMPLE.iterdir():   # byte for byte: the script is reproducible
        assert (out / p.name).read_bytes() == p.read_bytes(), p.name


def _variant(tmp_path: Path, name: str) -> Path:
    dest = tmp_path / name
    subprocess.run([sys.executable, str(SCRIPT), str(SAMPLE), "--variant", name, str(dest)],
                   check=True, capture_output=True)
    return dest


@pytest.mark.parametrize("name,code,fix", [
    ("crashed-update", "fw.truncated", ["boot", "restore", "{d}/hd-boot.vmdk", "--firmware",
                                        "{d}/ipva.bin", "--yes"]),
    ("missing-perfctr", "vmx.perfctr-missing", ["bundle", "check", "{d}", "--fix"]),
    ("e1000-nic", "vmx.nic-model", ["bundle", "check", "{d}", "--fix"]),
    ("generated-mac", "vmx.mac-generated", ["bundle", "set-mac", "{d}", "--mac", "00:50:56:00:1a:60"]),
])
def test_variant_is_found_and_fixed(tmp_path, runner, name, code, fix):
    d = _variant(tmp_path, name)
    exit_code, codes = _codes(runner, d)
    assert exit_code == 1 and code in codes, codes
    res = vdisk(runner, *[a.format(d=d) for a in fix])
    assert res.exit_code in (0, 1), res.output
    exit_code, codes = _codes(runner, d)
    assert code not in codes and exit_code == 0, codes
    if name == "crashed-update":
        assert vdisk(runner, "verify", str(d / "hd-boot.vmdk")).exit_code == 0


def test_shipped_dump_store_has_a_torn_newest_record(tmp_path, runner):
    """Two crash dumps, the newest torn (the appliance died while writing it), as the
    README shows: `dump list` lists both (exit 1), `dump extract` warns, writes the good
    one and exits 1, `--salvage` takes the torn one; for `bundle check` a lost crash dump is
    worth knowing (info) but no fault: the bundle stays healthy."""
    dump = str(SAMPLE / "hd-dump.vmdk")
    res = vdisk(runner, "dump", "list", dump, "--json")
    doc = json.loads(res.stdout)
    assert res.exit_code == 1
    assert [(r["sequence"], r["status"]) for r in doc["records"]] == [(1, "good"), (2, "torn")]
    assert [f["code"] for f in doc["findings"]] == ["dump.record-torn"]
    out = tmp_path / "crash_dump.txt"
    res = vdisk(runner, "dump", "extract", dump, "-o", str(out))
    assert res.exit_code == 1 and "the newest record 2 (slot 1) is torn" in res.stderr, res.output
    assert out.read_bytes() == b"first crash: PBX task watchdog\n" * 40
    res = vdisk(runner, "dump", "extract", dump, "--salvage", "-o", str(tmp_path / "torn.txt"))
    assert (tmp_path / "torn.txt").read_bytes().startswith(b"second crash: out of memory")
    exit_code, codes = _codes(runner, SAMPLE)
    assert exit_code == 0 and {"bundle.dump-torn", "bundle.dump-present"} <= codes, codes


def test_shipped_files_are_small():
    for p in SAMPLE.glob("*.vmdk"):
        assert p.stat().st_size <= 512 * 1024, p
