"""OpenAIChatRunner without a network: the official SDK over an httpx MockTransport with scripted replies."""

from __future__ import annotations

import json
from typing import Any

import dill
import pytest

from carmulti import AgentSpec, BudgetLimits, SharedInfra, Swarm, SwarmMode, TokenAccounting, ToolError, is_budget_skipped

import openai  # noqa: E402 - the llm extra (README's test command installs it)
import openai._base_client as _sdk_base  # noqa: E402

from carmulti.runners import LLMRunnerError, OpenAIChatRunner  # noqa: E402

#: The httpx flavour this SDK version is built on (openai 1.x/2.x: httpx; 3.x: httpx2).
httpx = getattr(_sdk_base, "httpx2", None) or _sdk_base.httpx

BASE_URL = "http://mock.test/v1"
ADD_SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a", "b"]}


def completion(content: str | None = "", *, tool_calls: list[tuple[str, str, Any]] | None = None, prompt: int = 10,
               completion_tokens: int = 5) -> dict[str, Any]:
    msg: dict[str, Any] = {"role": "assistant", "content": content}
    if tool_calls:
        msg["tool_calls"] = [{"id": cid, "type": "function",
                              "function": {"name": name, "arguments": args if isinstance(args, str) else json.dumps(args)}}
                             for cid, name, args in tool_calls]
    return {"id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": "mock-model",
            "choices": [{"index": 0, "finish_reason": "tool_calls" if tool_calls else "stop", "message": msg}],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion_tokens, "total_tokens": prompt + completion_tokens}}


class Server:
    """Scripted chat-completions endpoint: each request takes the next reply (dict = 200 JSON,
    int = that HTTP status, exception = raised by the transport). Records request bodies."""

    def __init__(self, *replies: Any) -> None:
        self.replies = list(replies)
        self.requests: list[dict[str, Any]] = []

    def handler(self, request: Any) -> Any:
        assert request.url.path.endswith("/chat/completions"), request.url
        self.requests.append(json.loads(request.content))
        if not self.replies:
            raise AssertionError("unexpected extra model call")
        r = self.replies.pop(0)
        if isinstance(r, BaseException):
            raise r
        if isinstance(r, int):
            return httpx.Response(r, json={"error": {"message": f"scripted status {r}", "type": "server_error"}},
                                  headers={"retry-after-ms": "10"})
        return httpx.Response(200, json=r)

    def client(self, max_retries: int = 0) -> Any:
        return openai.AsyncOpenAI(base_url=BASE_URL, api_key="sk-test", max_retries=max_retries,
                                  http_client=httpx.AsyncClient(transport=httpx.MockTransport(self.handler)))


class AddTools:
    def __init__(self, fail: bool = False) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.fail = fail

    async def execute(self, tool: str, params: dict[str, Any]) -> Any:
        self.calls.append((tool, params))
        if self.fail:
            raise ToolError("adder is broken")
        return params["a"] + params["b"]


@pytest.fixture
async def infra():
    async with SharedInfra() as inf:
        yield inf


async def run_one(runner: OpenAIChatRunner, spec: AgentSpec, task: str, infra: SharedInfra, *, tools: dict | None = None,
                  executor: Any = None):
    rt = infra.make_runtime()
    for name, schema in (tools or {}).items():
        rt.register_tool(name, schema)
    if executor is not None:
        rt.set_executor(executor)
    try:
        return await runner.run(spec, task, rt, None)
    finally:
        if runner._client is not None:
            await runner._client.close()


async def test_plain_answer_tokens_and_cost(infra):
    srv = Server(completion("12", prompt=1000, completion_tokens=500))
    runner = OpenAIChatRunner(srv.client(), model="mock-model", price_per_1k=(0.5, 1.5), temperature=0.2, max_tokens=64)
    out = await run_one(runner, AgentSpec("a", "You add."), "7+5?", infra)
    assert out.succeeded and out.answer == "12" and out.turns == 1 and out.tool_calls == 0
    assert (out.tokens.input_tokens, out.tokens.output_tokens) == (1000, 500)
    assert out.tokens.cost_usd == pytest.approx(0.5 + 0.75)
    assert out.duration_ms > 0
    body = srv.requests[0]
    assert body["model"] == "mock-model" and body["temperature"] == 0.2 and body["max_tokens"] == 64
    assert body["messages"] == [{"role": "system", "content": "You add."}, {"role": "user", "content": "7+5?"}]
    assert "tools" not in body and "tool_choice" not in body


