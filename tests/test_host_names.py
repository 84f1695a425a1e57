"""Names and text as VMware writes them on Windows and macOS (specs/platform.md).

Descriptors and vmx files are written here by hand, byte for byte as Workstation on Windows
writes them (CRLF, a BOM, windows-1252 or Shift_JIS bytes), never by vdisk; the disks'
content is bytes the test chose, read back through open_image.
"""
from __future__ import annotations

import unicodedata
from pathlib import Path

import pytest
from conftest import vdisk

from vdisk_tool.errors import ImageError
from vdisk_tool.formats import charsets
from vdisk_tool.formats import vmdk_descriptor as vd
from vdisk_tool.image import platform, vmpath
from vdisk_tool.image.disk import open_image
from vdisk_tool.ipva.vmx import Vmx

MiB = 1 << 20
K = vmpath.NameKind


@pytest.mark.parametrize("text,kind,parts,outside", [
    ("hd-boot-flat.vmdk", K.RELATIVE, ("hd-boot-flat.vmdk",), False),
    ("disks\\hd-boot-flat.vmdk", K.RELATIVE, ("disks", "hd-boot-flat.vmdk"), False),
    (".\\disks/./hd.vmdk", K.RELATIVE, ("disks", "hd.vmdk"), False),
    ("disks\\..\\..\\hd.vmdk", K.RELATIVE, ("disks", "..", "..", "hd.vmdk"), True),
    ("C:\\VMs\\ipva\\hd-boot-flat.vmdk", K.DRIVE, ("VMs", "ipva", "hd-boot-flat.vmdk"), True),
    ("c:/VMs/ipva/hd.vmdk", K.DRIVE, ("VMs", "ipva", "hd.vmdk"), True),
    ("D:hd.vmdk", K.DRIVE, ("hd.vmdk",), True),
    ("\\\\nas\\vms\\base.vmdk", K.UNC, ("nas", "vms", "base.vmdk"), True),
    ("//nas/vms/base.vmdk", K.UNC, ("nas", "vms", "base.vmdk"), True),
    ("\\VMs\\hd.vmdk", K.ROOTED, ("VMs", "hd.vmdk"), True),
    ("/vmfs/volumes/ds1/ipva/hd.vmdk", K.ROOTED, ("vmfs", "volumes", "ds1", "ipva", "hd.vmdk"), True),
])
def test_every_windows_name_form(text: str, kind, parts, outside: bool) -> None:
    name = vmpath.parse_name(text)
    assert (name.kind, name.parts, name.outside) == (kind, parts, outside)


def _flat(folder: Path, extent_name: str, file_name: str | None = None, *, encoding: str = "UTF-8",
          codec: str = "utf-8", crlf: bool = True, fill: bytes = b"\x5a") -> Path:
    """A monolithicFlat pair as Workstation on Windows writes it."""
    target = folder / (file_name or extent_name.replace("\\", "/"))
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(fill * MiB)
    nl = "\r\n" if crlf else "\n"
    text = nl.join(["# Disk DescriptorFile", "version=1", f'encoding="{encoding}"', "CID=fffffffe",
                    "parentCID=ffffffff", 'createType="monolithicFlat"', "",
                    "# Extent description", f'RW 2048 FLAT "{extent_name}" 0', "",
                    "# The Disk Data Base", "#DDB", "", 'ddb.adapterType = "ide"',
                    'ddb.virtualHWVersion = "4"']) + nl
    desc = folder / "d.vmdk"
    desc.write_bytes(text.encode(codec))
    return desc


def _reads(desc: Path, fill: bytes = b"\x5a") -> bool:
    with open_image(str(desc)) as d:
        return d.size_bytes == MiB and d.read_at(MiB - 512, 512) == fill * 512


def test_an_extent_in_a_subfolder_named_with_backslashes(tmp_path: Path) -> None:
    assert _reads(_flat(tmp_path, "disks\\hd-boot-flat.vmdk"))


@pytest.mark.parametrize("name", ["C:\\VMs\\ipva\\hd-boot-flat.vmdk", "\\\\nas\\vms\\hd-flat.vmdk",
                                  "D:hd-flat.vmdk", "\\VMs\\hd-flat.vmdk", "sub\\..\\..\\hd-flat.vmdk"])
def test_drive_letters_and_unc_names_lie_outside_the_folder(tmp_path: Path, runner, name: str) -> None:
    desc = _flat(tmp_path, name, "hd-flat.vmdk")
    with pytest.raises(ImageError, match="lies outside the image's folder"):
        open_image(str(desc))
    res = vdisk(runner, "info", str(desc))
    assert res.exit_code == 3 and "outside the image's folder" in res.output


def test_a_windows_path_trusted_on_another_host_says_why_it_is_missing(tmp_path: Path) -> None:
    if platform.FEATURES.windows:
        pytest.skip("on Windows the drive letter names a file")
    desc = _flat(tmp_path, "C:\\VMs\\ipva\\hd-boot-flat.vmdk", "hd-boot-flat.vmdk")
    with pytest.raises(ImageError, match="is missing .a Windows path, which names no file on this host"):
        open_image(str(desc), allow_outside=True)


