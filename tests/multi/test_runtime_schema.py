"""``Runtime.register_tool(schema, validate=False)``: a schema that is advertised, not enforced."""

from __future__ import annotations

from carmulti import Action, ActionProposal, ActionStatus, PolicyEngine, Runtime
from carcore import EventLog, StateStore

SCHEMA = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}


class Echo:
    async def execute(self, tool, params):
        return params


async def test_enforced_schema_rejects_before_execution():
    rt = Runtime(StateStore(), EventLog(), PolicyEngine(), agent="a")
    rt.register_tool("t", SCHEMA)
    rt.set_executor(Echo())
    res = await rt.execute(ActionProposal("p", "a", [Action.tool_call("x", "t", {"n": "one"})]))
    assert res.results[0].status is ActionStatus.REJECTED
    assert res.results[0].error == "tool 't' parameters rejected: $.n: expected integer, got str"
    assert rt.tool_calls == 0


async def test_advertised_only_schema_lets_the_executor_judge():
    rt = Runtime(StateStore(), EventLog(), PolicyEngine(), agent="a")
    rt.register_tool("t", SCHEMA, validate=False)
    rt.set_executor(Echo())
    res = await rt.execute(ActionProposal("p", "a", [Action.tool_call("x", "t", {"n": "one"})]))
    assert res.all_succeeded and res.results[0].output == {"n": "one"}
    assert rt.tools["t"] == SCHEMA  # still offered to models
    rt.register_tool("t", SCHEMA)  # re-registering with validation turns checking back on
    res = await rt.execute(ActionProposal("p2", "a", [Action.tool_call("y", "t", {})]))
    assert res.results[0].status is ActionStatus.REJECTED