async def test_tool_call_round_trip(infra):
    srv = Server(completion(None, tool_calls=[("call_1", "add", {"a": 7, "b": 5})], prompt=20, completion_tokens=7),
                 completion("The answer is 12.", prompt=40, completion_tokens=6))
    tools = AddTools()
    runner = OpenAIChatRunner(srv.client(), model="m", price_per_1k=(1.0, 2.0))
    spec = AgentSpec("calc", "Use tools.", tools=["add", "clock"], max_turns=5)
    out = await run_one(runner, spec, "7+5?", infra, tools={"add": ADD_SCHEMA, "clock": None, "unlisted": None}, executor=tools)
    assert out.succeeded, out.error
    assert out.answer == "The answer is 12."
    assert tools.calls == [("add", {"a": 7, "b": 5})]
    assert (out.turns, out.tool_calls, out.tools_used) == (2, 1, ["add"])
    assert (out.tokens.input_tokens, out.tokens.output_tokens) == (60, 13)
    assert out.tokens.cost_usd == pytest.approx(60 / 1000 * 1.0 + 13 / 1000 * 2.0)
    first, second = srv.requests
    offered = {t["function"]["name"]: t["function"]["parameters"] for t in first["tools"]}
    assert offered == {"add": ADD_SCHEMA, "clock": {"type": "object"}}  # only spec.tools; open schema -> object
    assert first["tool_choice"] == "auto"
    assistant, tool_msg = second["messages"][2], second["messages"][3]
    assert assistant["role"] == "assistant" and assistant["content"] == ""
    assert assistant["tool_calls"][0]["id"] == "call_1" and assistant["tool_calls"][0]["function"]["name"] == "add"
    assert tool_msg == {"role": "tool", "tool_call_id": "call_1", "content": "12"}
    # the call went through the Runtime (event log)
    kinds = [e.kind for e in infra.log.events()]
    assert "proposal_received" in kinds and "action_executing" in kinds


async def test_tool_errors_go_back_to_the_model(infra):
    srv = Server(completion("", tool_calls=[("c1", "add", {"a": 1, "b": 2}), ("c2", "add", "{not json"),
                                           ("c3", "add", {"a": "x", "b": 2}), ("c4", "nope", {})]),
                 completion("gave up"))
    tools = AddTools(fail=True)
    runner = OpenAIChatRunner(srv.client(), model="m")
    out = await run_one(runner, AgentSpec("calc", tools=["add"]), "t", infra, tools={"add": ADD_SCHEMA}, executor=tools)
    assert out.succeeded and out.answer == "gave up" and out.tool_calls == 4
    replies = {m["tool_call_id"]: m["content"] for m in srv.requests[1]["messages"] if m["role"] == "tool"}
    assert replies["c1"] == "error: adder is broken"
    assert replies["c2"].startswith("error: arguments are not valid JSON")
    assert "parameters rejected" in replies["c3"]
    assert "not registered" in replies["c4"]
    assert tools.calls == [("add", {"a": 1, "b": 2})]  # c3 rejected by the schema, c4 by registration


async def test_last_turn_forces_an_answer_and_max_turns(infra):
    srv = Server(completion("", tool_calls=[("c1", "add", {"a": 1, "b": 2})]),
                 completion("", tool_calls=[("c2", "add", {"a": 3, "b": 3})]))
    tools = AddTools()
    runner = OpenAIChatRunner(srv.client(), model="m", tool_choice="required")
    out = await run_one(runner, AgentSpec("calc", tools=["add"], max_turns=2), "t", infra,
                        tools={"add": ADD_SCHEMA}, executor=tools)
    assert [r["tool_choice"] for r in srv.requests] == ["required", "none"]
    assert out.error == "max turns (2) reached without a final answer"
    assert out.turns == 2 and out.tool_calls == 1 and tools.calls == [("add", {"a": 1, "b": 2})]


