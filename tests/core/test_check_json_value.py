"""Unit tests for carcore.check_json_value (the state-value check of StateStore.set)."""

from __future__ import annotations

import ast
import dataclasses
import datetime
import enum
import pathlib
import uuid

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

import carcore
from carcore import StateStore, check_json_value


class Color(enum.Enum):
    RED = "red"


@dataclasses.dataclass
class Point:
    x: int


GOOD = [
    "x", "", 0, -(2**63), 2**64 - 1, 1.5, -0.0, True, False, None,
    [], {}, [1, "2", None], (1, 2), {"a": {"b": [1.5, None]}},
    [float("nan"), float("inf")],  # non-finite inside a container: null, as StateStore.set
    Color.RED, uuid.UUID(int=1), {"e": Color.RED},
]

BAD = [
    object(), {1: "int key"}, b"bytes", {"a": {1, 2}}, float("nan"), float("inf"),
    float("-inf"), 2**64, -(2**63) - 1, [2**70], datetime.datetime.now(),
    datetime.date(2020, 1, 1), {"t": datetime.time(1)}, Point(1), [Point(1)], {"x": object()},
]


def _store_error(key, value) -> str:
    with pytest.raises(TypeError) as info:
        StateStore().set(key, value)
    return str(info.value)


def test_exported_from_carcore_and_typed():
    assert carcore.check_json_value is carcore.state.check_json_value
    assert "check_json_value" in carcore.__all__
    stub = pathlib.Path(carcore.__file__).parent / "state.pyi"
    defs = {n.name for n in ast.parse(stub.read_text()).body if isinstance(n, ast.FunctionDef)}
    assert "check_json_value" in defs
    assert check_json_value.__doc__


@pytest.mark.parametrize("value", GOOD, ids=repr)
def test_returns_the_orjson_encoding_of_what_the_store_keeps(value):
    b = check_json_value(value, "k")
    assert type(b) is bytes
    assert b == orjson.dumps(value)
    s = StateStore()
    s.set("k", value)
    assert orjson.loads(b) == s.get("k")


@pytest.mark.parametrize("value", BAD, ids=repr)
def test_refuses_what_the_store_refuses_with_the_same_message(value):
    with pytest.raises(TypeError) as info:
        check_json_value(value, "k")
    msg = str(info.value)
    assert msg.startswith("state value for key 'k' is not JSON-serializable: ")
    assert msg == _store_error("k", value)


def test_messages_name_the_key_and_the_reason():
    with pytest.raises(TypeError, match=r"^state value for key 'a\\nb' is not JSON-serializable: "
                                        r"non-finite float nan has no JSON representation$"):
        check_json_value(float("nan"), "a\nb")
    with pytest.raises(TypeError, match=r"^state value for key 'k' is not JSON-serializable: "
                                        r"integer 18446744073709551616 exceeds the 64-bit range$"):
        check_json_value(2**64, "k")
    with pytest.raises(TypeError, match=r"^state value for key 'k' is not JSON-serializable: "
                                        r"Type is not JSON serializable: datetime.datetime$"):
        check_json_value(datetime.datetime(2020, 1, 1), "k")
    with pytest.raises(TypeError, match=r"^state value for key 'k' is not JSON-serializable: "
                                        r"Dict key must be str$"):
        check_json_value({1: 2}, "k")


@pytest.mark.parametrize("key", [1, None, b"k", ("a",), 1.5])
def test_key_must_be_str_as_for_the_store(key):
    with pytest.raises(TypeError) as info:
        check_json_value(1, key)
    assert str(info.value).startswith(f"state key must be str, got {type(key).__name__}")
    assert str(info.value) == _store_error(key, 1)


def test_str_subclass_key_is_named_as_a_str():
    class S(str):
        def __repr__(self) -> str:
            return "S(...)"

    with pytest.raises(TypeError, match=r"^state value for key 'k' is not JSON-serializable"):
        check_json_value(float("inf"), S("k"))
    assert check_json_value(1, S("k")) == b"1"


def test_lone_surrogate_str_is_refused_although_the_store_keeps_it():
    # StateStore.set keeps a top-level str as is (never encoded), so it accepts one orjson
    # cannot encode; check_json_value must return the encoding, so it refuses it.
    StateStore().set("k", "\ud800")
    with pytest.raises(TypeError, match=r"^state value for key 'k' is not JSON-serializable: "
                                        r"str is not valid UTF-8"):
        check_json_value("\ud800", "k")
    with pytest.raises(TypeError) as info:  # inside a container both refuse it alike
        check_json_value(["\ud800"], "k")
    assert str(info.value) == _store_error("k", ["\ud800"])


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(st.characters(exclude_categories=["Cs"])),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=12,
)


@given(_json)
def test_round_trip_equals_the_store(value):
    s = StateStore()
    s.set("k", value)
    b = check_json_value(value, "k")
    assert b == orjson.dumps(value)
    assert orjson.loads(b) == s.get("k")
