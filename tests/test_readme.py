"""The README's shell examples run on a copy of the samples and print what the README shows
(tests/readme_examples.py: marking syntax, normalisation, --update)."""
from __future__ import annotations

import re

import pytest
from readme_examples import README, matches, parse, run_example, workdir

TEXT = README.read_text()
EXAMPLES = parse(TEXT)


def test_every_shell_example_is_marked() -> None:
    lines = TEXT.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("```") and i + 1 < len(lines) and lines[i + 1].startswith("$ vdisk"):
            before = lines[i - 1].strip()
            assert before.startswith(("<!-- example", "<!-- not-run:")), \
                f"README line {i + 2}: mark the example (<!-- example --> or <!-- not-run: why -->)"
    assert sum(e.kind == "shell" for e in EXAMPLES) >= 5
    assert any(e.kind == "python" and e.output for e in EXAMPLES)


@pytest.mark.parametrize("ex", EXAMPLES, ids=lambda e: f"line{e.steps[0].line}")
def test_example_prints_what_the_readme_shows(tmp_path, ex) -> None:
    work = workdir(tmp_path)
    for step, got in run_example(ex, work):
        expected = step.expected
        if ex.kind == "python":
            assert ex.output is not None
            a, b = ex.output
            expected = TEXT.splitlines()[a:b]
        assert matches(expected, got), (
            f"README line {step.line}: $ {step.command.splitlines()[0]}\n--- README\n"
            + "\n".join(expected) + "\n--- now\n" + "\n".join(got)
            + "\n(python tests/readme_examples.py --update rewrites the README)")


def test_the_matcher_can_fail() -> None:
    assert matches(["a", "...", "d"], ["a", "b", "c", "d"])
    assert not matches(["a", "...", "d"], ["a", "b", "c"])
    assert not matches(["a"], ["a", "b"])
    assert re.search("example", TEXT)