async def test_http_500_is_a_clear_error(infra):
    srv = Server(500)
    runner = OpenAIChatRunner(srv.client(max_retries=0), model="mock-model")
    with pytest.raises(LLMRunnerError) as ei:
        await run_one(runner, AgentSpec("a"), "t", infra)
    msg = str(ei.value)
    assert "'mock-model'" in msg and BASE_URL in msg and "HTTP 500" in msg and "scripted status 500" in msg
    assert ei.value.status == 500


async def test_http_error_fails_only_that_agent_in_a_pattern():
    srv = Server(401)
    client = srv.client()
    runner = OpenAIChatRunner(client, model="mock-model")
    try:
        async with SharedInfra() as infra:
            res = await Swarm([AgentSpec("a")]).run("t", runner, infra)
    finally:
        await client.close()
    (out,) = res.outputs
    assert not out.succeeded and "HTTP 401" in out.error and "mock-model" in out.error


async def test_sdk_retries_429_and_5xx(infra):
    srv = Server(429, 503, completion("ok"))
    runner = OpenAIChatRunner(srv.client(max_retries=2), model="m")
    out = await run_one(runner, AgentSpec("a"), "t", infra)
    assert out.answer == "ok" and len(srv.requests) == 3


async def test_timeout_is_a_clear_error(infra):
    srv = Server(httpx.ReadTimeout("slow"))
    runner = OpenAIChatRunner(srv.client(), model="m", request_timeout_s=5)
    with pytest.raises(LLMRunnerError, match=r"model 'm' at http://mock\.test/v1.*timed out"):
        await run_one(runner, AgentSpec("a"), "t", infra)


async def test_budget_exhausted_by_own_spend_stops_the_second_turn():
    srv = Server(completion("", tool_calls=[("c1", "add", {"a": 1, "b": 2})], prompt=90, completion_tokens=20))
    tools = AddTools()
    client = srv.client()
    runner = OpenAIChatRunner(client, model="m", tools={"add": ADD_SCHEMA}, tool_executor=tools)
    try:
        async with SharedInfra(budget=BudgetLimits(max_total_tokens=100)) as infra:
            res = await Swarm([AgentSpec("a", tools=["add"]), AgentSpec("b")], mode=SwarmMode.SEQUENTIAL).run("t", runner, infra)
            snap = infra.budget.snapshot()
    finally:
        await client.close()
    a, b = res.outputs
    assert a.error == "budget exhausted before turn 2"
    assert a.turns == 1 and a.tool_calls == 1 and tools.calls == [("add", {"a": 1, "b": 2})]
    assert a.tokens.total_tokens == 110 and snap.total_tokens == 110
    assert len(srv.requests) == 1  # no second model call, and b never started
    assert is_budget_skipped(b)


async def test_budget_exhausted_returns_the_text_it_has():
    srv = Server(completion("partial: 3", tool_calls=[("c1", "add", {"a": 1, "b": 2})], prompt=50, completion_tokens=10))
    client = srv.client()
    runner = OpenAIChatRunner(client, model="m", tools={"add": ADD_SCHEMA}, tool_executor=AddTools())
    try:
        async with SharedInfra(budget=BudgetLimits(max_total_tokens=1000)) as infra:
            infra.budget.record(TokenAccounting(990, 0, 0.0))  # other agents' spend
            rt = infra.make_runtime()
            out = await runner.run(AgentSpec("a", tools=["add"]), "t", rt, None)
    finally:
        await client.close()
    assert out.succeeded and out.answer == "partial: 3" and out.turns == 1 and len(srv.requests) == 1


async def test_metadata_overrides(infra):
    srv = Server(completion("x"))
    runner = OpenAIChatRunner(srv.client(), model="default-model")
    spec = AgentSpec("a", metadata={"model": "other", "temperature": 0.7, "max_tokens": 9})
    await run_one(runner, spec, "t", infra)
    assert {k: srv.requests[0][k] for k in ("model", "temperature", "max_tokens")} == {"model": "other", "temperature": 0.7, "max_tokens": 9}


