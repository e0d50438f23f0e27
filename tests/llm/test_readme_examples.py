"""The README's two runner examples run as printed (the real model; the OpenAI one through a real server)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BLOCKS = re.findall(r"^```python\n(.*?)^```$", (ROOT / "README.md").read_text(), flags=re.S | re.M)

pytestmark = pytest.mark.llm


def _run(code: str, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env={**os.environ, **(env or {})})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.timeout(320)
def test_llama_example_votes_twelve(gguf_path: str) -> None:
    code = next(b for b in BLOCKS if "LlamaCppRunner" in b)
    out = _run(code)
    winner_line = out.strip().splitlines()[-1]
    assert "12" in winner_line
    assert " 1.0 " in winner_line or " 0.6" in winner_line  # agreement ratio printed after the winner


@pytest.mark.timeout(320)
def test_openai_example_runs_against_a_real_server(llama_server) -> None:
    base_url, alias = llama_server
    code = next(b for b in BLOCKS if "OpenAIChatRunner" in b)
    assert 'model="gpt-4o-mini"' in code
    out = _run(code.replace('model="gpt-4o-mini"', f'model="{alias}"'),
               env={"OPENAI_BASE_URL": base_url, "OPENAI_API_KEY": "sk-local"})
    line = out.strip().splitlines()[-1]
    # "<answer> <tool_calls> TokenAccounting(...)": the agent called the add tool at least once
    m = re.search(r" (\d+) TokenAccounting\(input_tokens=(\d+), output_tokens=(\d+)", line)
    assert m, line
    assert int(m.group(1)) >= 1 and int(m.group(2)) > 0 and int(m.group(3)) > 0
