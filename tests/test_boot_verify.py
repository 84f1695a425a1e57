"""`vdisk verify` on boot disks made by mkfs.fat + mcopy + sfdisk (+ qemu-img convert):
the firmware inside, and the problems around the file."""
from __future__ import annotations

import json
import os

import pytest
from conftest import vdisk
from fwbuilder import PART_OFFSET, Fat16, FwImage, make_raw_boot, standard, to_vmdk

from vdisk_tool.ipva.boot import verify_target

LOADER_LINE = "checksum wrong! Loading failed for image=IPVA    BIN"


def firmware(scale: int = 20) -> bytes:
    """A firmware of some 100 KiB: several clusters of 2 KiB on a 32 MiB FAT16."""
    return standard(scale).to_bytes()


@pytest.fixture(scope="module")
def fw_bytes() -> bytes:
    return firmware()


def codes(res) -> list[str]:
    return [f.code for f in res.findings]


def test_healthy_sparse_vmdk(tmp_path, runner, fw_bytes):
    raw = make_raw_boot(str(tmp_path / "boot.img"), fw_bytes)
    disk = to_vmdk(raw, str(tmp_path / "hd-boot.vmdk"))
    res = verify_target(disk)
    assert res.ok and codes(res) == []
    assert res.volume["fat_type"] == 16 and res.volume["label"] == "IPVABOOT"
    assert res.volume["partition"] == 1
    assert res.firmware.header.image_bytes == len(fw_bytes)
    r = vdisk(runner, "verify", disk)
    assert r.exit_code == 0 and r.stdout.count("\n") == 1 and "OK" in r.stdout
    doc = json.loads(vdisk(runner, "verify", disk, "--json").stdout)
    assert doc["ok"] and doc["kind"] == "disk"
    assert [s["name"] for s in doc["firmware"]["sections"]] == ["LOADER", "KERNEL", "PBX", "WEBUI"]


@pytest.mark.parametrize("subformat", ["streamOptimized", "monolithicFlat"])
def test_other_subformats(tmp_path, fw_bytes, subformat):
    raw = make_raw_boot(str(tmp_path / "boot.img"), fw_bytes, 8)
    disk = to_vmdk(raw, str(tmp_path / "hd-boot.vmdk"), subformat)
    assert verify_target(disk).ok


def test_superfloppy_and_other_files(tmp_path, fw_bytes):
    raw = make_raw_boot(str(tmp_path / "boot.img"), fw_bytes, 8, superfloppy=True,
                        extra={"README.TXT": b"hello", "A_LONG_NAME.TXT": b"x" * 5000})
    res = verify_target(raw)
    assert res.ok and res.volume["partition"] is None


def test_bundle_folder_and_vmx(tmp_path, runner, fw_bytes):
    raw = make_raw_boot(str(tmp_path / "boot.img"), fw_bytes, 8)
    to_vmdk(raw, str(tmp_path / "xxx.vmdk"))
    os.unlink(raw)
    vmx = tmp_path / "ipva.vmx"
    vmx.write_text('.encoding = "UTF-8"\nide0:0.present = "TRUE"\n'
                   'ide0:0.fileName = "xxx.vmdk"\nide1:0.present = "TRUE"\n'
                   'ide1:0.fileName = "other.vmdk"\n')
    for target in (str(tmp_path), str(vmx)):
        res = verify_target(target)
        assert res.ok and res.path.endswith("xxx.vmdk") and res.via == str(vmx)
    r = vdisk(runner, "verify", str(tmp_path))
    assert r.exit_code == 0 and "ide0:0" in r.stdout


def test_vmx_without_boot_disk(tmp_path, runner):
    vmx = tmp_path / "ipva.vmx"
    vmx.write_text('ide0:1.present = "TRUE"\nide0:1.fileName = "cf.vmdk"\n')
    r = vdisk(runner, "verify", str(vmx))
    assert r.exit_code == 3 and "ide0:0" in r.stderr


def _damaged(runner, disk: str, *expected: str) -> list[str]:
    r = vdisk(runner, "verify", disk)
    assert r.exit_code == 1, r.output
    lines = r.stdout.splitlines()
    assert lines[0] == LOADER_LINE
    for code in expected:
        assert any(f": {code}" in ln or f"{code} @" in ln or f"{code}:" in ln
                   for ln in lines), (code, r.stdout)
    return lines


