"""The flash and dump sample disks: what they hold, and that the script re-creates them."""
from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

from conftest import run, vdisk

SAMPLES = Path(__file__).resolve().parent.parent / "sample_images"
SCRIPT = SAMPLES / "make_flash_dump_samples.py"


def _script():
    spec = importlib.util.spec_from_file_location("make_flash_dump_samples", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_script_recreates_the_committed_samples(tmp_path):
    _script().main(str(tmp_path))
    for name in ("hd-flash-used.vmdk", "hd-dump-3-torn.vmdk"):
        assert _sha(tmp_path / name) == _sha(SAMPLES / name)
        assert (SAMPLES / name).stat().st_size <= 512 * 1024


def test_dump_sample_three_records_newest_torn(tmp_path, runner, qemu_img):
    disk = str(SAMPLES / "hd-dump-3-torn.vmdk")
    assert run(qemu_img, "check", disk, check=False).returncode == 0
    r = vdisk(runner, "dump", "list", disk, "--json")
    assert r.exit_code == 1
    recs = json.loads(r.stdout)["records"]
    assert [(x["sequence"], x["status"]) for x in recs] == [(1, "good"), (2, "good"),
                                                            (3, "torn")]
    r = vdisk(runner, "dump", "extract", disk, "-o", "-")
    assert r.exit_code == 1 and r.stdout_bytes == _script().dump_text(2)   # 3 is torn


def test_flash_sample_has_data(runner, qemu_img):
    disk = str(SAMPLES / "hd-flash-used.vmdk")
    assert run(qemu_img, "check", disk, check=False).returncode == 0
    d = json.loads(vdisk(runner, "flash", "info", disk, "--json").stdout)
    assert not d["blank"] and d["segments_in_use"] == 3 and d["size_bytes"] == 100 << 20
