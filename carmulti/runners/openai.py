"""An :class:`~carmulti.AgentRunner` for any OpenAI-compatible chat-completions endpoint.

Built on the official ``openai`` SDK (``AsyncOpenAI``): OpenAI itself, vLLM,
llama.cpp's ``llama_cpp.server``, Ollama, LM Studio, ... Needs the ``llm`` extra
(``pip install 'carmulti[llm]'``).

This module owns the SDK clients (one per process and event loop), the HTTP
call and its error texts, and the conversation (:class:`_OpenAITurns`: native
function tools, ``tool`` messages, ``tool_choice`` per turn); the turn loop is
:func:`carmulti.runners._loop.run_turns`.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Sequence, TypeGuard

from .._validate import int_at_least, seconds
from ..runtime import Runtime, ToolExecutor
from ..types import AgentOutput, AgentSpec
from ._common import LLMRunnerError, RunnerSettings, agent_tools, check_price, require
from ._loop import Reply, ToolCall, run_turns

if TYPE_CHECKING:  # pragma: no cover
    import openai
    from openai import AsyncOpenAI
    from openai.types.chat import (ChatCompletion, ChatCompletionMessageParam, ChatCompletionMessageToolCall,
                                   ChatCompletionToolChoiceOptionParam, ChatCompletionToolParam)

__all__ = ["OpenAIChatRunner"]

_METADATA_OVERRIDES = ("model", "temperature", "max_tokens", "tool_choice")


class OpenAIChatRunner(RunnerSettings):
    """Drives each agent through an OpenAI-compatible chat-completions API with tool calling.

    Per agent: ``spec.system_prompt`` (system message) and the task (user message)
    go to the model; the tools in ``spec.tools`` are offered as function tools
    (parameter schemas from the runner's ``tools`` or
    ``Runtime.register_tool(name, schema)``; an open schema is offered as
    ``{"type": "object"}``). A tool of ``spec.tools`` that the runner cannot
    offer -- no schema in ``tools``, none on the runtime, and no executor for
    it -- fails the agent before any model call (a :class:`~carmulti.ToolError`
    naming it and the tools that exist). The tool calls of one model turn become
    one :class:`~carmulti.ActionProposal` of ``tool_call`` actions run with
    ``runtime.execute`` (so policies, validation, retries and the event log
    apply); each result, or its error text, goes back as a ``tool`` message.
    The loop ends at the first answer without tool calls, or after
    ``spec.max_turns`` model calls: the last allowed call is made with
    ``tool_choice="none"`` so the model has to answer.

    Before every model call after the first, the runner checks the shared budget
    (``runtime.budget``) including this agent's own spend so far; once a limit is
    crossed it stops and returns the text it has, or an error output
    ``budget exhausted before turn {k}``.

    The output carries ``turns`` (model calls), ``tool_calls`` (calls the model
    requested), ``tools_used`` (first-use order), ``duration_ms`` and
    ``tokens`` (summed ``usage`` of every call, priced with ``price_per_1k``).

    Per-agent overrides: ``spec.metadata`` keys ``model``, ``temperature``,
    ``max_tokens`` and ``tool_choice`` replace the constructor values.

    The runner keeps no per-agent state and is picklable (dill), so it runs on
    the process executor: without an explicit ``client`` it creates one
    ``AsyncOpenAI`` client per process and event loop, lazily. Call
    :meth:`aclose` (or use ``async with``) to close the clients of the current
    loop.

    Args:
        client: An ``openai.AsyncOpenAI`` to use (then ``base_url``, ``api_key``,
            ``request_timeout_s`` and ``max_retries`` are the client's business).
            Such a runner cannot be shipped to worker processes.
        model: Model name sent with every request (required).
        base_url: API base URL, e.g. ``"http://127.0.0.1:8000/v1"``; None = the
            SDK default (``OPENAI_BASE_URL`` or api.openai.com).
        api_key: API key; None = ``OPENAI_API_KEY`` (a local server accepts any
            non-empty key, e.g. ``"sk-local"``).
        price_per_1k: ``(input, output)`` price in USD per 1000 tokens, used to
            fill ``TokenAccounting.cost_usd``. Default ``(0.0, 0.0)``.
        temperature: Sampling temperature (default 0.0).
        max_tokens: Completion-token limit per model call.
        request_timeout_s: Per-request timeout in seconds (each attempt).
        max_retries: Retries of the SDK on connection errors, 408/409/429 and 5xx,
            with its exponential backoff (default 2).
        tool_choice: ``tool_choice`` of the first model call when tools are
            offered: ``"auto"`` (default), ``"required"`` or
            ``{"type": "function", "function": {"name": ...}}``; later calls use
            ``"auto"`` and the last allowed call ``"none"``.
        extra_body: Extra JSON fields merged into every request body (for
            server-specific options).
        tools: The runner's own tools, name -> JSON Schema of the parameters or
            None (open); see "Tools" in :mod:`carmulti.runners`.
        tool_executor: A :class:`~carmulti.ToolExecutor` that runs them; see
            "Tools" in :mod:`carmulti.runners`.

    Raises (from ``run``; the agent fails with ``str(exc)`` as its error):
        ToolError: ``spec.tools`` names a tool the runner cannot offer (before any model call).
        LLMRunnerError: HTTP error (text names the model, base URL and HTTP status),
            timeout or connection failure after the SDK's retries. When it happens
            after the first turn, the runner instead returns an output with that
            ``error`` and the tokens already spent, so the budget still meters them.
    """

    def __init__(self, client: AsyncOpenAI | None = None, *, model: str, base_url: str | None = None,
                 api_key: str | None = None, price_per_1k: tuple[float, float] = (0.0, 0.0), temperature: float = 0.0,
                 max_tokens: int = 512, request_timeout_s: float = 60.0, max_retries: int = 2,
                 tool_choice: ChatCompletionToolChoiceOptionParam = "auto", extra_body: Mapping[str, Any] | None = None,
                 tools: Mapping[str, Mapping[str, Any] | None] | None = None,
                 tool_executor: ToolExecutor | None = None) -> None:
        if not isinstance(model, str) or not model:
            raise ValueError(f"OpenAIChatRunner: model must be a non-empty str, got {model!r}")
        if client is None:
            require("openai", "OpenAIChatRunner")  # fail at construction, not in the first agent
        seconds(request_timeout_s, "OpenAIChatRunner: request_timeout_s", allow_none=True)
        int_at_least(max_tokens, 1, "OpenAIChatRunner: max_tokens")
        int_at_least(max_retries, 0, "OpenAIChatRunner: max_retries")
        self.model = model
        self.base_url = base_url
        self.api_key = api_key
        price = check_price(price_per_1k)
        temperature = float(temperature)
        self.request_timeout_s = request_timeout_s
        self.max_retries = max_retries
        self.tool_choice = tool_choice
        self.extra_body = dict(extra_body) if extra_body else None
        self._init_settings("OpenAIChatRunner", max_tokens, temperature, price, tools, tool_executor)
        self._client = client
        self._clients: dict[tuple[int, int], tuple[asyncio.AbstractEventLoop, AsyncOpenAI]] = {}  # (pid, id(loop)) -> (loop, client)

    # -- pickling (process executor) ------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        if self._client is not None:
            raise TypeError("OpenAIChatRunner(client=...) cannot be shipped to worker processes: "
                            "pass base_url=/api_key= instead of a client so each worker creates its own")
        state = self.__dict__.copy()
        state["_clients"] = {}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def __repr__(self) -> str:
        return f"OpenAIChatRunner(model={self.model!r}, base_url={self.endpoint!r})"

    @property
    def endpoint(self) -> str:
        """The base URL requests go to (for messages)."""
        if self._client is not None:
            return str(getattr(self._client, "base_url", "") or "<client>")
        return self.base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1"

    # -- clients ----------------------------------------------------------------
    def _get_client(self) -> AsyncOpenAI:
        if self._client is not None:
            return self._client
        loop = asyncio.get_running_loop()
        key = (os.getpid(), id(loop))
        hit = self._clients.get(key)
        if hit is not None and hit[0] is loop:
            return hit[1]
        for k, (lp, _) in list(self._clients.items()):  # forget clients of closed loops / other processes
            if k[0] != key[0] or lp.is_closed():
                del self._clients[k]
        require("openai", "OpenAIChatRunner")  # the install command when it is missing
        from openai import AsyncOpenAI

        client = AsyncOpenAI(base_url=self.base_url, api_key=self.api_key or os.environ.get("OPENAI_API_KEY") or "sk-none",
                             timeout=self.request_timeout_s, max_retries=self.max_retries)
        self._clients[key] = (loop, client)
        return client

    async def aclose(self) -> None:
        """Close the HTTP clients this runner created on the running loop (not a client passed in)."""
        loop = asyncio.get_running_loop()
        pid = os.getpid()
        for k, (lp, client) in list(self._clients.items()):
            if k[0] == pid and lp is loop:
                del self._clients[k]
                await client.close()

    async def __aenter__(self) -> "OpenAIChatRunner":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    # -- one model call ---------------------------------------------------------
    async def _complete(self, client: AsyncOpenAI, model: str, messages: list[ChatCompletionMessageParam],
                        tools: list[ChatCompletionToolParam] | None, tool_choice: ChatCompletionToolChoiceOptionParam | None,
                        temperature: float, max_tokens: int) -> ChatCompletion:
        require("openai", "OpenAIChatRunner")
        import openai

        kw: dict[str, Any] = {"model": model, "messages": messages, "temperature": temperature, "max_tokens": max_tokens}
        if tools:
            kw["tools"] = tools
            kw["tool_choice"] = tool_choice
        if self.extra_body:
            kw["extra_body"] = self.extra_body
        where = f"model {model!r} at {self.endpoint}"
        try:
            response: ChatCompletion = await client.chat.completions.create(**kw)
        except openai.APIStatusError as exc:
            raise LLMRunnerError(f"{where}: HTTP {exc.status_code}: {_error_detail(exc)}", model=model,
                                 endpoint=self.endpoint, status=exc.status_code) from exc
        except openai.APITimeoutError as exc:
            raise LLMRunnerError(f"{where}: request timed out after {self.request_timeout_s}s "
                                 f"(request_timeout_s, {self.max_retries} retries)", model=model, endpoint=self.endpoint) from exc
        except openai.APIConnectionError as exc:
            raise LLMRunnerError(f"{where}: connection failed: {exc}", model=model, endpoint=self.endpoint) from exc
        except openai.OpenAIError as exc:
            raise LLMRunnerError(f"{where}: {type(exc).__name__}: {exc}", model=model, endpoint=self.endpoint) from exc
        return response

    # -- one agent ----------------------------------------------------------------
    async def run(self, spec: AgentSpec, task: str, runtime: Runtime | None, mailbox: Any) -> AgentOutput:
        """Run one agent to a final answer (see the class docstring)."""
        t0 = time.perf_counter()
        md = spec.metadata or {}
        model = str(md.get("model", self.model))
        temperature = float(md.get("temperature", self.temperature))
        max_tokens = int(md.get("max_tokens", self.max_tokens))
        first_choice = md.get("tool_choice", self.tool_choice)
        schemas = agent_tools(spec, runtime, self.tools, self.tool_executor, "OpenAIChatRunner")
        client = self._get_client()
        tools: list[ChatCompletionToolParam] | None = [
            {"type": "function", "function": {"name": name, "description": str(schema.get("description", f"Tool {name}")),
                                              "parameters": schema}} for name, schema in schemas.items()] or None
        messages: list[ChatCompletionMessageParam] = []
        if spec.system_prompt:
            messages.append({"role": "system", "content": spec.system_prompt})
        messages.append({"role": "user", "content": task})
        chat = _OpenAITurns(self, client, model, messages, tools, first_choice, temperature, max_tokens)
        return await run_turns(chat, spec, runtime, self.price_per_1k, t0)


@dataclass
class _OpenAITurns:
    """One agent's conversation through the SDK (a :class:`~carmulti.runners._loop.TurnBackend`).

    Tools are offered as function tools; ``tool_choice`` is ``first_choice`` on
    the first call, ``"auto"`` later and ``"none"`` on the last allowed one.
    The model's tool calls are recorded in an assistant message (ids made
    unique) and each result goes back as a ``tool`` message.
    """

    runner: OpenAIChatRunner
    client: AsyncOpenAI
    model: str
    messages: list[ChatCompletionMessageParam]
    tools: list[ChatCompletionToolParam] | None
    first_choice: ChatCompletionToolChoiceOptionParam
    temperature: float
    max_tokens: int
    #: Content next to native tool calls on the last turn is not an answer.
    answer_beside_calls_is_final = False

    async def complete(self, turn: int, last: bool) -> ChatCompletion:
        choice: ChatCompletionToolChoiceOptionParam | None
        if not self.tools:
            choice = None
        elif last:
            choice = "none"
        else:
            choice = self.first_choice if turn == 1 else "auto"
        return await self.runner._complete(self.client, self.model, self.messages, self.tools, choice,
                                           self.temperature, self.max_tokens)

    def usage(self, response: ChatCompletion) -> tuple[int, int]:
        usage = getattr(response, "usage", None)
        if usage is None:
            return 0, 0
        return int(getattr(usage, "prompt_tokens", 0) or 0), int(getattr(usage, "completion_tokens", 0) or 0)

    def reply(self, response: ChatCompletion, turn: int) -> Reply:
        if not getattr(response, "choices", None):
            raise LLMRunnerError(f"model {self.model!r} at {self.runner.endpoint}: response without choices",
                                 model=self.model, endpoint=self.runner.endpoint)
        msg = response.choices[0].message
        text = msg.content or ""
        native = [c for c in (msg.tool_calls or []) if _is_function_call(c)]
        if not native:
            return Reply(text)
        ids = _call_ids(native, turn)
        self.messages.append({"role": "assistant", "content": text,  # "" not None: llama.cpp's server rejects null
                              "tool_calls": [{"id": cid, "type": "function",
                                              "function": {"name": c.function.name, "arguments": c.function.arguments or "{}"}}
                                             for cid, c in zip(ids, native)]})
        return Reply(text, [ToolCall(cid, c.function.name, *_arguments(c.function.arguments)) for cid, c in zip(ids, native)],
                     text)

    def feed_back(self, calls: Sequence[ToolCall], results: Sequence[str]) -> None:
        self.messages.extend({"role": "tool", "tool_call_id": c.id, "content": text} for c, text in zip(calls, results))


def _is_function_call(call: object) -> TypeGuard[ChatCompletionMessageToolCall]:
    """A function tool call (SDKs with custom tools also return calls without ``function``)."""
    return getattr(call, "function", None) is not None


def _arguments(raw: str | None) -> tuple[dict[str, object] | None, str | None]:
    """A function call's arguments parsed as a JSON object, or (None, why not)."""
    try:
        args = json.loads(raw or "{}")
    except ValueError as exc:
        return None, f"arguments are not valid JSON: {exc}"
    if not isinstance(args, dict):
        return None, f"arguments must be a JSON object, got {type(args).__name__}"
    return args, None


def _call_ids(calls: Sequence[ChatCompletionMessageToolCall], turn: int) -> list[str]:
    """Tool-call ids, made unique (they become action ids of one proposal)."""
    ids: list[str] = []
    for i, c in enumerate(calls):
        cid = getattr(c, "id", None) or f"call_{turn}_{i}"
        if cid in ids:
            cid = f"{cid}_{i}"
        ids.append(cid)
    return ids


def _error_detail(exc: openai.APIStatusError) -> str:
    """A short reason from an SDK ``APIStatusError`` (server's error message when there is one)."""
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])[:500]
        if isinstance(err, str):
            return err[:500]
    msg = getattr(exc, "message", None) or str(exc)
    return str(msg)[:500]
