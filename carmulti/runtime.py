"""The agent-side engine: tools, action proposals, policies, retries and state actions.

A runner turns model output into an :class:`ActionProposal` and hands it to
:meth:`Runtime.execute`. The runtime validates each action (tool registered,
parameters against the tool's schema, preconditions, policies), executes it
(tool executor with timeout, retries and an idempotency cache; or a state
read/write on the agent's state view), and records every step in the event
log. This ports car-engine's ``Runtime`` as car-multi uses it.

Execution order: actions start in list order and results come back in list
order. Independent tool calls of one proposal run side by side (car-engine runs
a proposal's independent actions concurrently): a *group* is a run of
consecutive ``tool_call`` actions in which every action after the first has no
``preconditions`` and no ``state_dependencies`` (it depends on nothing an earlier
action of the group could change), no action but the last uses
``FailureBehavior.ABORT`` (an abort can only skip what comes after it, and
nothing of the group does), and no idempotent call repeats an earlier one of
the group (the repeat is served from the cache, as before). The group's actions
are validated in order, then run concurrently; each keeps its own retries,
timeout and failure behaviour. Everything else (state actions, assertions,
tool calls that abort, the default) runs one after another as before.
On a failed action with ``FailureBehavior.ABORT`` the remaining actions are
skipped and this proposal's state writes are undone, newest first. Only its own
writes: a key that another agent has written since (its current value is no
longer the one this proposal wrote) is left alone; on an isolated overlay, a
key the proposal created is reverted (no tombstone that would delete the
parent's key at merge).

The action types themselves (:class:`Action`, :class:`ActionProposal`,
:class:`ActionResult`, ...) live in :mod:`carmulti.actions`; they are
re-exported here, so ``from carmulti.runtime import Action`` keeps working.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from types import MappingProxyType
from typing import Any, Mapping, Protocol, runtime_checkable

import orjson

from . import actions as _actions
from . import tracing as _tracing
from ._aio import cancel_and_wait
from .actions import (  # "X as X": an explicit re-export, which type checkers see (they do not follow ``__all__ +=``)
    _OPERATORS,
    Action as Action,
    ActionProposal as ActionProposal,
    ActionResult as ActionResult,
    ActionStatus as ActionStatus,
    ActionType as ActionType,
    FailureBehavior as FailureBehavior,
    Precondition as Precondition,
    ProposalResult as ProposalResult,
)
from .errors import ToolError
from .policy import PolicyEngine

__all__ = ["Runtime", "ToolExecutor"]
__all__ += _actions.__all__  # the action types, re-exported for ``from carmulti.runtime import Action``

#: First retry waits this long (car-engine: base delay 100 ms) ...
RETRY_BASE_DELAY_S = 0.1
#: ... and each further retry waits this factor longer (car-engine: 2).
RETRY_BACKOFF = 2.0
#: Retries used by ``FailureBehavior.RETRY`` when the action says ``max_retries=0``.
DEFAULT_RETRY_COUNT = 3


@runtime_checkable
class ToolExecutor(Protocol):
    """Executes tool calls for a runtime. Raise (e.g. :class:`ToolError`) to fail the call."""

    async def execute(self, tool: str, params: dict[str, Any]) -> Any: ...


_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "object": (dict,),
    "array": (list, tuple),
    "null": (type(None),),
}


def _validate(value: Any, schema: Mapping[str, Any], path: str) -> str | None:
    """Check ``value`` against a JSON-Schema subset: type, required, properties, enum, items.

    Returns the first problem as ``"{path}: {what}"`` or None.
    """
    typ = schema.get("type")
    if typ is not None:
        types = typ if isinstance(typ, list) else [typ]
        ok = False
        for t in types:
            py = _JSON_TYPES.get(t)
            if py is None:
                continue
            if isinstance(value, py) and not (t in ("integer", "number") and isinstance(value, bool)):
                ok = True
                break
        if not ok:
            return f"{path}: expected {' or '.join(types)}, got {type(value).__name__}"
    if "enum" in schema and value not in schema["enum"]:
        return f"{path}: {value!r} is not one of {schema['enum']!r}"
    if isinstance(value, dict):
        for req in schema.get("required", ()):
            if req not in value:
                return f"{path}: missing required property {req!r}"
        for k, sub in (schema.get("properties") or {}).items():
            if k in value:
                err = _validate(value[k], sub, f"{path}.{k}")
                if err:
                    return err
    if isinstance(value, (list, tuple)) and isinstance(schema.get("items"), Mapping):
        for i, item in enumerate(value):
            err = _validate(item, schema["items"], f"{path}[{i}]")
            if err:
                return err
    return None


def _idempotency_key(action: Action) -> str:
    blob = orjson.dumps({"tool": action.tool, "params": action.parameters}, option=orjson.OPT_SORT_KEYS)
    return hashlib.blake2b(blob, digest_size=16).hexdigest()


_NO_TOOLS: Mapping[str, dict[str, Any] | None] = MappingProxyType({})


class Runtime:
    """Executes an agent's action proposals against shared infrastructure.

    Each agent gets its own runtime (own tool set, executor and idempotency
    cache) over the coordination's shared state view, event log and policies.
    Create one with :meth:`SharedInfra.make_runtime` or
    :meth:`SharedInfra.make_isolated_runtime` rather than directly.

    Args:
        state: The agent's state view: a ``carcore.StateStore`` (shared) or a
            ``carcore.Overlay`` (isolated). Anything with ``get/set/delete/exists``.
        log: Event sink with ``append(kind, data, *, agent, action_id, proposal_id)``
            (a ``carcore.EventLog``), or ``None`` to record nothing.
        policies: Checked before every action.
        agent: The agent's name, stamped on events.
        budget: The coordination budget, exposed to runners as ``runtime.budget``
            so they can stop starting model calls once it is exhausted.

    Attributes:
        tool_calls: Tool-call actions executed (attempted) so far.
        tools_used: Tools executed, in first-use order.
    """

    __slots__ = ("state", "log", "policies", "agent", "budget", "_tools", "_unchecked", "_executor", "_cache",
                 "tool_calls", "_tools_used", "retry_base_delay_s")

    def __init__(self, state: Any, log: Any = None, policies: PolicyEngine | None = None, *,
                 agent: str | None = None, budget: Any = None) -> None:
        self.state = state
        self.log = log
        self.policies = policies if policies is not None else PolicyEngine()
        self.agent = agent
        self.budget = budget
        # A dict from the first registered tool on (most agents of a big fan-out have none: 64 bytes each).
        self._tools: Mapping[str, dict[str, Any] | None] = _NO_TOOLS
        # Created on first use: most agents of a big fan-out never register an unchecked tool nor cache a
        # result, and an empty set costs 216 bytes (a million agents in flight: 200 MiB).
        self._unchecked: set[str] | None = None
        self._executor: ToolExecutor | None = None
        self._cache: dict[str, Any] | None = None
        self.tool_calls = 0
        self._tools_used: list[str] | None = None  # created on first use, as _unchecked (56 bytes an agent)
        self.retry_base_delay_s = RETRY_BASE_DELAY_S

    @property
    def tools_used(self) -> list[str]:
        """Tools executed, in first-use order (the list itself: stays the same object)."""
        used = self._tools_used
        if used is None:
            used = self._tools_used = []
        return used

    @tools_used.setter
    def tools_used(self, value: list[str]) -> None:
        self._tools_used = value

    def _used_tools(self) -> list[str]:
        """A copy of :attr:`tools_used` (for the agent's output), without creating the list when none ran."""
        used = self._tools_used
        return [] if used is None else list(used)

    # -- tools -----------------------------------------------------------------
    def register_tool(self, name: str, schema: Mapping[str, Any] | None = None, *, validate: bool = True) -> None:
        """Admit tool calls for ``name``; with a JSON schema, their parameters are validated.

        Args:
            name: Tool name.
            schema: JSON Schema of the parameters object (subset checked: ``type``,
                ``required``, ``properties``, ``enum``, ``items``), also offered to
                models by LLM runners. ``None`` = open schema.
            validate: Check parameters against ``schema`` before execution. With
                ``False`` the schema is only advertised and the tool's executor
                reports bad parameters itself (the delegator's ``delegate`` does,
                with the Rust error texts).

        Raises:
            TypeError: ``name`` is not a non-empty str or ``schema`` not a mapping.
        """
        if not isinstance(name, str) or not name:
            raise TypeError(f"tool name must be a non-empty str, got {name!r}")
        if schema is not None and not isinstance(schema, Mapping):
            raise TypeError(f"schema of tool {name!r} must be a mapping (JSON Schema) or None, got {type(schema).__name__}")
        if schema is None and name in self._tools:
            return  # re-registering without a schema keeps a schema given earlier
        tools = self._tools
        if not isinstance(tools, dict):
            tools = self._tools = {}
        tools[name] = dict(schema) if schema is not None else None
        if validate:
            if self._unchecked is not None:
                self._unchecked.discard(name)
        elif self._unchecked is None:
            self._unchecked = {name}
        else:
            self._unchecked.add(name)

    def has_tool(self, name: str) -> bool:
        return name in self._tools

    @property
    def tools(self) -> dict[str, dict[str, Any] | None]:
        """Registered tools: name → parameter schema (``None`` = open)."""
        return dict(self._tools)

    def set_executor(self, executor: ToolExecutor) -> None:
        """Install the executor that runs this runtime's tool calls.

        Raises:
            TypeError: ``executor`` has no async ``execute(tool, params)`` method.
        """
        if not callable(getattr(executor, "execute", None)):
            raise TypeError(f"executor must have an async execute(tool, params) method, got {type(executor).__name__}")
        self._executor = executor

    @property
    def executor(self) -> ToolExecutor | None:
        return self._executor

    # -- execution -------------------------------------------------------------
    def _emit(self, kind: str, data: Any = None, *, action_id: str | None = None, proposal_id: str | None = None) -> None:
        if self.log is not None:
            self.log.append(kind, data, agent=self.agent, action_id=action_id, proposal_id=proposal_id)

    def _reject_reason(self, action: Action) -> str | None:
        t = action.action_type
        params = action.parameters
        if not isinstance(params, dict):
            return f"action {action.id!r}: parameters must be a dict, got {type(params).__name__}"
        if t is ActionType.TOOL_CALL:
            if not action.tool:
                return f"action {action.id!r}: tool_call without a tool name"
            if action.tool not in self._tools:
                known = ", ".join(sorted(self._tools)) or "none"
                return (f"tool '{action.tool}' is not registered on this runtime (registered: {known}); "
                        "list it in AgentSpec.tools or call runtime.register_tool()")
            schema = self._tools[action.tool]
            if schema is not None and (self._unchecked is None or action.tool not in self._unchecked):
                err = _validate(params, schema, "$")
                if err:
                    return f"tool '{action.tool}' parameters rejected: {err}"
        elif t in (ActionType.STATE_WRITE, ActionType.STATE_READ, ActionType.ASSERTION):
            if not isinstance(params.get("key"), str):
                return f"action {action.id!r} ({t.value}) requires parameter 'key' (str)"
            if t is ActionType.STATE_WRITE and "value" not in params:
                return f"action {action.id!r} (state_write) requires parameter 'value'"
            if t is ActionType.ASSERTION and params.get("operator", "eq") not in _OPERATORS:
                return f"action {action.id!r} (assertion): operator must be one of {', '.join(_OPERATORS)}"
        for pre in action.preconditions:
            if not pre.holds(self.state):
                return f"precondition failed: {pre.describe()}"
        violations = self.policies.check(action, self.state) if len(self.policies) else ()
        if violations:
            for v in violations:
                self._emit("policy_violation", v.to_dict(), action_id=action.id)
            return "policy violation: " + "; ".join(f"{v.policy_name}: {v.reason}" for v in violations)
        return None

    async def _attempt(self, action: Action, undo: list[tuple[str, bool, Any, bool, Any]], proposal_id: str) -> Any:
        t = action.action_type
        params = action.parameters
        if t is ActionType.TOOL_CALL:
            if self._executor is None:
                raise ToolError(f"no tool executor installed for tool '{action.tool}'; the runner must call runtime.set_executor()")
            if _tracing.ENABLED:  # an ``execute_tool`` span around this execution, when something records it
                span = _tracing.tool_span(action.tool, action.id)  # type: ignore[arg-type]
                if span is not None:
                    return await span.run(self._call_tool(self._executor, action))
            return await self._call_tool(self._executor, action)
        key = params["key"]
        if t is ActionType.STATE_READ:
            return self.state.get(key)
        if t is ActionType.STATE_WRITE:
            state = self.state
            existed = state.exists(key)
            old = state.get(key) if existed else None
            is_local = getattr(state, "is_local", None)
            was_local = True if is_local is None else is_local(key)  # overlays: a local change before ours?
            state.set(key, params["value"], self.agent or action.id)
            undo.append((key, existed, old, was_local, state.get(key)))
            self._emit("state_changed", {"key": key}, action_id=action.id, proposal_id=proposal_id)
            return None
        # assertion
        pre = Precondition(key, params.get("operator", "eq"), params.get("value"))
        if not pre.holds(self.state):
            raise ToolError(f"assertion failed: {pre.describe()} (actual {self.state.get(key)!r})")
        return True

    @staticmethod
    async def _call_tool(executor: ToolExecutor, action: Action) -> Any:
        coro = executor.execute(action.tool, action.parameters)  # type: ignore[arg-type]
        if action.timeout_ms is not None:
            try:
                return await asyncio.wait_for(coro, action.timeout_ms / 1000.0)
            except asyncio.TimeoutError:
                raise ToolError(f"tool '{action.tool}' timed out after {action.timeout_ms}ms") from None
        return await coro

    async def execute(self, proposal: ActionProposal) -> ProposalResult:
        """Validate and execute every action of ``proposal``: in order, independent tool calls side by side.

        See the module docstring for which tool calls run concurrently. Never
        raises for a failing action: failures are in the result
        (``ActionResult.error``). ``asyncio.CancelledError`` propagates (the
        actions still running are cancelled first).

        Returns:
            One :class:`ActionResult` per action, in proposal order.
        """
        pid = proposal.id
        actions = proposal.actions
        self._emit("proposal_received", {"source": proposal.source, "actions": len(actions)}, proposal_id=pid)
        results: list[ActionResult] = []
        undo: list[tuple[str, bool, Any, bool, Any]] = []
        aborted_by: str | None = None
        i, n = 0, len(actions)
        while i < n:
            action = actions[i]
            if aborted_by is not None:
                results.append(ActionResult(action.id, ActionStatus.SKIPPED,
                                            error=f"skipped: action '{aborted_by}' failed and aborted the proposal"))
                self._emit("action_skipped", None, action_id=action.id, proposal_id=pid)
                i += 1
                continue
            end = self._group_end(actions, i)
            if end - i > 1:
                aborted_by = await self._run_group(actions[i:end], results, undo, pid)
                i = end
                continue
            i += 1
            reason = self._reject_reason(action)
            if reason is not None:
                results.append(ActionResult(action.id, ActionStatus.REJECTED, error=reason))
                self._emit("action_rejected", {"reason": reason}, action_id=action.id, proposal_id=pid)
                if action.failure_behavior is FailureBehavior.ABORT:
                    aborted_by = action.id
                continue
            res = await self._run_action(action, undo, pid)
            results.append(res)
            if res.status is not ActionStatus.SUCCEEDED and action.failure_behavior is FailureBehavior.ABORT:
                aborted_by = action.id
        if aborted_by is not None and undo:
            self._rollback(undo, pid)
        self._emit("proposal_completed", {"succeeded": sum(r.status is ActionStatus.SUCCEEDED for r in results),
                                          "actions": len(results)}, proposal_id=pid)
        return ProposalResult(pid, results)

    @staticmethod
    def _group_end(actions: list[Action], start: int) -> int:
        """End (exclusive) of the group of independent tool calls starting at ``start`` (see the module docstring)."""
        first = actions[start]
        if first.action_type is not ActionType.TOOL_CALL or first.failure_behavior is FailureBehavior.ABORT:
            return start + 1
        keys: set[str] = set()
        if first.idempotent and isinstance(first.parameters, dict):
            keys.add(_idempotency_key(first))
        end = start + 1
        n = len(actions)
        while end < n:
            a = actions[end]
            if a.action_type is not ActionType.TOOL_CALL or a.preconditions or a.state_dependencies:
                break
            if a.idempotent and isinstance(a.parameters, dict):
                key = _idempotency_key(a)
                if key in keys:
                    break
                keys.add(key)
            end += 1
            if a.failure_behavior is FailureBehavior.ABORT:
                break  # it may close the group, never open the way past itself
        return end

    async def _run_group(self, group: list[Action], results: list[ActionResult],
                         undo: list[tuple[str, bool, Any, bool, Any]], pid: str) -> str | None:
        """Validate ``group`` in order, run the admitted actions concurrently; append results in order.

        Returns:
            The id of the action that aborts the proposal (only the group's last
            action may), or None.
        """
        slots: list[ActionResult | int] = []
        runnable: list[Action] = []
        aborted_by: str | None = None
        for action in group:
            reason = self._reject_reason(action)
            if reason is not None:
                slots.append(ActionResult(action.id, ActionStatus.REJECTED, error=reason))
                self._emit("action_rejected", {"reason": reason}, action_id=action.id, proposal_id=pid)
                if action.failure_behavior is FailureBehavior.ABORT:
                    aborted_by = action.id
                continue
            slots.append(len(runnable))
            runnable.append(action)
        done: list[ActionResult] = []
        if len(runnable) == 1:
            done = [await self._run_action(runnable[0], undo, pid)]
        elif runnable:
            tasks = [asyncio.ensure_future(self._run_action(a, undo, pid)) for a in runnable]
            try:
                done = list(await asyncio.gather(*tasks))
            except BaseException:
                await cancel_and_wait(tasks)
                raise
        for action, slot in zip(group, slots):
            res = slot if isinstance(slot, ActionResult) else done[slot]
            results.append(res)
            if res.status is not ActionStatus.SUCCEEDED and action.failure_behavior is FailureBehavior.ABORT:
                aborted_by = action.id
        return aborted_by

    def _rollback(self, undo: list[tuple[str, bool, Any, bool, Any]], pid: str) -> None:
        state = self.state
        restored: list[str] = []
        kept: list[str] = []
        for key, existed, old, was_local, written in reversed(undo):
            if not state.exists(key) or state.get(key) != written:
                kept.append(key)  # written by someone else since: theirs stands
                continue
            if not was_local:
                state.revert(key, "rollback")  # overlay: drop our local change, parent shows through
            elif existed:
                state.set(key, old, "rollback")
            else:
                state.delete(key, "rollback")
            restored.append(key)
        self._emit("state_rollback", {"keys": restored, "kept": kept}, proposal_id=pid)

    async def _run_action(self, action: Action, undo: list[tuple[str, bool, Any, bool, Any]], pid: str) -> ActionResult:
        is_tool = action.action_type is ActionType.TOOL_CALL
        cache_key = None
        if is_tool and action.idempotent:
            cache_key = _idempotency_key(action)
            if self._cache is not None and cache_key in self._cache:
                self._emit("action_deduplicated", None, action_id=action.id, proposal_id=pid)
                return ActionResult(action.id, ActionStatus.SUCCEEDED, output=self._cache[cache_key])
        retries = action.max_retries
        if action.failure_behavior is FailureBehavior.RETRY and retries == 0:
            retries = DEFAULT_RETRY_COUNT
        if is_tool:
            self.tool_calls += 1
            if action.tool not in self.tools_used:
                self.tools_used.append(action.tool)  # type: ignore[arg-type]
        t0 = time.perf_counter()
        attempt = 0
        delay = self.retry_base_delay_s
        while True:
            attempt += 1
            self._emit("action_executing", {"attempt": attempt, "tool": action.tool}, action_id=action.id, proposal_id=pid)
            try:
                output = await self._attempt(action, undo, pid)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - tool failures are values
                err = str(exc) if isinstance(exc, ToolError) else f"{type(exc).__name__}: {exc}"
                if attempt <= retries:
                    self._emit("action_retrying", {"attempt": attempt, "error": err, "delay_s": delay},
                               action_id=action.id, proposal_id=pid)
                    await asyncio.sleep(delay)
                    delay *= RETRY_BACKOFF
                    continue
                self._emit("action_failed", {"error": err, "attempts": attempt}, action_id=action.id, proposal_id=pid)
                return ActionResult(action.id, ActionStatus.FAILED, error=err, attempts=attempt,
                                    duration_ms=(time.perf_counter() - t0) * 1000.0)
            if cache_key is not None:
                if self._cache is None:
                    self._cache = {}
                self._cache[cache_key] = output
            self._emit("action_succeeded", {"attempts": attempt}, action_id=action.id, proposal_id=pid)
            return ActionResult(action.id, ActionStatus.SUCCEEDED, output=output, attempts=attempt,
                                duration_ms=(time.perf_counter() - t0) * 1000.0)