def test_update_crashed_at_a_cluster_boundary(tmp_path, runner, fw_bytes):
    cut = (len(fw_bytes) // 2) // 2048 * 2048
    raw = make_raw_boot(str(tmp_path / "boot.img"), fw_bytes[:cut])
    res = verify_target(raw)
    assert codes(res) == ["fw.truncated"]
    _damaged(runner, to_vmdk(raw, str(tmp_path / "b.vmdk")), "fw.truncated")


def test_update_cut_inside_a_cluster(tmp_path, fw_bytes):
    raw = make_raw_boot(str(tmp_path / "boot.img"), fw_bytes[:len(fw_bytes) // 3 + 777])
    res = verify_target(raw)
    assert codes(res) == ["fw.truncated"]
    assert res.firmware.file_bytes == len(fw_bytes) // 3 + 777


def test_entry_larger_than_chain(tmp_path, runner, fw_bytes):
    raw = make_raw_boot(str(tmp_path / "boot.img"), fw_bytes)
    Fat16(raw).cut_chain(5)
    res = verify_target(raw)
    assert codes(res)[:2] == ["boot.chain-short", "fw.truncated"]
    assert res.firmware.file_bytes == 5 * 2048
    lines = _damaged(runner, raw, "boot.chain-short", "fw.truncated")
    assert any("5 of" in ln for ln in lines)


def test_section_damage_inside_the_volume(tmp_path, runner):
    img = standard(20)
    data = bytearray(img.to_bytes())
    off, _, _ = img.layout[2]
    data[off + 10] ^= 0xFF
    raw = make_raw_boot(str(tmp_path / "boot.img"), bytes(data))
    res = verify_target(raw)
    assert codes(res) == ["fw.section-crc", "fw.image-crc"]
    lines = _damaged(runner, raw, "fw.section-crc")
    assert any("section PBX" in x and "failed" in x for x in lines)


def test_no_ipva_bin(tmp_path, runner):
    raw = make_raw_boot(str(tmp_path / "boot.img"), None, extra={"OTHER.BIN": b"1"})
    assert codes(verify_target(raw)) == ["boot.no-file"]
    _damaged(runner, raw, "boot.no-file")


def test_lower_case_long_name_only_is_not_the_8_3_entry(tmp_path):
    # mcopy stores "ipva.bin" with the 8.3 entry IPVA    BIN plus a long name: still found
    raw = make_raw_boot(str(tmp_path / "boot.img"), firmware(2), 8, name="ipva.bin")
    assert verify_target(raw).ok


def test_blank_disk_has_no_partition(tmp_path, runner):
    raw = tmp_path / "blank.img"
    with open(raw, "wb") as f:
        f.truncate(4 << 20)
    # a disk that is not firmware: needs a disk-like name
    assert codes(verify_target(str(raw))) == ["boot.no-partition"]
    _damaged(runner, str(raw), "boot.no-partition")


def test_partition_without_fat(tmp_path, fw_bytes):
    raw = make_raw_boot(str(tmp_path / "boot.img"), fw_bytes, 8)
    with open(raw, "r+b") as f:
        f.seek(PART_OFFSET)
        f.write(bytes(512))
    assert codes(verify_target(raw)) == ["boot.no-fat"]


def test_fat_copies_differ(tmp_path, fw_bytes):
    raw = make_raw_boot(str(tmp_path / "boot.img"), fw_bytes, 8)
    fat = Fat16(raw)
    _, first, _ = fat.entry()
    fat.set(first + 3, 0x1234, copies=(1,))
    res = verify_target(raw)
    assert codes(res) == ["boot.fat-damaged"] and not res.ok


def test_firmware_with_trailing_data_in_volume(tmp_path):
    raw = make_raw_boot(str(tmp_path / "boot.img"), FwImage(standard(3).sections).to_bytes()
                        + b"\0" * 100, 8)
    assert codes(verify_target(raw)) == ["fw.trailing-data"]


@pytest.mark.parametrize("subformat", ["monolithicSparse", "streamOptimized", "monolithicFlat"])
def test_direct_reader_reads_what_the_disk_reads(tmp_path, subformat):
    from vdisk_tool.image.disk import open_image
    from vdisk_tool.ipva.boot import DirectReader
    raw = make_raw_boot(str(tmp_path / "boot.img"), firmware(3), 8)
    with open(raw, "r+b") as f:        # data in the middle of a hole, across a grain border
        f.seek(5 * (1 << 20) - 100)
        f.write(b"\x5a" * 300)
    disk_path = to_vmdk(raw, str(tmp_path / "d.vmdk"), subformat)
    with open_image(disk_path) as disk:
        direct = DirectReader(disk)
        try:
            with open(raw, "rb") as f:
                whole = f.read()
            for off, n in ((0, 8 << 20), (5 * (1 << 20) - 4096, 8192), (12345, 1)):
                assert direct.read_at(off, n) == disk.read_at(off, n) == whole[off:off + n]
        finally:
            direct.close()


SAMPLES = os.path.join(os.path.dirname(__file__), "..", "sample_images")


def test_samples_verify_as_documented():
    ok = verify_target(os.path.join(SAMPLES, "hd-boot.vmdk"))
    assert ok.ok and ok.firmware.header.build == 90468
    bad = verify_target(os.path.join(SAMPLES, "hd-boot-crashed.vmdk"))
    assert codes(bad) == ["boot.chain-short", "fw.truncated"]


def test_sample_generator_is_deterministic(tmp_path):
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        "make_boot_samples", os.path.join(SAMPLES, "make_boot_samples.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.main(str(tmp_path))
    for name in ("hd-boot.vmdk", "hd-boot-crashed.vmdk"):
        with open(tmp_path / name, "rb") as a, open(os.path.join(SAMPLES, name), "rb") as b:
            assert a.read() == b.read(), name
