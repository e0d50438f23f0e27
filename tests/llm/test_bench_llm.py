"""Smoke test of ``python -m bench llm`` on the real embedded model (small N)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.llm
@pytest.mark.timeout(180)
def test_bench_llm_small_run(gguf_path: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "bench", "llm", "--modules", "3", "--max-tokens", "16", "--executor", "local"],
                          capture_output=True, text=True, timeout=170, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "== executor local: 3 mappers + 1 reducer" in out
    assert "tokens/s" in out and "reducer:" in out
    for mod in ("json", "os", "re"):
        assert f"  {mod} " in out
