"""README.md stays true: its set-up commands and its example are what the code does."""

from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```$", README, flags=re.S | re.M)


def test_readme_says_what_carmulti_is_then_gives_the_two_setup_commands() -> None:
    first = README.split("```sh\n", 1)
    title, _, intro = first[0].strip().partition("\n")
    assert title == "# carmulti", "README must start with its title"
    intro = " ".join(intro.split())
    assert intro, "README must say what carmulti is before the set-up block"
    assert intro.startswith("carmulti ") and "agents" in intro
    assert 1 <= len(re.findall(r"[.!?](?:\s|$)", intro)) <= 2, f"one or two sentences before the set-up block: {intro!r}"
    assert "```" not in first[0]  # the set-up block is the first code block, so .ci/run finds its test command
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


PROCESS_INFRA = "SharedInfra(executor=carmulti.ProcessExecutor(workers=2))"


@pytest.mark.parametrize("executor", ["local", "process"])
def test_readme_example_runs_as_a_script_on_both_executors(tmp_path: Path, executor: str) -> None:
    """Example 1 as written, and switched to the process executor as its comment says (a spawned
    worker re-imports the script, so this needs the ``if __name__ == "__main__":`` guard)."""
    code = _blocks("python")[0]
    assert code.count("SharedInfra()") == 1 and PROCESS_INFRA in code  # the comment names the switch
    if executor == "process":
        code = code.replace("SharedInfra()", PROCESS_INFRA, 1)
    script = tmp_path / "example.py"
    script.write_text(code)
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=90, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.startswith("## alice\nalice: NAME A PRIME NUMBER\n\n## bob\nbob: NAME A PRIME NUMBER\n")
    assert "3 reducer: " in out
    assert "alice: NAME A PRIME NUMBER" in out.splitlines()[-1]


def test_readme_durable_runs_example_crashes_then_runs_only_the_unfinished_agents(tmp_path: Path) -> None:
    """The "Durable runs" example as written: killed mid-run, rerun, rerun again; the section's text
    says what each run prints."""
    code = next(b for b in _blocks("python") if "journal=" in b)
    script = tmp_path / "job.py"
    script.write_text(code)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=90,
                              cwd=tmp_path)

    crashed = run("--crash")
    assert crashed.returncode == 1, crashed.stderr
    assert crashed.stdout.splitlines() == [f"running mapper_{i}" for i in range(5)]
    resumed = run()
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.splitlines() == ["running mapper_4", "running mapper_5", "running reducer",
                                           "replayed 4; - MAPPER_5: DOC 5"]
    again = run()
    assert again.returncode == 0 and again.stdout.splitlines() == ["replayed 7; - MAPPER_5: DOC 5"], again.stderr
    section = README.split("## Durable runs\n", 1)[1].split("\n## ", 1)[0]
    text = " ".join(section.split("```")[-1].split())
    assert "`python job.py --crash` prints `running mapper_0` to `running mapper_4` and dies" in text
    assert ("then prints only `running mapper_4`, `running mapper_5`, `running reducer` and "
            "`replayed 4; - MAPPER_5: DOC 5`") in text
    assert "`replayed 7; - MAPPER_5: DOC 5`" in text


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_readme_openai_example_prints_the_error_of_a_failed_call() -> None:
    code = next(b for b in _blocks("python") if "OpenAIChatRunner" in b)
    base_url = f"http://127.0.0.1:{_free_port()}/v1"  # nothing listens: every attempt is refused
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=90, cwd=ROOT,
                          env={**os.environ, "OPENAI_BASE_URL": base_url, "OPENAI_API_KEY": "sk-test"})
    assert proc.returncode == 0, proc.stderr
    assert f"model 'gpt-4o-mini' at {base_url}: connection failed" in proc.stdout


def test_readme_command_for_the_embedded_models_gguf_path_prints_it() -> None:
    m = re.search(r"`(python -c \"[^\"`]*LlamaCppRunner[^\"`]*\")`", README)
    assert m, "README gives a one-line python command that prints the embedded model's GGUF path"
    argv = shlex.split(m.group(1))
    assert argv[0] == "python"
    proc = subprocess.run([sys.executable, *argv[1:]], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    path = proc.stdout.strip()
    assert path.endswith(".gguf") and os.path.isfile(path), proc.stdout
    from carmulti.runners.llama import default_model_path

    assert path == default_model_path()
    # the server command uses that same command for --model
    serve = next(ln for ln in README.splitlines() if ln.startswith("python -m llama_cpp.server"))
    assert f'--model "$({m.group(1).replace(chr(34), chr(39))})"' in serve or m.group(1) in serve


def test_package_docs_point_at_files_and_sections_that_exist() -> None:
    sources = [p for d in ("carmulti", "carcore", "bench") for p in (ROOT / d).rglob("*")
               if p.suffix in (".py", ".pyi", ".pyx", ".pxd")]
    for src in sources:
        text = src.read_text()
        for name in re.findall(r"\b([\w./-]+\.md)\b", text):
            assert (ROOT / name).is_file(), f"{src.relative_to(ROOT)} refers to {name}, which is not in the project"
        for section in re.findall(r'README(?:\.md)?[^\n]{0,20}?section ["`]+([^"`]+)["`]+', text):
            assert f"\n## {section}\n" in README, f"{src.relative_to(ROOT)} refers to README section {section!r}"
