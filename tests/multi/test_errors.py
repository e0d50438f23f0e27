"""MultiError and friends: the Rust display texts (spec table 2.5) and the class tree."""

from __future__ import annotations

import pickle

import pytest

from carcore import CarError
from carmulti import (
    AdvisorExhausted,
    AgentFailed,
    BudgetError,
    BudgetExhausted,
    MailboxFull,
    MailboxSend,
    MailboxTimeout,
    MaxRoundsExceeded,
    MultiError,
    NoOutput,
    PoolAtCapacity,
    ToolError,
    UnknownSpecialist,
)


@pytest.mark.parametrize(
    ("err", "text"),
    [
        (AgentFailed("lead", "boom"), "agent 'lead' failed: boom"),
        (AdvisorExhausted(3, 3), "advisor exhausted: used 3 of 3 allowed consultations"),
        (MailboxSend("no agent 'x'"), "mailbox send error: no agent 'x'"),
        (MailboxTimeout("bob"), "mailbox recv timeout for agent 'bob'"),
        (UnknownSpecialist("ghost"), "unknown specialist: 'ghost'"),
        (NoOutput(), "no agents produced output"),
        (MaxRoundsExceeded(5), "max rounds exceeded: 5"),
        (BudgetExhausted("over"), "coordination budget exhausted: over"),
        (BudgetError("exhausted", reason="total tokens 200 >= limit 150"),
         "budget exhausted: total tokens 200 >= limit 150"),
        (BudgetError("agent_limit", started=2, max_agents=2), "agent limit reached: 2/2"),
        (BudgetError("turn_ceiling", max_turns=50), "turn ceiling 50 reached"),
        (PoolAtCapacity(4, 4), "agent pool at capacity (4/4)"),
        (ToolError("tool said no"), "tool said no"),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, Exception) else "",
)
def test_display_text(err, text):
    assert str(err) == text
    assert isinstance(err, MultiError)
    assert isinstance(err, CarError) and isinstance(err, Exception)


def test_attributes():
    e = AgentFailed("n", "m")
    assert (e.name, e.msg) == ("n", "m")
    assert MaxRoundsExceeded(2).n == 2
    assert (AdvisorExhausted(1, 2).used, AdvisorExhausted(1, 2).max_uses) == (1, 2)
    assert (PoolAtCapacity(1, 3).running, PoolAtCapacity(1, 3).max_concurrent) == (1, 3)
    assert UnknownSpecialist("s").name == "s"


def test_mailbox_full_is_a_mailbox_send():
    e = MailboxFull("bob", 8, 0.5)
    assert isinstance(e, MailboxSend)
    assert str(e).startswith("mailbox send error: ")
    assert "bob" in str(e) and "8" in str(e)


def test_partial_defaults_to_none_and_with_partial_returns_self():
    e = AgentFailed("a", "b")
    assert e.partial is None
    assert e.with_partial({"rounds": 1}) is e
    assert e.partial == {"rounds": 1}


def test_catchable_as_multi_error():
    with pytest.raises(MultiError):
        raise BudgetExhausted("x")


def test_budget_error_rejects_unknown_kind():
    with pytest.raises(ValueError):
        BudgetError("weird")


PICKLE_CASES = [
    AgentFailed("a", "b"), MailboxSend("m"), MailboxFull("b", 1, 0.5), MailboxTimeout("x"), UnknownSpecialist("s"),
    NoOutput(), MaxRoundsExceeded(1), BudgetExhausted("x"), AdvisorExhausted(1, 2),
    BudgetError("agent_limit", started=1, max_agents=1), BudgetError("exhausted", reason="r"),
    BudgetError("turn_ceiling", max_turns=3),
    PoolAtCapacity(1, 2), ToolError("t"),
]


@pytest.mark.parametrize("err", PICKLE_CASES, ids=[f"{type(e).__name__}-{i}" for i, e in enumerate(PICKLE_CASES)])
def test_errors_pickle_round_trip_keeps_text_and_fields(err):
    """Errors must survive pickling (they cross process boundaries on the process executor)."""
    err.with_partial({"done": 1})
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is type(err)
    assert str(back) == str(err)
    assert back.partial == {"done": 1}
    for attr in ("name", "msg", "agent", "n", "used", "max_uses", "kind", "started", "max_agents", "running",
                 "max_concurrent", "to", "capacity"):
        if hasattr(err, attr):
            assert getattr(back, attr) == getattr(err, attr), attr