def test_case_is_matched_where_the_file_system_ignores_it(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    desc = _flat(tmp_path, "HD-Boot-FLAT.vmdk", "hd-boot-flat.vmdk")
    if not platform.case_insensitive(str(tmp_path)):
        with pytest.raises(ImageError, match="'hd-boot-flat.vmdk' differs only in case"):
            open_image(str(desc))
    monkeypatch.setattr(platform, "case_insensitive", lambda folder: True)
    assert _reads(desc)


def test_a_decomposed_name_as_macos_keeps_it_matches(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    nfd = unicodedata.normalize("NFD", "Büro-flat.vmdk")
    desc = _flat(tmp_path, "Büro-flat.vmdk", nfd)
    monkeypatch.setattr(platform, "case_insensitive", lambda folder: True)
    assert _reads(desc)


@pytest.mark.parametrize("encoding,codec,name", [
    ("UTF-8", "utf-8", "Büro €-flat.vmdk"),
    ("windows-1252", "cp1252", "Büro €-flat.vmdk"),    # € is 0x80: not latin-1
    ("Shift_JIS", "cp932", "仮想表-flat.vmdk"),        # 表 ends with byte 0x5C, a backslash
    ("GBK", "gbk", "虚拟磁盘-flat.vmdk"),
])
def test_non_ascii_extent_names_honour_the_encoding_key(tmp_path: Path, encoding: str, codec: str,
                                                        name: str) -> None:
    desc = _flat(tmp_path, name, encoding=encoding, codec=codec)
    assert _reads(desc)
    d = vd.parse_descriptor(desc.read_bytes())
    assert d.extents[0].filename == name
    d.set("CID", "0badcafe", quoted=False)
    out = d.to_bytes()
    assert out.replace(b"CID=0badcafe", b"CID=fffffffe") == desc.read_bytes()


def test_untouched_shift_jis_lines_keep_their_own_bytes() -> None:
    """cp932 spells some characters twice (NEC special characters: 0x8790 '≒' encodes back
    as 0x81E0): an untouched line keeps the bytes it was read as."""
    assert b"\x87\x90".decode("cp932").encode("cp932") == b"\x81\xe0"
    raw = (b'# Disk DescriptorFile\r\nversion=1\r\nencoding="Shift_JIS"\r\nCID=fffffffe\r\n'
           b'parentCID=ffffffff\r\ncreateType="monolithicFlat"\r\n'
           b'RW 2048 FLAT "\x87\x90-flat.vmdk" 0\r\n')
    d = vd.parse_descriptor(raw)
    d.set("CID", "00000001", quoted=False)
    assert d.to_bytes() == raw.replace(b"CID=fffffffe", b"CID=00000001")


def test_charset_names_as_vmware_writes_them() -> None:
    assert [charsets.python_codec(n) for n in ("UTF-8", "windows-1252", "Shift_JIS", "GBK", "Big5",
                                               "nonsense")] == ["utf-8", "cp1252", "cp932", "gbk",
                                                                "cp950", None]
    assert charsets.declared(b'.encoding = "windows-1252"\r\n', ".encoding") == "windows-1252"
    assert charsets.declared(b'x.encoding = "GBK"\n', ".encoding") is None


# -- vmx files as Workstation on Windows writes them ---------------------------------------------
WIN_VMX = (b'\xef\xbb\xbf.encoding = "windows-1252"\r\n'
           b'config.version = "8"\r\n'
           b'displayName = "IPVA B\xfcro \x80"\r\n'
           b'ide0:0.present = "TRUE"\r\n'
           b'ide0:0.fileName = "disks\\hd-boot.vmdk"\r\n'
           b'ide0:1.present = "TRUE"\r\n'
           b'ide0:1.fileName = "C:\\VMs\\ipva\\hd-cf.vmdk"\r\n'
           b'memsize = "64"\r\n')


def test_a_windows_vmx_reads_with_its_bom_encoding_and_names(tmp_path: Path) -> None:
    v = Vmx(WIN_VMX, str(tmp_path / "ipva.vmx"))
    assert v.get(".encoding") == "windows-1252"        # the BOM is not part of the key
    assert v.get("displayName") == "IPVA Büro €"
    boot, cf = v.slot("ide0:0"), v.slot("ide0:1")
    assert boot is not None and boot.path == str(tmp_path / "disks" / "hd-boot.vmdk")
    assert cf is not None and cf.path is not None
    if not platform.FEATURES.windows:
        assert cf.path == "C:\\VMs\\ipva\\hd-cf.vmdk"


def test_a_windows_vmx_edit_keeps_every_other_byte(tmp_path: Path) -> None:
    p = tmp_path / "ipva.vmx"
    p.write_bytes(WIN_VMX)
    v = Vmx.read(str(p))
    assert v.render() == WIN_VMX and not v.changed
    v.set("memsize", "192")
    v.set("ethernet1.present", "TRUE")
    v.save()
    want = WIN_VMX.replace(b'memsize = "64"', b'memsize = "192"') + b'ethernet1.present = "TRUE"\r\n'
    assert p.read_bytes() == want


def test_a_shift_jis_vmx_keeps_its_bytes() -> None:
    data = (b'.encoding = "Shift_JIS"\r\ndisplayName = "\x89\xbc\x91z\x95\\ \x87\x90"\r\n'
            b'memsize = "64"\r\n')
    v = Vmx(data)
    assert v.get("displayName") == "仮想表 ≒"
    v.set("memsize", "192")
    assert v.render() == data.replace(b'"64"', b'"192"')


def test_the_cli_reads_a_windows_bundle(tmp_path: Path, runner) -> None:
    """`bundle check` on a vmx with a BOM, CRLF and backslash names: the boot slot's disk is
    found in its subfolder (here missing a file, reported by its resolved name)."""
    (tmp_path / "ipva.vmx").write_bytes(WIN_VMX)
    res = vdisk(runner, "bundle", "check", str(tmp_path))
    assert "Traceback" not in res.output
    assert "hd-boot.vmdk" in res.output