async def test_picklable_and_client_created_lazily_per_loop():
    runner = OpenAIChatRunner(model="m", base_url="http://127.0.0.1:9/v1", api_key="sk-local", price_per_1k=(0.1, 0.2))
    assert runner._clients == {}
    clone = dill.loads(dill.dumps(runner))
    assert (clone.model, clone.base_url, clone.price_per_1k) == ("m", "http://127.0.0.1:9/v1", (0.1, 0.2))
    c1 = runner._get_client()
    assert runner._get_client() is c1 and str(c1.base_url).startswith("http://127.0.0.1:9/v1")
    assert dill.loads(dill.dumps(runner))._clients == {}  # clients never travel
    async with runner:
        pass
    assert runner._clients == {}
    with pytest.raises(TypeError, match="cannot be shipped"):
        dill.dumps(OpenAIChatRunner(openai.AsyncOpenAI(api_key="x", base_url=BASE_URL), model="m"))


def test_argument_validation():
    with pytest.raises(ValueError):
        OpenAIChatRunner(model="")
    with pytest.raises(ValueError):
        OpenAIChatRunner(model="m", price_per_1k=(-1.0, 0.0))
    with pytest.raises(TypeError):
        OpenAIChatRunner(model="m", price_per_1k=1.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        OpenAIChatRunner(model="m", tool_executor=object())


async def test_error_after_a_turn_keeps_the_spend_metered(infra):
    srv = Server(completion("", tool_calls=[("c1", "add", {"a": 1, "b": 2})], prompt=30, completion_tokens=4), 502)
    runner = OpenAIChatRunner(srv.client(), model="m", tools={"add": ADD_SCHEMA}, tool_executor=AddTools())
    out = await run_one(runner, AgentSpec("a", tools=["add"]), "t", infra)
    assert "HTTP 502" in out.error and out.turns == 1 and out.tokens.total_tokens == 34


async def test_a_tool_the_runner_cannot_offer_fails_the_agent_before_any_model_call():
    srv = Server(completion("fine"))  # one reply: for agent 'ok'
    tools = AddTools()
    client = srv.client()
    runner = OpenAIChatRunner(client, model="m", tools={"add": ADD_SCHEMA}, tool_executor=tools)
    try:
        async with SharedInfra() as infra:
            res = await Swarm([AgentSpec("calc", "Use the add tool.", tools=["ad"]),
                               AgentSpec("ok", tools=["add"])]).run("t", runner, infra)
    finally:
        await client.close()
    calc, ok = res.outputs
    assert ok.succeeded and ok.answer == "fine"
    assert calc.error == (
        "agent 'calc': AgentSpec.tools lists 'ad', which OpenAIChatRunner cannot offer (no schema in the runner's "
        "tools= or on the runtime, and no tool executor for it); the tools it can offer are: add. Fix the name in "
        "AgentSpec.tools, or pass the runner tools={'ad': <JSON Schema or None>} and a tool_executor that runs it")
    assert len(srv.requests) == 1 and not tools.calls  # only agent 'ok' reached the model


async def test_tools_the_runtime_or_an_open_executor_provides_are_offered(infra):
    # the runtime already has an executor (a pattern's or the caller's): its registered tools are offered
    srv = Server(completion("a"))
    out = await run_one(OpenAIChatRunner(srv.client(), model="m"), AgentSpec("a", tools=["clock"]), "t", infra,
                        tools={"clock": None}, executor=AddTools())
    assert out.succeeded and [t["function"]["name"] for t in srv.requests[0]["tools"]] == ["clock"]
    # a runner with a tool_executor and no tools= mapping runs any tool the spec names (open schemas)
    srv = Server(completion("b"))
    out = await run_one(OpenAIChatRunner(srv.client(), model="m", tool_executor=AddTools()),
                        AgentSpec("b", tools=["anything"]), "t", infra)
    assert out.succeeded and srv.requests[0]["tools"][0]["function"]["parameters"] == {"type": "object"}
    # no tool executor anywhere and no schema: nothing could run the tool
    srv = Server()
    with pytest.raises(ToolError, match=r"lists 'search', 'ad', which OpenAIChatRunner cannot offer .* "
                                        r"the tools it can offer are: none\."):
        await run_one(OpenAIChatRunner(srv.client(), model="m"), AgentSpec("c", tools=["search", "ad"]), "t", infra)
    assert srv.requests == []
