"""Helpers shared by the LLM runners: optional imports, the settings both take, tool schemas, budget checks, accounting."""

from __future__ import annotations

import importlib
import json
from typing import Any, Mapping

from .._validate import number_at_least
from ..actions import ActionResult
from ..errors import MultiError, ToolError
from ..runtime import ToolExecutor
from ..types import AgentSpec, TokenAccounting

__all__ = [
    "INSTALL_HINT",
    "LLMRunnerError",
    "RunnerSettings",
    "agent_tools",
    "available_tools",
    "budget_exhausted",
    "cost_usd",
    "offered_tools",
    "require",
    "tool_result_text",
]

#: Appended to every ImportError for a missing optional dependency.
INSTALL_HINT = (
    "install the LLM extra: CMAKE_ARGS=\"-DGGML_NATIVE=OFF\" pip install 'carmulti[llm]' "
    "(llama-cpp-python builds from source, about 6 minutes on 2 cores; "
    "CMAKE_ARGS=\"-DGGML_NATIVE=OFF\" builds a portable CPU library: the default native build "
    "can crash with a segfault on the first decode on some CPUs)"
)


def require(module: str, feature: str) -> Any:
    """Import an optional dependency or raise an ImportError that says how to install it.

    Args:
        module: Module to import (``"openai"``, ``"llama_cpp"``).
        feature: What needs it, for the message (``"OpenAIChatRunner"``).

    Raises:
        ImportError: the module is missing; the text names it and the install command.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(f"{feature} needs the Python package '{module}', which is not installed ({exc}); "
                          f"{INSTALL_HINT}") from exc


class LLMRunnerError(MultiError):
    """A model call failed (HTTP error, timeout, connection, bad response).

    ``str(exc)`` names the model, the endpoint and, for HTTP errors, the status;
    carmulti records it as the failing agent's ``error``.

    Attributes:
        model: Model name or GGUF path.
        endpoint: Base URL (OpenAI-compatible) or ``"llama.cpp (in-process)"``.
        status: HTTP status code, or None.
    """

    def __init__(self, message: str, *, model: str = "", endpoint: str = "", status: int | None = None) -> None:
        super().__init__(message)
        self.model = model
        self.endpoint = endpoint
        self.status = status

    def __reduce__(self) -> Any:  # picklable across worker processes, keyword fields included
        return (_rebuild_error, (str(self), self.model, self.endpoint, self.status))


def _rebuild_error(message: str, model: str, endpoint: str, status: int | None) -> LLMRunnerError:
    return LLMRunnerError(message, model=model, endpoint=endpoint, status=status)


def offered_tools(spec: AgentSpec, runtime: Any) -> dict[str, dict[str, Any]]:
    """The tools a model may call: ``spec.tools`` that are registered on ``runtime``.

    Returns:
        Name → JSON Schema of the parameters object, in ``spec.tools`` order; an
        open schema (registered with ``None``) becomes ``{"type": "object"}``.
    """
    if not spec.tools or runtime is None:
        return {}
    registered: Mapping[str, Any] = getattr(runtime, "tools", None) or {}
    out: dict[str, dict[str, Any]] = {}
    for name in spec.tools:
        if name in registered and name not in out:
            schema = registered[name]
            out[name] = dict(schema) if schema else {"type": "object"}
    return out


def budget_exhausted(budget: Any, own: TokenAccounting | None = None) -> bool:
    """True when the shared budget is spent, counting this agent's not-yet-recorded spend.

    The coordination budget only learns an agent's tokens when the agent ends,
    so a runner deciding whether to make another model call adds its own spend
    so far (``own``) to the shared totals before comparing with the limits
    (crossed when ``total >= limit``, as the budget does).

    Args:
        budget: ``runtime.budget`` (a :class:`~carmulti.CoordinationBudget`) or None.
        own: This agent's spend so far.
    """
    if budget is None:
        return False
    try:
        if budget.exhausted:
            return True
        limits = budget.limits
    except Exception:  # a closed or foreign budget object: never block the agent on it
        return False
    if own is None or (own.total_tokens == 0 and own.cost_usd == 0) or limits.is_unbounded:
        return False
    snap = budget.snapshot()
    i = snap.input_tokens + own.input_tokens
    o = snap.output_tokens + own.output_tokens
    c = snap.cost_usd + own.cost_usd

    def crossed(v: float, lim: float | None) -> bool:
        return lim is not None and v >= lim

    return (crossed(i, limits.max_input_tokens) or crossed(o, limits.max_output_tokens)
            or crossed(i + o, limits.max_total_tokens) or crossed(c, limits.max_cost_usd))


def cost_usd(input_tokens: int, output_tokens: int, price_per_1k: tuple[float, float]) -> float:
    """Cost in USD of a call: ``price_per_1k`` is (input, output) USD per 1000 tokens."""
    pin, pout = price_per_1k
    return input_tokens / 1000.0 * pin + output_tokens / 1000.0 * pout


def check_price(price_per_1k: Any) -> tuple[float, float]:
    """Validate ``price_per_1k`` ((input, output) USD per 1000 tokens, both finite numbers >= 0).

    Raises:
        TypeError: not a pair.
        ValueError: an element is not a finite number >= 0 (a bool or a str never is).
    """
    try:
        pin, pout = price_per_1k
    except (TypeError, ValueError):
        raise TypeError(f"price_per_1k must be a pair (input_usd, output_usd) per 1000 tokens, got {price_per_1k!r}") from None
    return (float(number_at_least(pin, 0, "price_per_1k[0]", unit="input USD per 1000 tokens")),
            float(number_at_least(pout, 0, "price_per_1k[1]", unit="output USD per 1000 tokens")))


def tool_result_text(result: ActionResult) -> str:
    """What the model sees for one executed tool call: the output (JSON unless a str) or ``error: ...``."""
    if result.succeeded:
        out = result.output
        if isinstance(out, str):
            return out
        try:
            return json.dumps(out, ensure_ascii=False, default=str)
        except (TypeError, ValueError):
            return repr(out)
    return f"error: {result.error or result.status.value}"


def install_tools(spec: AgentSpec, runtime: Any, schemas: Mapping[str, Any] | None, executor: Any) -> None:
    """Give the agent's runtime the runner's own tools (see the runners' ``tools``/``tool_executor`` args).

    For each tool of ``spec.tools`` with a schema in ``schemas``, registers it with
    that schema; with an ``executor`` and no ``schemas`` (an executor for any tool
    name), registers every ``spec.tools`` name with an open schema. Installs
    ``executor`` unless the runtime already has one (a pattern such as
    :class:`~carmulti.Delegator` installs its own).
    """
    if runtime is None:
        return
    if schemas:
        for name in spec.tools:
            if name in schemas:
                runtime.register_tool(name, schemas[name])
    elif executor is not None:
        for name in spec.tools:
            runtime.register_tool(name)  # keeps a schema registered earlier
    if executor is not None and getattr(runtime, "_executor", None) is None:
        runtime.set_executor(executor)


def available_tools(runtime: Any, schemas: Mapping[str, Any] | None, executor: Any) -> list[str] | None:
    """The tool names a runner can offer an agent, before :func:`install_tools`; None = any name.

    A tool is available when something describes or runs it: the runner's
    ``tools`` (``schemas``) list it, or the runtime has it registered with a
    schema (a pattern's tool such as ``delegate``, or the caller's), or the
    runtime has it registered and already has a tool executor (installed by
    the pattern or the caller, which runs it). A runner ``executor`` without
    ``schemas`` runs any name (returns None).
    """
    if executor is not None and not schemas:
        return None
    names = list(schemas or ())
    registered: Mapping[str, Any] = (getattr(runtime, "tools", None) or {}) if runtime is not None else {}
    has_executor = runtime is not None and getattr(runtime, "_executor", None) is not None
    names += [n for n, schema in registered.items() if (schema is not None or has_executor) and n not in names]
    return names


def agent_tools(spec: AgentSpec, runtime: Any, schemas: Mapping[str, Any] | None, executor: Any,
                who: str) -> dict[str, dict[str, Any]]:
    """Check the agent's ``spec.tools``, install the runner's tools, and return the tools to offer the model.

    Call it once per agent before the first model call (both LLM runners do).

    Args:
        spec: The agent.
        runtime: Its :class:`~carmulti.Runtime` (or None).
        schemas: The runner's ``tools`` (name -> JSON Schema), or None.
        executor: The runner's ``tool_executor``, or None.
        who: The runner's class name, for the message.

    Returns:
        Name -> JSON Schema of the parameters, as :func:`offered_tools`.

    Raises:
        ToolError: ``spec.tools`` names a tool nothing can describe or run (see
            :func:`available_tools`); the message names it, lists the tools the
            runner can offer, and says how to fix it. No model call is made.
    """
    if spec.tools:
        available = available_tools(runtime, schemas, executor)
        if available is not None:
            unknown = [n for n in dict.fromkeys(spec.tools) if n not in available]
            if unknown:
                listed = ", ".join(repr(n) for n in unknown)
                example = ", ".join(f"{n!r}: <JSON Schema or None>" for n in unknown)
                raise ToolError(
                    f"agent {spec.name!r}: AgentSpec.tools lists {listed}, which {who} cannot offer (no schema in "
                    f"the runner's tools= or on the runtime, and no tool executor for it); the tools it can offer "
                    f"are: {', '.join(available) or 'none'}. Fix the name in AgentSpec.tools, or pass the runner "
                    f"tools={{{example}}} and a tool_executor that runs it")
    install_tools(spec, runtime, schemas, executor)
    return offered_tools(spec, runtime)


def check_tool_args(tools: Any, tool_executor: Any, who: str) -> dict[str, dict[str, Any]] | None:
    """Validate a runner's ``tools`` (name -> JSON Schema or None) and ``tool_executor`` arguments."""
    if tool_executor is not None and not callable(getattr(tool_executor, "execute", None)):
        raise TypeError(f"{who}: tool_executor must have an async execute(tool, params) method, got {type(tool_executor).__name__}")
    if tools is None:
        return None
    if not isinstance(tools, Mapping):
        raise TypeError(f"{who}: tools must be a mapping name -> JSON Schema (or None), got {type(tools).__name__}")
    return {str(k): (dict(v) if v else {"type": "object"}) for k, v in tools.items()}


class RunnerSettings:
    """The settings both LLM runners take, validated and stored the same way.

    Attributes:
        max_tokens: Completion-token limit per model call.
        temperature: Sampling temperature.
        price_per_1k: ``(input, output)`` USD per 1000 tokens (see :func:`check_price`).
        tools: The runner's own tools, name -> JSON Schema (see :func:`check_tool_args`), or None.
        tool_executor: The runner's tool executor, or None.
    """

    max_tokens: int
    temperature: float
    price_per_1k: tuple[float, float]
    tools: dict[str, dict[str, Any]] | None
    tool_executor: ToolExecutor | None

    def _init_settings(self, who: str, max_tokens: int, temperature: float, price_per_1k: tuple[float, float],
                       tools: Any, tool_executor: Any) -> None:
        """Check ``tools`` and ``tool_executor`` and store the settings; ``who`` names the runner in errors.

        The runner has checked the others already, each where its own order of
        argument checks puts it (``max_tokens``, ``float(temperature)``,
        :func:`check_price`).

        Raises:
            TypeError: a bad ``tools`` or ``tool_executor`` (see :func:`check_tool_args`).
        """
        self.tools = check_tool_args(tools, tool_executor, who)
        self.tool_executor = tool_executor
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.price_per_1k = price_per_1k
