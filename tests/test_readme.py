"""README.md stays true: its set-up commands and its example are what the code does."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```$", README, flags=re.S | re.M)


def test_readme_starts_with_the_two_setup_commands() -> None:
    first = README.split("```sh\n", 1)
    assert first[0].strip() == "# carmulti", "README must start with the set-up block right after the title"
    cmds = [ln for ln in _blocks("sh")[0].splitlines() if ln.strip()]
    assert len(cmds) == 2
    assert cmds[0].endswith("python -m bench")
    assert cmds[1].endswith("python -m pytest")
    for c in cmds:
        assert "pip install -e" in c  # editable: the compiled core lands next to the sources


def test_ci_runs_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    assert "python -m pytest" in ci and "README.md" in ci
    assert '"$rc" -eq 5' in ci  # pytest's "no tests collected" is a failure


def test_readme_example_runs_and_prints_what_it_says() -> None:
    code = _blocks("python")[0]
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.startswith("## alice\nalice: NAME A PRIME NUMBER\n\n## bob\nbob: NAME A PRIME NUMBER\n")
    assert "3 reducer: " in out
    assert "alice: NAME A PRIME NUMBER" in out.splitlines()[-1]
