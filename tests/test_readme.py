"""The README's promises: its Python example runs, and .ci/run runs its test command."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def _code_block(after_heading: str, language: str) -> str:
    text = README.read_text()
    section = text[text.index(after_heading) :]
    return re.search(rf"```{language}\n(.*?)```", section, re.S).group(1)


def test_the_python_api_example_runs(capsys):
    names = {}
    exec(compile(_code_block("## Python API", "python"), "README.md", "exec"), names)
    out = capsys.readouterr().out
    assert "test accuracy" in out and Path("runs/api-example/test.json").is_file()
    rows = names["run"].metrics
    assert [row["epoch"] for row in rows] == [1, 2] and all(type(row["epoch"]) is int for row in rows)


def test_ci_runs_the_readme_test_command():
    text = README.read_text()
    command = next(line.strip() for line in text.splitlines() if "pytest" in line and line.startswith("    python3"))
    ci = (README.parent / ".ci" / "run").read_text()
    assert command in ci.splitlines()
