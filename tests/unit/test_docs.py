"""The documentation stays true: README's and docs/'s commands parse with the real CLI, README's suite YAML loads,
the README's and the package docstring's Python examples run as written, and no document, model card or suite
tells development history."""

from __future__ import annotations

import re
import shlex
import textwrap
from pathlib import Path

import pytest

import diffloc
from diffloc.cli.main import build_parser
from diffloc.eval.suite import load_suite

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
MODEL_CARD = ROOT / "src" / "diffloc" / "assets" / "shapesworld" / "README.md"
SUITES = sorted((ROOT / "src" / "diffloc" / "assets" / "suites").glob("*.yaml"))

#: Command lines that are deliberately incomplete: "..." stands for options shown elsewhere, and "$VAR" for a
#: value the shell fills in (job arrays).
PLACEHOLDERS = ("...", "$")

#: Development history: which session or which numbered training run something happened in.
HISTORY = re.compile(r"\bsessions? \d|\bruns? \d\d|\bruns \d|\brun-\d\d", re.IGNORECASE)


def fenced_blocks(path: Path, language: str) -> list[str]:
    """The bodies of the ```language fenced blocks of a Markdown file."""
    return re.findall(rf"^```{language}\n(.*?)^```", path.read_text(encoding="utf-8"), re.MULTILINE | re.DOTALL)


def diffloc_commands(path: Path) -> list[str]:
    """Every ``diffloc …`` command line of a Markdown file's bash blocks, continuation lines joined."""
    lines = []
    for block in fenced_blocks(path, "bash"):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            if line.strip().startswith("diffloc "):
                lines.append(line.strip())
    return lines


def test_readme_shows_commands_to_check():
    commands = diffloc_commands(README)
    assert len(commands) >= 15
    for step in ("generate", "trace", "edit", "demo", "eval", "reproduce", "sites"):
        assert any(c.split()[1] == step for c in commands), step
    assert any("--edit" in c for c in commands if c.split()[1] == "generate")


@pytest.mark.parametrize("path", [README, *DOCS], ids=lambda p: p.name)
def test_documented_commands_parse_with_the_real_cli(path):
    parser = build_parser()
    for line in diffloc_commands(path):
        if any(mark in line for mark in PLACEHOLDERS):
            continue
        argv = shlex.split(line, comments=True)[1:]
        try:
            args = parser.parse_args(argv)
        except SystemExit as exc:  # argparse reports the error on stderr and exits
            pytest.fail(f"{path.name}: {line!r} does not parse (exit {exc.code})")
        assert getattr(args, "func", None) is not None, line


def test_a_wrong_option_would_be_caught():
    with pytest.raises(SystemExit):
        build_parser().parse_args(shlex.split("generate --model shapesworld --promt x"))


def test_readme_suite_yaml_loads(tmp_path):
    (block,) = fenced_blocks(README, "yaml")
    (tmp_path / "suite.yaml").write_text(block)
    suite = load_suite(tmp_path / "suite.yaml")
    assert [case.kind for case in suite.cases] == ["style"]


@pytest.mark.parametrize("path", [README, *DOCS, MODEL_CARD, *SUITES], ids=lambda p: p.name)
def test_no_development_history(path):
    text = path.read_text(encoding="utf-8")
    hits = [m.group(0) for m in HISTORY.finditer(text)]
    assert not hits, f"{path.relative_to(ROOT)} tells development history: {hits[:5]}"


def test_no_history_in_code_comments_and_docstrings():
    sources = [p for d in ("src", "bench", "scripts", "tests") for p in (ROOT / d).rglob("*.py")]
    assert sources
    offenders = [str(p.relative_to(ROOT)) for p in sources if re.search(r"\bsessions? \d", p.read_text("utf-8"), re.I)]
    assert not offenders


def _run_example(code: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    monkeypatch.chdir(tmp_path)  # anything an example writes lands here
    namespace: dict = {}
    exec(compile(code, "<example>", "exec"), namespace)
    return namespace


def test_package_docstring_example_runs(tmp_path, monkeypatch):
    code = textwrap.dedent(diffloc.__doc__.split("::\n", 1)[1])
    done = _run_example(code, tmp_path, monkeypatch)
    assert done["images"].shape[0] == 3  # clean, corrupted, restored
    assert done["edited"].shape[0] == 1
    assert done["trace"].labels


def test_readme_python_example_runs_and_the_edit_removes_the_style(tmp_path, monkeypatch):
    (code,) = fenced_blocks(README, "python")
    done = _run_example(code, tmp_path, monkeypatch)
    effects = dict(zip(done["trace"].labels, done["trace"].indirect_effect.tolist(), strict=True))
    assert max(effects.values()) > 0.8  # some site brings the style back
    scores = done["scorer"].score(done["images"], [done["style"]] * 4)
    assert float(scores.max()) < 0.5  # and the edit removed it from every image
