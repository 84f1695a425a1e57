"""Run the README's marked shell examples and compare their output.

A marked example is a fenced block right after a line `<!-- example -->` (optionally
`<!-- example setup: CMD; CMD -->`, shell commands run first and not shown). In the block,
a line `$ COMMAND` is run by the shell and the lines up to the next `$ ` line are its
expected output (stdout and stderr together); a line `...` there stands for any lines.
A block marked `<!-- example python -->` is a Python script; the block after it marked
`<!-- example output -->` is what it prints.

Every example starts from a fresh copy of sample_images/ (in the folder the commands run
in, so `sample_images/ipva` means the same as in the repository), with SOURCE_DATE_EPOCH
set (fixed times, seeded random MACs and uuids) and the copy's path replaced by nothing.
A block that cannot run on the samples says why: `<!-- not-run: REASON -->`.

`python tests/readme_examples.py --update` rewrites the expected output in README.md with
what the commands print now (review the diff).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
EPOCH = "1700000000"
MARK = re.compile(r"^<!-- example(?: (python|output))?(?: setup: (.*?))? -->$")


@dataclass
class Step:
    command: str
    expected: list[str] = field(default_factory=list)
    line: int = 0                    # README line of the command


@dataclass
class Example:
    kind: str                        # "shell" or "python"
    setup: str | None
    steps: list[Step]
    start: int                       # first and last line of the block's body (0-based)
    end: int
    output: tuple[int, int] | None = None   # body of the python example's output block


def parse(text: str) -> list[Example]:
    lines = text.splitlines()
    out: list[Example] = []
    i = 0
    while i < len(lines):
        m = MARK.match(lines[i].strip())
        if not m or i + 1 >= len(lines) or not lines[i + 1].startswith("```"):
            i += 1
            continue
        kind, setup = m.group(1) or "shell", m.group(2)
        start = i + 2
        end = start
        while not lines[end].startswith("```"):
            end += 1
        if kind == "output" and out and out[-1].kind == "python":
            out[-1].output = (start, end)
        elif kind == "python":
            out.append(Example("python", setup, [Step("\n".join(lines[start:end]), [], i + 2)],
                               start, end))
        else:
            steps: list[Step] = []
            for n in range(start, end):
                if lines[n].startswith("$ "):
                    steps.append(Step(lines[n][2:], [], n + 1))
                elif steps:
                    steps[-1].expected.append(lines[n])
            out.append(Example("shell", setup, steps, start, end))
        i = end + 1
    return out


def workdir(base: Path) -> Path:
    """A fresh folder with a copy of sample_images/ to run the examples in."""
    work = base / "readme"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    shutil.copytree(ROOT / "sample_images", work / "sample_images")
    return work


def _env() -> dict[str, str]:
    bindir = os.path.dirname(sys.executable)
    return dict(os.environ, SOURCE_DATE_EPOCH=EPOCH, COLUMNS="80", MTOOLS_SKIP_CHECK="1",
                PATH=bindir + os.pathsep + os.environ.get("PATH", ""), VDISK_DEBUG="0")


def run_shell(command: str, work: Path) -> list[str]:
    # the whole line's stderr, also of `A || B`
    r = subprocess.run("{ " + command + "\n} 2>&1", shell=True, cwd=work, env=_env(), text=True,
                       stdout=subprocess.PIPE)
    return normalise(r.stdout, work)


def run_python(source: str, work: Path) -> list[str]:
    r = subprocess.run([sys.executable, "-c", source], cwd=work, env=_env(), text=True,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert r.returncode == 0, r.stdout
    return normalise(r.stdout, work)


def normalise(text: str, work: Path) -> list[str]:
    for p in {str(work), os.path.realpath(work)}:
        text = text.replace(p + os.sep, "").replace(p, ".")
    return text.rstrip("\n").splitlines() if text.strip() else []


def matches(expected: list[str], got: list[str]) -> bool:
    """Line by line; a line `...` (alone or indented) matches any number of lines."""
    if not expected:
        return not got
    if expected[0].strip() == "...":
        return any(matches(expected[1:], got[k:]) for k in range(len(got) + 1))
    return bool(got) and expected[0] == got[0] and matches(expected[1:], got[1:])


def run_example(ex: Example, work: Path) -> list[tuple[Step, list[str]]]:
    if ex.setup:
        subprocess.run(ex.setup, shell=True, cwd=work, env=_env(), check=True,
                       capture_output=True)
    if ex.kind == "python":
        return [(ex.steps[0], run_python(ex.steps[0].command, work))]
    return [(s, run_shell(s.command, work)) for s in ex.steps]


def update(readme: Path = README) -> int:
    """Rewrite each marked example's expected output with the actual one (keeping `...`
    where it still matches)."""
    import tempfile
    lines = readme.read_text().splitlines()
    examples = parse("\n".join(lines))
    with tempfile.TemporaryDirectory() as tmp:
        work = workdir(Path(tmp))
        for ex in reversed(examples):        # from the end: line numbers stay valid
            if ex.kind == "python":
                (step, got), = run_example(ex, work)
                if ex.output is not None:
                    a, b = ex.output
                    lines[a:b] = got
                continue
            body: list[str] = []
            for step, got in run_example(ex, work):
                body.append(f"$ {step.command}")
                body += step.expected if matches(step.expected, got) else got
            lines[ex.start:ex.end] = body
            work = workdir(Path(tmp))
    readme.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    if sys.argv[1:] != ["--update"]:
        sys.exit(__doc__)
    sys.exit(update())
