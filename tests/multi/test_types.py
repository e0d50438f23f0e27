"""Core value types: AgentSpec, AgentOutput, TokenAccounting, Message, truncate."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timezone

import orjson
import pytest

from carmulti import AgentOutput, AgentSpec, Message, TokenAccounting, truncate

RUST_OUTPUT_FIELDS = {"name", "answer", "turns", "tool_calls", "duration_ms", "error", "outcome", "tokens",
                      "tools_used"}


def test_agent_spec_defaults():
    s = AgentSpec("a")
    assert (s.name, s.system_prompt, s.tools, s.max_turns, s.metadata, s.cache_control) == ("a", "", [], 10, {}, False)


def test_agent_spec_is_frozen():
    s = AgentSpec("a", "p")
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.name = "b"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.max_turns = 3  # type: ignore[misc]


def test_agent_spec_builders_return_copies():
    s = AgentSpec("a", "p", metadata={"k": 1})
    t = s.with_tools(["x", "y"])
    assert t.tools == ["x", "y"] and s.tools == [] and t is not s
    assert t.name == "a" and t.system_prompt == "p"
    m = s.with_max_turns(3)
    assert m.max_turns == 3 and s.max_turns == 10
    md = s.with_metadata("k", 2).with_metadata("new", "v")
    assert md.metadata == {"k": 2, "new": "v"}
    assert s.metadata == {"k": 1}  # original untouched
    tools = ["z"]
    u = s.with_tools(tools)
    tools.append("w")
    assert u.tools == ["z"]  # the copy does not alias the caller's list


def test_agent_spec_validation():
    with pytest.raises(ValueError):
        AgentSpec("")
    with pytest.raises(TypeError):
        AgentSpec("a", tools="echo")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        AgentSpec("a", max_turns=-1)


def test_agent_spec_dict_round_trip():
    s = AgentSpec("a", "p", ["t"], 4, {"m": [1]}, True)
    d = s.to_dict()
    assert set(d) == {"name", "system_prompt", "tools", "max_turns", "metadata", "cache_control"}
    assert AgentSpec.from_dict(orjson.loads(orjson.dumps(d))) == s
    assert AgentSpec.from_dict({"name": "only"}) == AgentSpec("only")


def test_agent_output_defaults_and_succeeded():
    o = AgentOutput("a")
    assert (o.answer, o.turns, o.tool_calls, o.duration_ms, o.error, o.outcome, o.tokens, o.tools_used) == (
        "", 0, 0, 0.0, None, None, None, [])
    assert o.succeeded
    assert not AgentOutput("a", error="x").succeeded
    assert not AgentOutput("a", answer="has answer", error="").succeeded  # error set (even empty) = failed


def test_agent_output_orjson_round_trip_with_rust_field_names():
    o = AgentOutput("a", "ans", turns=2, tool_calls=3, duration_ms=12.5, error=None, outcome={"k": [1, "x"]},
                    tokens=TokenAccounting(10, 20, 0.125), tools_used=["echo", "fetch"])
    d = o.to_dict()
    assert set(d) == RUST_OUTPUT_FIELDS
    assert d["tokens"] == {"input_tokens": 10, "output_tokens": 20, "cost_usd": 0.125}
    back = AgentOutput.from_dict(orjson.loads(orjson.dumps(d)))
    assert back == o
    assert AgentOutput.from_json(o.to_json()) == o


def test_agent_output_from_rust_binding_json():
    """The FFI shape: name, answer, turns, tool_calls, duration_ms, optional error."""
    raw = b'{"name":"a","answer":"x","turns":1,"tool_calls":0,"duration_ms":5.0}'
    o = AgentOutput.from_json(raw)
    assert o == AgentOutput("a", "x", turns=1, duration_ms=5.0)
    failed = AgentOutput.from_json(b'{"name":"b","answer":"","turns":0,"tool_calls":0,"duration_ms":0.0,"error":"e"}')
    assert failed.error == "e" and not failed.succeeded
    with pytest.raises(KeyError):
        AgentOutput.from_dict({"answer": "no name"})


def test_token_accounting():
    t = TokenAccounting(100, 23, 0.5)
    assert t.total_tokens == 123
    assert TokenAccounting().total_tokens == 0 and TokenAccounting().cost_usd == 0.0
    assert TokenAccounting.from_dict(t.to_dict()) == t


def test_message_defaults_and_round_trip():
    before = datetime.now(timezone.utc)
    m = Message("a", "b", "hello")
    assert m.kind == "text"
    assert m.timestamp.tzinfo is not None and before <= m.timestamp <= datetime.now(timezone.utc)
    assert Message.from_dict(orjson.loads(orjson.dumps(m.to_dict()))) == m


@pytest.mark.parametrize(
    ("s", "n", "out"),
    [("héllo", 2, "h"), ("héllo", 3, "hé"), ("abc", 3, "abc"), ("abc", 0, ""), ("€€", 5, "€"), ("", 4, ""),
     ("😀x", 3, ""), ("😀x", 4, "😀")],
)
def test_truncate_examples(s, n, out):
    assert truncate(s, n) == out


def test_bulk_copies_without_tools_or_metadata_share_read_only_empties() -> None:
    import pickle

    from carmulti.types import _NO_METADATA, _NO_TOOLS

    clones = [AgentSpec("m").with_name(f"m_{i}") for i in range(3)] + [AgentSpec.from_dict({"name": "w"})]
    for c in clones:
        assert c.tools is _NO_TOOLS and c.metadata is _NO_METADATA  # no list and dict of their own
        assert c.tools == [] and c.metadata == {} and isinstance(c.metadata, dict)
        with pytest.raises(TypeError, match=r"with_metadata\(key, value\)"):
            c.metadata["k"] = 1
        with pytest.raises(TypeError, match=r"with_tools"):
            c.tools.append("t")
    assert _NO_TOOLS == [] and _NO_METADATA == {}  # nothing got in
    back = pickle.loads(pickle.dumps(clones[0]))  # shipped to a worker: plain containers again
    assert type(back.tools) is list and type(back.metadata) is dict and back == clones[0]
    own = AgentSpec("m", tools=["t"], metadata={"k": 1}).with_name("m_0")
    assert type(own.tools) is list and type(own.metadata) is dict and own.metadata == {"k": 1}
    assert clones[0].with_metadata("k", 1).metadata == {"k": 1} and clones[0].with_tools(["t"]).tools == ["t"]
    decoded = AgentSpec.from_dict({"name": "w", "tools": ["t"], "metadata": {"k": 1}})
    decoded.tools.append("u")  # a decoded spec with tools has a list of its own
    assert decoded.tools == ["t", "u"] and _NO_TOOLS == []


def test_with_name_copies_every_field() -> None:
    import dataclasses

    spec = AgentSpec("m", system_prompt="sp", tools=["t"], max_turns=3, metadata={"k": [1]}, cache_control=True)
    copy = spec.with_name("m_1")
    assert copy == dataclasses.replace(spec, name="m_1")  # a field added to AgentSpec must be copied too
    assert copy.tools is not spec.tools and copy.metadata is not spec.metadata
    with pytest.raises(dataclasses.FrozenInstanceError):
        copy.name = "x"  # type: ignore[misc]


@pytest.mark.parametrize("d", [{"name": "w"}, {"name": "w", "max_turns": 10}, {"name": "w", "tools": [], "metadata": {}}])
def test_from_dict_of_a_name_is_the_default_spec(d: dict) -> None:
    assert AgentSpec.from_dict(d) == AgentSpec("w")  # the name-only fast path and the full path agree


@pytest.mark.parametrize("d", [{"name": ""}, {"name": 3}, {"name": None}])
def test_from_dict_of_a_bad_name_raises_as_the_constructor(d: dict) -> None:
    with pytest.raises(ValueError, match="AgentSpec.name must be a non-empty str"):
        AgentSpec.from_dict(d)
    with pytest.raises(KeyError):
        AgentSpec.from_dict({"nam": "w"})
