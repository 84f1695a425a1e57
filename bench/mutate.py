"""Mutation score of the test suite (not run in CI).

Each entry of MUTATIONS is a small, realistic bug: a file of src/, an exact piece of its
text, what to put instead, and the tests that should catch it. The script copies the
tracked tree to a scratch folder once, then for each mutation: checks the text still
occurs exactly once (a stale entry is reported, never silently skipped), applies it,
runs the related tests there (the scratch src/ first on PYTHONPATH, so child
`python -m vdisk_tool` runs see the mutant too), and restores the file. A mutation is
caught when the tests fail. Before the first mutation the same tests run unmutated once:
they must pass, or the score means nothing.

    python bench/mutate.py                  # all mutations
    python bench/mutate.py --only lock-dir  # some of them (repeatable)
    python bench/mutate.py --list           # names, files and tests
    python bench/mutate.py --check          # only that every mutation still applies

To add one: append a Mutation; keep `old` short but unique in its file, and point `tests`
at the few test files (or `file::test` ids, or `-k` expressions) that judge the behaviour.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT_S = 900


@dataclass(frozen=True)
class Mutation:
    name: str
    file: str            # relative to the repository
    old: str             # exact text, occurring once in the file
    new: str
    tests: tuple[str, ...]   # pytest arguments (files, node ids, -k expressions)
    why: str = ""


MUTATIONS: list[Mutation] = [
    # -- the four the suite once missed ------------------------------------------------------
    Mutation("no-fsync-before-rename", "src/vdisk_tool/image/safe.py",
             "        for tmp, _ in self.pairs:\n            fsync_path(tmp)\n", "",
             ("tests/test_powerloss.py", "-k", "stream or rename"),
             "Replacement.commit renames copies whose data may still be in the page cache"),
    # (records are applied newest first, and a page is journalled once per edit, so the old
    # "replay oldest first" bug cannot arise; what would break recovery is this:)
    Mutation("pages-written-before-journalled", "src/vdisk_tool/image/journal.py",
             "        keys = sorted(self._pages)\n        self._journal(keys)\n",
             "        keys = sorted(self._pages)\n",
             ("tests/test_inplace.py", "-k", "batches"),
             "a batch reaches the image before its old bytes are in the journal"),
    Mutation("edit-keeps-cid", "src/vdisk_tool/image/edit.py",
             "            if not keep_cid:\n                _renew_cid(disk)\n", "",
             ("tests/test_cid.py",),
             "an edited disk keeps its CID: VMware's snapshot chain cannot see the change"),
    Mutation("redundant-gt-not-updated", "src/vdisk_tool/image/vmdk/sparse.py",
             "                hostio.pwrite(self._fd, raw, rgd_entry * SECTOR + gt_index * 4)\n",
             "                pass\n",
             ("tests/test_cid.py", "tests/test_fat_cli.py"),
             "a new grain is entered in the primary grain table only"),
    # -- durability of the commit order (judged by tests/powerloss.py) -------------------
    Mutation("journal-not-fsynced", "src/vdisk_tool/image/journal.py",
             "        _write_all(self._jfd, out)\n        os.fsync(self._jfd)\n",
             "        _write_all(self._jfd, out)\n",
             ("tests/test_powerloss.py", "-k", "inplace"),
             "the image is written before its undo records are durable"),
    Mutation("journal-inode-not-compared", "src/vdisk_tool/image/journal.py",
             "    if st.st_ino != ino:\n", "    if False:\n",
             ("tests/test_inplace.py", "-k", "foreign"),
             "a journal copied along with the image is applied to other files"),
    Mutation("no-truncate-on-recovery", "src/vdisk_tool/image/journal.py",
             "                    os.ftruncate(fd, length)\n", "                    pass\n",
             ("tests/test_inplace.py", "-k", "batches"),
             "appended grains stay after a roll-back"),
    Mutation("new-grain-table-not-in-rgd", "src/vdisk_tool/image/vmdk/sparse.py",
             "            hostio.pwrite(self._fd, struct.pack(\"<I\", rsector),",
             "            (self._fd, struct.pack(\"<I\", rsector),",
             ("tests/test_inplace.py", "-k", "never_allocated"),
             "a grain table allocated by an edit is missing from the redundant directory"),
    Mutation("rewrite-drops-owner", "src/vdisk_tool/image/safe.py",
             "            keep_identity(target, tmp)\n", "",
             ("tests/test_inplace.py", "-k", "rewrites"),
             "a stream disk rewritten by an edit comes back root-owned, mode 644"),
    Mutation("no-folder-fsync-after-rename", "src/vdisk_tool/image/safe.py",
             "        for _, target in self.pairs[:1]:\n            fsync_dir(target)\n", "",
             ("tests/test_powerloss.py", "-k", "rename"),
             "the rename may still be undone by a power cut after the command said done"),
    # -- bounds --------------------------------------------------------------------------
    Mutation("bounds-device-range", "src/vdisk_tool/image/base.py",
             "offset + length > dev.size_bytes:", "offset + length > dev.size_bytes + 4096:",
             ("tests/test_vmdk_read.py", "-k", "past_the_end or pointwise"),
             "reads and writes may run past the end of the device"),
    Mutation("bounds-grain-size", "src/vdisk_tool/image/vmdk/sparse.py",
             "if g < 1 or g & (g - 1) or g > vs.MAX_GRAIN_SECTORS:", "if g < 1 or g & (g - 1):",
             ("tests/test_vmdk_hostile.py", "tests/test_findings_coverage.py"),
             "a huge grain size from the header sizes an allocation"),
    # -- CRC -----------------------------------------------------------------------------
    Mutation("crc-firmware-section", "src/vdisk_tool/ipva/firmware_check.py",
             "        elif found == expected:\n", "        elif found is not None:\n",
             ("tests/test_firmware.py", "tests/test_boot_verify.py"),
             "a section whose CRC does not match is reported OK"),
    Mutation("crc-dump-payload", "src/vdisk_tool/ipva/dump.py",
             "    if crc != r.payload_crc32c:\n", "    if crc != r.payload_crc32c and False:\n",
             ("tests/test_dump_store.py", "tests/test_dump_cli.py"),
             "a torn crash-dump record (payload CRC-32C wrong) is listed as good"),
    # -- torn records --------------------------------------------------------------------
    Mutation("torn-dump-header", "src/vdisk_tool/ipva/dump.py",
             "    if not r.crc_ok:\n", "    if False:\n",
             ("tests/test_dump_store.py", "tests/test_dump_cli.py"),
             "a record whose header CRC is wrong is trusted"),
    # -- lock ----------------------------------------------------------------------------
    Mutation("lock-dir", "src/vdisk_tool/image/safe.py",
             'if os.path.lexists(path + ".lck"):', 'if os.path.isfile(path + ".lck"):',
             ("tests/test_locks.py",),
             "VMware's <disk>.lck folder (a directory, not a file) is not seen as a lock"),
    # -- dry-run -------------------------------------------------------------------------
    Mutation("dry-run-commits", "src/vdisk_tool/image/edit.py",
             "UndoJournal(path, files, dry_run=dry_run)", "UndoJournal(path, files, dry_run=False)",
             ("tests/test_fat_cli.py", "tests/test_boot_restore.py"),
             "--dry-run writes the change into the image"),
    # -- path escape ---------------------------------------------------------------------
    Mutation("path-escape-dotdot-name", "src/vdisk_tool/fs/transfer.py",
             '    if clean.strip(" .") == "":\n', '    if clean == "":\n',
             ("tests/test_security.py",),
             "a FAT entry named '..' is not renamed on extraction"),
    Mutation("path-escape-prefix", "src/vdisk_tool/image/disk.py",
             "if not os.path.realpath(full).startswith(real_base + os.sep):",
             "if not os.path.realpath(full).startswith(real_base):",
             ("tests/test_security.py",),
             "a sibling folder sharing the image folder's name as a prefix counts as inside"),
    # -- FAT copies ----------------------------------------------------------------------
    Mutation("fat-second-copy", "src/vdisk_tool/fs/table.py",
             "            for k in copies:\n", "            for k in copies[:1]:\n",
             ("tests/test_fat_interop.py", "tests/test_fat_cli.py"),
             "only the first FAT is written; fsck.fat finds the copies differ"),
    # -- long names ----------------------------------------------------------------------
    Mutation("long-name-checksum", "src/vdisk_tool/formats/fat.py",
             "        total = (((total & 1) << 7) | (total >> 1)) + b\n",
             "        total = (total >> 1) + b\n",
             ("tests/test_fat_schema.py", "tests/test_fat_interop.py"),
             "the long-name checksum forgets the rotate: other tools drop the long names"),
    Mutation("long-name-order", "src/vdisk_tool/formats/fat.py",
             "    csum = lfn_checksum(short_name)\n",
             "    csum = lfn_checksum(short_name[::-1])\n",
             ("tests/test_fat_schema.py", "tests/test_fat_interop.py"),
             "long-name entries carry the checksum of another name"),
]


def tracked_copy(dest: Path) -> None:
    """Copy the files git tracks (as they are in the working tree) into `dest`."""
    names = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True,
                           check=True).stdout.decode().split("\0")
    for name in filter(None, names):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)


def stale(m: Mutation, root: Path) -> str | None:
    path = root / m.file
    if not path.exists():
        return f"{m.file} does not exist"
    n = path.read_text().count(m.old)
    return None if n == 1 else f"its text occurs {n} times in {m.file}"


def run_tests(tree: Path, tests: tuple[str, ...]) -> tuple[int, float, str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        filter(None, [str(tree / "src"), os.environ.get("PYTHONPATH")])))
    env.pop("PYTEST_ADDOPTS", None)
    t0 = time.monotonic()
    try:
        r = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
                            *tests], cwd=tree, env=env, capture_output=True, text=True,
                           timeout=TIMEOUT_S)
        code, out = r.returncode, r.stdout + r.stderr
    except subprocess.TimeoutExpired:
        code, out = -1, "timed out"
    return code, time.monotonic() - t0, out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", action="append", default=[], help="run only this mutation")
    ap.add_argument("--list", action="store_true", help="list the mutations and exit")
    ap.add_argument("--check", action="store_true", help="only check that every mutation applies")
    ap.add_argument("--no-baseline", action="store_true", help="skip the unmutated run")
    args = ap.parse_args()
    chosen = [m for m in MUTATIONS if not args.only or m.name in args.only]
    if args.list:
        for m in chosen:
            print(f"{m.name:28} {m.file:40} {' '.join(m.tests)}\n{'':28} {m.why}")
        return 0
    problems = [(m.name, s) for m in chosen if (s := stale(m, ROOT))]
    for name, s in problems:
        print(f"STALE    {name}: {s}")
    if args.check:
        print(f"{len(chosen) - len(problems)}/{len(chosen)} mutations apply")
        return 1 if problems else 0
    with tempfile.TemporaryDirectory(prefix="vdisk-mutate-") as tmp:
        tree = Path(tmp)
        tracked_copy(tree)
        probe = subprocess.run([sys.executable, "-c", "import vdisk_tool; print(vdisk_tool.__file__)"],
                               env=dict(os.environ, PYTHONPATH=str(tree / "src")),
                               capture_output=True, text=True)
        assert probe.stdout.startswith(str(tree)), f"the scratch tree is not imported: {probe.stdout}"
        if not args.no_baseline:
            tests = tuple(dict.fromkeys(t for m in chosen for t in m.tests if t.endswith(".py")))
            code, secs, out = run_tests(tree, tests)
            print(f"baseline: {len(tests)} test files, exit {code}, {secs:.0f} s")
            if code != 0:
                print(out[-3000:])
                return 2
        caught, survived = 0, []
        for m in chosen:
            if stale(m, tree):
                survived.append(m.name + " (stale)")
                continue
            path = tree / m.file
            original = path.read_text()
            try:
                path.write_text(original.replace(m.old, m.new, 1))
                code, secs, out = run_tests(tree, m.tests)
            finally:
                path.write_text(original)
            if code == 1:
                caught += 1
                verdict = "caught"
            else:
                survived.append(m.name)
                verdict = "SURVIVED" if code == 0 else f"ERROR (exit {code})"
            first = next((ln for ln in out.splitlines() if ln.startswith("FAILED")), "")
            print(f"{verdict:9} {m.name:28} {secs:6.0f} s  {first[:110]}", flush=True)
        print(f"caught {caught}/{len(chosen)}")
        if survived:
            print("survived: " + ", ".join(survived))
        return 0 if not survived else 1


if __name__ == "__main__":
    sys.exit(main())
