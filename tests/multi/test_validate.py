"""carmulti._validate: one rule for argument checks, and the constructors that use it."""

from __future__ import annotations

import math
import re

import pytest

from carmulti import (
    Action,
    AgentPool,
    AgentSpec,
    BudgetLimits,
    Mailbox,
    MapReduce,
    MessageRouter,
    SharedInfra,
    Supervisor,
)
from carmulti._validate import int_at_least, number_at_least, seconds
from carmulti.testing import ScriptedRunner

NAN, INF = float("nan"), float("inf")


# -- int_at_least -----------------------------------------------------------------

@pytest.mark.parametrize("value", [0, 1, 7, 2**70])
def test_int_at_least_returns_the_value(value):
    assert int_at_least(value, 0, "X n") is value


@pytest.mark.parametrize("value", [True, False, 1.0, 2.5, "3", None, NAN, INF, [1]])
def test_int_at_least_refuses_non_ints_and_bools(value):
    with pytest.raises(ValueError, match=re.escape(f"X n must be an int >= 0, got {value!r}")):
        int_at_least(value, 0, "X n")


def test_int_at_least_bound_and_none():
    assert int_at_least(2, 2, "X n") == 2
    with pytest.raises(ValueError, match=r"^X n must be an int >= 2, got 1$"):
        int_at_least(1, 2, "X n")
    assert int_at_least(None, 2, "X n", allow_none=True) is None
    with pytest.raises(ValueError, match=r"^X n must be an int >= 2 or None, got True$"):
        int_at_least(True, 2, "X n", allow_none=True)
    with pytest.raises(ValueError, match=r"^X n must be an int >= 2, got None$"):
        int_at_least(None, 2, "X n")


# -- number_at_least --------------------------------------------------------------

@pytest.mark.parametrize("value", [0, 0.0, 1, 0.5, 1e300, 2**70])
def test_number_at_least_returns_the_value(value):
    assert number_at_least(value, 0, "X c") is value


@pytest.mark.parametrize("value", [True, False, NAN, INF, -INF, -0.1, -1, "1", None, 1j])
def test_number_at_least_refuses_bools_non_finite_and_below(value):
    with pytest.raises(ValueError, match=re.escape(f"X c must be a finite number >= 0 (dollars), got {value!r}")):
        number_at_least(value, 0, "X c", unit="dollars")


def test_number_at_least_none_and_unit():
    assert number_at_least(None, 0, "X c", allow_none=True) is None
    with pytest.raises(ValueError, match=r"^X c must be a finite number >= 1 or None, got 0\.5$"):
        number_at_least(0.5, 1, "X c", allow_none=True)


# -- seconds ----------------------------------------------------------------------

@pytest.mark.parametrize("value", [1, 0.001, 2.5, 10**9])
def test_seconds_returns_the_value_unchanged(value):
    got = seconds(value, "X t")
    assert got is value  # an int stays an int: messages such as "timeout after 5s" keep their form


@pytest.mark.parametrize("value", [0, 0.0, -1, True, False, NAN, INF, -INF, "1", None])
def test_seconds_refuses_bools_non_finite_and_non_positive(value):
    with pytest.raises(ValueError, match=re.escape(f"X t must be a finite number of seconds > 0, got {value!r}")):
        seconds(value, "X t")


def test_seconds_none():
    assert seconds(None, "X t", allow_none=True) is None
    with pytest.raises(ValueError, match=r"^X t must be a finite number of seconds > 0 or None, got nan$"):
        seconds(math.nan, "X t", allow_none=True)


# -- the constructors: a bool is refused everywhere, the message names the argument -------------

CASES = [
    (lambda v: Mailbox(v), "Mailbox buffer_size must be an int >= 1"),
    (lambda v: MessageRouter(v), "MessageRouter inbox_capacity must be an int >= 1"),
    (lambda v: AgentPool(ScriptedRunner([]), v), "AgentPool max_concurrent must be an int >= 1"),
    (lambda v: MapReduce(AgentSpec("m"), AgentSpec("r"), v), "MapReduce max_concurrent must be an int >= 1"),
    (lambda v: MapReduce(AgentSpec("m"), AgentSpec("r"), reduce_fan_in=v),
     "MapReduce reduce_fan_in must be an int >= 2 or None"),
    (lambda v: Supervisor([AgentSpec("w")], AgentSpec("s"), v), "Supervisor max_rounds must be an int >= 1"),
    (lambda v: AgentSpec("a", max_turns=v), "AgentSpec('a').max_turns must be an int >= 0"),
    (lambda v: BudgetLimits(max_agents=v), "BudgetLimits.max_agents must be an int >= 0 or None"),
    (lambda v: BudgetLimits(max_total_tokens=v), "BudgetLimits.max_total_tokens must be an int >= 0 or None"),
    (lambda v: BudgetLimits(max_cost_usd=v),
     "BudgetLimits.max_cost_usd must be a finite number >= 0 (dollars) or None"),
    (lambda v: SharedInfra(agent_timeout_s=v), "SharedInfra agent_timeout_s must be a finite number of seconds > 0 or None"),
    (lambda v: Action("x", max_retries=v), "Action('x').max_retries must be an int >= 0"),
    (lambda v: Action("x", timeout_ms=v), "Action('x').timeout_ms must be an int >= 1 or None"),
]


@pytest.mark.parametrize("make,message", CASES, ids=[c[1].split(" must")[0] for c in CASES])
@pytest.mark.parametrize("bad", [True, NAN, INF, "2"])
def test_constructors_refuse_bools_and_non_finite_values(make, message, bad):
    with pytest.raises(ValueError, match=re.escape(f"{message}, got {bad!r}")):
        make(bad)


def test_budget_cost_and_infra_timeout_refuse_infinity():
    """Both used to take inf (only NaN was refused)."""
    with pytest.raises(ValueError, match="max_cost_usd"):
        BudgetLimits(max_cost_usd=INF)
    with pytest.raises(ValueError, match="agent_timeout_s"):
        SharedInfra(agent_timeout_s=INF)
